"""Routing policies. `REGISTRY` maps names to classes; a user's class is named 'package.module:ClassName'."""

from policies import baselines, planted, reward, signal  # noqa: F401  (importing registers the built-ins; reward loads lazily)
from policies.base import REGISTRY, Decision, Policy, SampleView, build, check_policy, register, resolve

__all__ = ["REGISTRY", "Decision", "Policy", "SampleView", "build", "check_policy", "register", "resolve"]
