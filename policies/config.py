"""Settings of routing: when a round happens and how many samples it may send symbolic (the `saturation`
section), and which policy decides (the `policy` section).

The routing budget p keeps its config key `saturation.p`: renaming it would break every config users have, and
"p of the misclassified samples once training saturates" is how the paper states it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nslora.core.options import option, require


@dataclass
class SaturationConfig:
    k: float = option(0.02, "Saturated when the median |C1| of the misclassified samples over the last `window` epochs is below k.")
    window: int = option(1, "Epochs the saturation rule looks back over.")
    p: float = option(0.1, "Share of misclassified samples (least progress first) that become candidates for the symbolic branch.")
    min_epoch: int = option(2, "First epoch at which routing may happen (C1 needs one earlier epoch).")

    def __post_init__(self):
        require(0.0 < self.p <= 1.0, f"saturation.p={self.p!r} must be in (0, 1]")
        require(self.window >= 1, f"saturation.window={self.window!r} must be >= 1")
        require(self.k >= 0, f"saturation.k={self.k!r} must be >= 0")
        require(self.min_epoch >= 2, f"saturation.min_epoch={self.min_epoch!r} must be >= 2 (C1 needs a previous epoch)")


@dataclass
class PolicyConfig:
    name: str = option("loss-ratio", "lora-only, textgrad-only, loss-ratio (C1), grad-norm (C2), random, reward (a classifier trained by `nslora policy train`; policy.path), presentation (the planted-copy detector), surprise (the base model's most surprising question tokens), cartography, aum (training dynamics), oracle (the controlled benchmark's ground truth), or your own class as 'package.module:ClassName'.")
    path: str | None = option(None, "Folder of a trained policy (policy.name=reward), from `nslora policy train`.")
    params: dict[str, Any] = option({}, "Keyword arguments passed to the policy's __init__.")
