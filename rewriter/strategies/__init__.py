"""Rewrite strategies by config name: `STRATEGIES` maps built-in names to classes; your own class is named as
`package.module:ClassName` (the contract and its conformance check are in base.py)."""

from __future__ import annotations

from typing import Any

from nslora.core import plugins
from rewriter.strategies.base import RewriteContext, RewriteResult, Strategy, check_strategy
from rewriter.strategies.direct import DirectStrategy
from rewriter.strategies.rules import RulesStrategy
from rewriter.strategies.textgrad import TextGradStrategy, optimize_system_prompt

STRATEGIES: dict[str, type[Strategy]] = {
    "textgrad": TextGradStrategy,
    "direct": DirectStrategy,
    "rules": RulesStrategy,
}


def build_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """The strategy `rewriter.strategy` names, built with `rewriter.strategy_params`."""
    cls = plugins.resolve("rewriter.strategy", name, STRATEGIES, "a class with a rewrite(sample, ctx) method",
                          accept=lambda obj: isinstance(obj, type) and callable(getattr(obj, "rewrite", None)))
    return plugins.instantiate("rewriter.strategy_params", cls, params or {})


__all__ = ["STRATEGIES", "DirectStrategy", "RewriteContext", "RewriteResult", "RulesStrategy", "Strategy", "TextGradStrategy", "build_strategy", "check_strategy",
           "optimize_system_prompt"]
