"""Policies that route by the training signals, each calibrated to send a share p of the candidates symbolic."""

from __future__ import annotations

import math

from policies.base import Decision, Policy, SampleView, budget_count, register


class _Ranked(Policy):
    """Rank candidates by a score (higher = more in need of a rewrite); the top p share goes symbolic."""

    signal = ""

    def __init__(self, p: float = 0.1):
        self.p = p

    def score(self, view: SampleView) -> float:
        raise NotImplementedError

    def calibrate(self, views):
        scores = sorted(((self.score(v), v.id) for v in views), key=lambda s: (-s[0], s[1]))
        k = budget_count(len(views), self.p)
        self.threshold_ = scores[k - 1][0] if k else math.inf
        self.chosen_ = {i for _, i in scores[:k]}
        return self

    def decide(self, view):
        s = self.score(view)
        if not hasattr(self, "chosen_"):
            raise RuntimeError(f"{type(self).__name__} is not calibrated; call calibrate(views) first")
        symbolic = view.id in self.chosen_
        margin = abs(s - self.threshold_) if math.isfinite(s) and math.isfinite(self.threshold_) else 0.0
        confidence = 0.5 + 0.5 * (1 - math.exp(-10 * margin))
        shown = f"{s:.4f}" if math.isfinite(s) else "n/a"
        thr = f"{self.threshold_:.4f}" if math.isfinite(self.threshold_) else "n/a"
        if symbolic:
            reason = f"{self.signal} score {shown} is within the top {self.p:.0%} (threshold {thr})"
        else:
            reason = f"{self.signal} score {shown} is below the top-{self.p:.0%} threshold {thr}"
        return Decision("symbolic" if symbolic else "numerical", float(confidence), reason, "signal")


@register
class LossRatioPolicy(_Ranked):
    """C1: the samples whose loss fell least (or rose) since the last epoch go symbolic."""

    name = "loss-ratio"
    signal = "C1 (loss-change ratio)"

    def score(self, view):
        return view.c1 if view.c1 is not None else -math.inf


@register
class GradNormPolicy(_Ranked):
    """C2: still-wrong samples with the smallest LoRA gradient norm — the weights barely move for them — go
    symbolic. `direction='high'` ranks the largest norms first instead."""

    name = "grad-norm"
    signal = "C2 (gradient norm)"

    def __init__(self, p: float = 0.1, direction: str = "low"):
        if direction not in ("low", "high"):
            raise ValueError(f"grad-norm direction={direction!r} must be 'low' or 'high'")
        self.p = p
        self.direction = direction

    def score(self, view):
        if view.c2 is None:
            return -math.inf
        return -view.c2 if self.direction == "low" else view.c2


@register
class CartographyPolicy(_Ranked):
    """Dataset cartography over the epochs so far: the hard-to-learn region (low confidence and low variability of
    the gold answer's probability), where Swayamdipta et al. (2020) found the label errors, goes symbolic first."""

    name = "cartography"
    signal = "cartography (1 - confidence - variability)"

    def score(self, view):
        c, v = view.dynamics.get("confidence"), view.dynamics.get("variability")
        return -math.inf if c is None else 1.0 - c - (v or 0.0)


@register
class AumPolicy(_Ranked):
    """Area under the margin (Pleiss et al. 2020): the samples whose gold answer the model keeps contradicting
    (the lowest mean margin over the epochs so far) go symbolic first."""

    name = "aum"
    signal = "AUM (mean gold-logit margin)"

    def score(self, view):
        a = view.dynamics.get("aum")
        return -math.inf if a is None else -a


@register
class SurprisePolicy(_Ranked):
    """The prompt as the frozen base model reads it (adapters.inputs): the questions whose most surprising tokens
    surprise it most — garbled words, markup, odd phrasing, words out of place — go symbolic first. Needs
    signals.inputs (on by default)."""

    name = "surprise"
    signal = "base-model surprisal of the question's 5 most surprising tokens"

    def score(self, view):
        q = view.inputs.get("q_top")
        return -math.inf if q is None else q
