"""One routing round's rewrites, run concurrently.

    results = rewrite_many([(sample, ctx), ...], TextGradStrategy(), concurrency=8, budget=budget, progress=bar)

One job is one sample's whole strategy (all its TextGrad steps, in order) on one worker thread; jobs run side by
side up to `concurrency`. Results come back in input order. Per-job `calls`/`tokens` are exact under concurrency
because every engine counts per thread (`usage_detail_here`) and a job never leaves its thread. An engine fault
(rewriter.strategies.base.engine_fault) becomes verdict "error"; a job that would start after the budget ran out is
"skipped" (reason "budget exhausted: ...") without any call. Any other exception is a bug, not a verdict: no
further job starts, the ones in flight finish, and RoundStopped is raised from it.
"""

from __future__ import annotations

import dataclasses
import time
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable

from rewriter.engine import failure_kind
from rewriter.strategies.base import RewriteResult, engine_fault, failure_reason, stopped


def _skipped(reason: str) -> RewriteResult:
    return RewriteResult(None, None, 0, 0, "skipped", reason)


def _tick(progress, index: int, result: RewriteResult) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):  # a tqdm-like bar
        progress.update(1)
    else:
        progress(index, result)


def rewrite_many(
    jobs: list[tuple[Any, Any]],
    strategy: Any,
    concurrency: int = 8,
    budget=None,
    progress: Any = None,
) -> list[RewriteResult]:
    """Rewrite every (sample, RewriteContext) job with the strategy; results in input order.

    `strategy`: a Strategy, or a built-in name. `budget`: a rewriter.budget.Budget; each job's engine is wrapped
    so that every call is admitted and charged. `progress`: a tqdm-like object (`update(1)` per finished job) or
    a callable `(index, result)`; called from worker threads as jobs finish.
    """
    if isinstance(strategy, str):
        from rewriter.strategies import build_strategy

        strategy = build_strategy(strategy)
    if concurrency < 1:
        raise ValueError(f"rewrite concurrency={concurrency!r} must be >= 1")

    stop = threading.Event()  # set by the first internal error: jobs not started yet are not started

    def run(index: int, sample, ctx) -> RewriteResult | None:
        if stop.is_set():
            return None
        start = time.perf_counter()
        if budget is not None:
            why = budget.refuse()
            if why is not None:
                result = _skipped(f"budget exhausted: {why}")
                _tick(progress, index, result)
                return result
            if getattr(ctx, "engine", None) is not None:
                ctx = dataclasses.replace(ctx, engine=budget.wrap(ctx.engine))
        try:
            result = strategy.rewrite(sample, ctx)
        except Exception as e:
            if not engine_fault(e):
                stop.set()
                raise stopped(f"rewriting sample {getattr(sample, 'id', sample)!r} with {type(strategy).__name__}", e) from e
            result = RewriteResult(None, None, 0, 0, "error", failure_reason(e), failure=failure_kind(e))
        if result.verdict == "error" and "budget exhausted" in result.reason:
            result.reason = result.reason[result.reason.index("budget exhausted"):]
        result.seconds = round(time.perf_counter() - start, 4)
        _tick(progress, index, result)
        return result

    if not jobs:
        return []
    if concurrency == 1 or len(jobs) == 1:
        return [run(i, s, c) for i, (s, c) in enumerate(jobs)]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(jobs)), thread_name_prefix="rewrite") as pool:
        futures = [pool.submit(run, i, s, c) for i, (s, c) in enumerate(jobs)]
        # Every job is waited for before an internal error is raised: the rewrites in flight finish, so the replies
        # they paid for are in the reply cache when the round runs again.
        wait(futures)
        return [f.result() for f in futures]


def summarize(results: list[RewriteResult]) -> dict[str, Any]:
    """Counts for metrics.json: verdicts, calls, tokens, cache hits."""
    out: dict[str, Any] = {"rewrites": len(results)}
    for r in results:
        out[f"rewrites_{r.verdict}"] = out.get(f"rewrites_{r.verdict}", 0) + 1
    out["llm_calls"] = sum(r.calls for r in results)
    out["prompt_tokens"] = sum(r.prompt_tokens for r in results)
    out["completion_tokens"] = sum(r.completion_tokens for r in results)
    out["cache_hits"] = sum(r.cache_hits for r in results)
    return out
