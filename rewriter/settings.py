"""Turn the run's rewriter settings (router.config.RewriterConfig: concurrency, cache, retries, circuit breaker,
budget, meaning guard) into a ready engine, budget and guard config.

    engine = prepare_engine(build_engine(cfg.rewriter), cfg.rewriter, cache_dir)    # reply cache in front
    budget = make_budget(cfg.rewriter)                                              # None when no limit is set
    ctx = RewriteContext(..., guard=guard_config(cfg.rewriter))
    results = rewrite_many(jobs, cfg.rewriter.strategy, concurrency=cfg.rewriter.concurrency, budget=budget)
"""

from __future__ import annotations

import os

from rewriter.budget import Budget
from rewriter.guard import GuardConfig


def guard_config(rt) -> GuardConfig:
    return GuardConfig(enabled=rt.guard, similarity=rt.guard_similarity, min_similarity=rt.guard_min_similarity,
                       min_length_ratio=rt.guard_min_length_ratio, max_length_ratio=rt.guard_max_length_ratio)


def make_budget(rt) -> Budget | None:
    """A Budget when any limit is set (None otherwise: nothing to enforce, costs are still in RewriteResults)."""
    if rt.max_calls is None and rt.max_total_tokens is None and rt.max_cost is None:
        return None
    return Budget(max_calls=rt.max_calls, max_tokens=rt.max_total_tokens, max_cost=rt.max_cost,
                  prices={k: tuple(v) for k, v in rt.prices.items()})


def prepare_engine(engine, rt, run_dir: str | os.PathLike | None = None):
    """The engine with the reply cache in front when `rt.cache` (a path is needed: cache_path or run_dir)."""
    if not rt.cache or engine is None:
        return engine
    path = rt.cache_path or (os.path.join(os.fspath(run_dir), "rewrite-cache.sqlite") if run_dir is not None else None)
    if path is None:
        return engine
    from rewriter.cache import CachedEngine

    return CachedEngine(engine, path)
