"""The policy contract: a small estimator-like class that decides, for one sample, numerical or symbolic.

`__init__` only stores settings. `calibrate(views)` sees every candidate of a routing round (so a policy can set
its threshold to a budget) and returns self; learned attributes end in `_`. `decide(view)` returns a Decision.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from nslora.core import plugins

Route = Literal["numerical", "symbolic"]


@dataclass(frozen=True)
class Decision:
    route: Route
    confidence: float
    reason: str
    path: str = "rule"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SampleView:
    """What a policy may look at for one training sample in one routing round (read-only, serialisable)."""

    id: str
    epoch: int
    loss: float
    c1: float | None
    c2: float | None
    correct: bool
    losses: tuple[float, ...] = ()
    system: str = ""
    question: str = ""
    rewrites: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Training dynamics over the epochs so far (adapters.signals.dynamics): confidence, variability, correct_share,
    # forgetting, aum, el2n; a value is None where no epoch recorded it.
    dynamics: dict[str, float | None] = field(default_factory=dict)
    # What the frozen base model makes of the current prompt (adapters.inputs, measured before training and for each
    # accepted rewrite): q_nll, q_top, a_loss, a_alone, ifd; empty when signals.inputs is off.
    inputs: dict[str, float | None] = field(default_factory=dict)


class Policy:
    """Base class. Subclasses set `name` and implement `decide`; override `calibrate` to learn thresholds.

    Class attributes declare what the policy does; the router reads them and never the policy's name:
    `routes_symbolic=False`: it never sends a sample symbolic (no rewriter engine is built for it);
    `trains_weights=False`: no LoRA step at all (the pure-symbolic baseline); `needs_saturation=False`: route
    every epoch, saturated or not; `optimizes_shared_system=True`: a symbolic round updates the one system prompt
    P shared by every sample (the strategy's `update_system`) instead of rewriting each sample;
    `needs_ground_truth=True`: a reference arm of the controlled benchmark (`oracle`) that is shown each
    candidate's planted fault in `view.extra["fault"]` — no other policy ever sees it. An optional `preflight()`
    method checks what the policy needs (a file, a folder) before the run starts, raising a one-line UserError.
    """

    name: ClassVar[str] = ""
    routes_symbolic: ClassVar[bool] = True
    trains_weights: ClassVar[bool] = True
    needs_saturation: ClassVar[bool] = True
    optimizes_shared_system: ClassVar[bool] = False
    needs_ground_truth: ClassVar[bool] = False

    def calibrate(self, views: list[SampleView]) -> "Policy":
        return self

    def decide(self, view: SampleView) -> Decision:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def budget_count(n: int, p: float) -> int:
    """The routing budget: how many of n candidates a share p routes symbolic (at least one when p > 0 and n > 0,
    never more than n). Every built-in policy and the dry-run estimate count with it."""
    if n <= 0 or p <= 0:
        return 0
    return min(n, max(1, round(n * p)))


REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.name] = cls
    return cls


def resolve(name: str) -> type[Policy]:
    """A registered name, or a user's class as 'package.module:ClassName'."""
    return plugins.resolve("policy.name", name, REGISTRY, "a class with a decide(view) method",
                           accept=lambda obj: isinstance(obj, type) and callable(getattr(obj, "decide", None)))


def build(name: str, params: dict[str, Any], p: float, seed: int) -> Policy:
    """Instantiate a policy; `p` and `seed` are passed when its __init__ takes them and params do not set them."""
    return plugins.instantiate("policy.params", resolve(name), params, p=p, seed=seed)


def check_policy(policy: Policy, views: list[SampleView] | None = None) -> None:
    """Conformance check every built-in and user policy can run (like scikit-learn's check_estimator).

    Raises AssertionError naming the broken rule.
    """
    views = views if views is not None else example_views()
    before = [asdict(v) for v in views]
    params = dict(vars(policy))
    for flag in ("routes_symbolic", "trains_weights", "needs_saturation", "optimizes_shared_system", "needs_ground_truth"):
        assert isinstance(getattr(policy, flag, None), bool), f"{type(policy).__name__}.{flag} must be a bool class attribute"
    assert not [k for k in params if k.endswith("_")], f"{type(policy).__name__}.__init__ must only store settings (found learned {[k for k in params if k.endswith('_')]})"
    assert policy.calibrate(views) is policy, "calibrate must return self"
    decisions = [policy.decide(v) for v in views]
    for v, d in zip(views, decisions):
        assert isinstance(d, Decision), f"decide must return a Decision, got {type(d).__name__}"
        assert d.route in ("numerical", "symbolic"), f"route must be 'numerical' or 'symbolic', got {d.route!r}"
        assert isinstance(d.confidence, float) and 0.0 <= d.confidence <= 1.0 and not math.isnan(d.confidence), f"confidence must be a float in [0, 1], got {d.confidence!r}"
        assert isinstance(d.reason, str) and d.reason.strip(), f"decision for {v.id} has no reason"
        assert isinstance(d.path, str) and d.path, "decision path must be a non-empty string"
    assert [asdict(v) for v in views] == before, "decide/calibrate must not modify the views"
    again = [policy.decide(v) for v in views]
    assert again == decisions, "decide must be deterministic once calibrated"


def example_views(n: int = 20) -> list[SampleView]:
    views = []
    for i in range(n):
        c1 = None if i == 0 else (-0.5 + i / n)
        # Dynamics as three epochs would give them; the first sample's are all missing, as an older run's would be.
        dyn = dict.fromkeys(("confidence", "variability", "correct_share", "forgetting", "aum", "el2n")) if i == 0 else {
            "confidence": (i * 3 % n) / n, "variability": 0.05 + (i % 4) / 10, "correct_share": (i % 4) / 3,
            "forgetting": float(i % 2), "aum": -1.0 + 2 * i / n, "el2n": 1.2 - i / n}
        inputs = {} if i == 1 else {"q_nll": 2.0 + (i * 5 % n) / n, "q_top": 6.0 + (i * 3 % n) / 4, "a_loss": 0.5 + i / n,
                                    "a_alone": 2.0, "ifd": (0.5 + i / n) / 2.0}  # the second sample was not measured
        views.append(SampleView(id=f"ex{i}", epoch=3, loss=1.0 + i / n, c1=c1, c2=0.1 + (i * 7 % n) / n, correct=False,
                                losses=(2.0, 1.0 + i / n), system="Answer briefly.", question=f"Question {i}?", dynamics=dyn,
                                inputs=inputs))
    return views
