"""Baseline arms: never rewrite, only rewrite, random routing at the same share p, and the controlled
benchmark's oracle."""

from __future__ import annotations

import hashlib

from policies.base import Decision, Policy, budget_count, register


@register
class LoraOnlyPolicy(Policy):
    """Plain LoRA: every sample stays numerical."""

    name = "lora-only"
    routes_symbolic = False

    def decide(self, view):
        return Decision("numerical", 1.0, "lora-only never rewrites", "rule")


@register
class TextGradOnlyPolicy(Policy):
    """Pure symbolic baseline: no LoRA step at all; the shared system prompt P is optimised with TextGrad on
    misclassified training samples every epoch, and the held-out set is answered with the optimised P."""

    name = "textgrad-only"
    trains_weights = False
    needs_saturation = False
    optimizes_shared_system = True

    def decide(self, view):
        return Decision("symbolic", 1.0, "textgrad-only optimises the shared system prompt", "rule")


@register
class RandomPolicy(Policy):
    """Ablation: a random share p of the candidates goes symbolic, reproducible from the seed."""

    name = "random"

    def __init__(self, p: float = 0.1, seed: int = 0, needs_saturation: bool = True):
        self.p = p
        self.seed = seed
        # False: route from the first epoch (the reference for a policy that does, e.g. reward-early).
        self.needs_saturation = needs_saturation

    def _key(self, view):
        return hashlib.sha256(f"{self.seed}|{view.epoch}|{view.id}".encode()).hexdigest()

    def calibrate(self, views):
        ranked = sorted(views, key=self._key)
        self.chosen_ = {v.id for v in ranked[: budget_count(len(views), self.p)]}
        return self

    def decide(self, view):
        if not hasattr(self, "chosen_"):
            raise RuntimeError("RandomPolicy is not calibrated; call calibrate(views) first")
        if view.id in self.chosen_:
            return Decision("symbolic", self.p, f"drawn at random (p={self.p})", "random")
        return Decision("numerical", 1 - self.p, f"not drawn at random (p={self.p})", "random")


@register
class OraclePolicy(Policy):
    """Reference arm of the controlled benchmark: routes exactly the faulty candidates, at most the share p of
    them like every policy (least progress, largest C1, first when there are more). The only policy shown the
    ground truth; it has none on other tasks, and then routes nothing."""

    name = "oracle"
    needs_ground_truth = True

    def __init__(self, p: float = 0.1, needs_saturation: bool = True):
        self.p = p
        # False: route from the first epoch, so a faulty sample is rewritten before LoRA has fitted its fault.
        self.needs_saturation = needs_saturation

    def calibrate(self, views):
        faulty = [v for v in views if v.extra.get("fault")]
        faulty.sort(key=lambda v: (-(v.c1 if v.c1 is not None else float("-inf")), v.id))
        self.chosen_ = {v.id for v in faulty[: budget_count(len(views), self.p)]}
        return self

    def decide(self, view):
        if not hasattr(self, "chosen_"):
            raise RuntimeError("OraclePolicy is not calibrated; call calibrate(views) first")
        fault = view.extra.get("fault")
        if view.id in self.chosen_:
            return Decision("symbolic", 1.0, f"planted fault: {fault}", "oracle")
        why = f"planted fault {fault}, over the budget p={self.p}" if fault else "no planted fault"
        return Decision("numerical", 1.0, why, "oracle")
