"""Rewrite strategies: `rewrite(sample, ctx) -> RewriteResult`, registered by name."""

from __future__ import annotations

from rewriter.strategies import direct, rules, textgrad
from rewriter.strategies.base import RewriteContext, RewriteResult
from rewriter.strategies.textgrad import optimize_system_prompt

STRATEGIES = {
    "textgrad": textgrad.rewrite,
    "direct": direct.rewrite,
    "rules": rules.rewrite,
}

__all__ = ["STRATEGIES", "RewriteContext", "RewriteResult", "optimize_system_prompt"]
