"""The scale path: a round's one-call rewrites (the `direct` strategy, or yours with `request` / `parse`) as one
OpenAI Batch API job, for large offline rounds.

    results = rewrite_batch(jobs, engine, workdir="runs/r/batches")   # same RewriteResults as rewrite_many

The messages are the ones the strategy sends on the live path (`strategy.request(ctx)`), and the reply cache is
the same (`rewriter.cache.request_key`), so a batch round fills the cache a live round reads and vice versa: a
rerun of a round pays nothing and uploads nothing. Replies then go through `strategy.parse` and the meaning
guard exactly like a live rewrite. The file format and the ways to get results (Batch API, line-by-line
replay, `vllm run-batch`) are in rewriter/batch_api.py. textgrad's steps depend on each other's replies, so it
cannot be batched.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from rewriter.batch_api import (  # noqa: F401  (re-exported: the batch path's public names)
    ENDPOINT,
    BatchError,
    BatchReply,
    chain,
    http_engine,
    innermost,
    output_paths,
    read_results,
    run_offline,
    scrub,
    submit,
)
from nslora.core.atomic import open_atomic
from rewriter.cache import CachedEngine, ReplyCache, request_key
from rewriter.engine import to_messages
from rewriter.strategies.base import RewriteContext, RewriteResult, judge
from rewriter.strategies.direct import DirectStrategy


def messages_for(ctx: RewriteContext, strategy=None) -> list[dict]:
    """The chat messages a one-call strategy (default: direct) sends for this context, live or batched."""
    return to_messages(*(strategy or DirectStrategy()).request(ctx))


def custom_ids(jobs) -> list[str]:
    """Stable ids from the sample ids; a sample that appears twice gets `#2`, `#3`, ... (ids must be unique)."""
    seen: dict[str, int] = {}
    out = []
    for sample, _ in jobs:
        sid = str(getattr(sample, "id", sample))
        seen[sid] = seen.get(sid, 0) + 1
        out.append(sid if seen[sid] == 1 else f"{sid}#{seen[sid]}")
    return out


def write_requests(jobs, engine, path: str | os.PathLike, strategy=None) -> list[str]:
    """Write one Batch API request line per (sample, RewriteContext) job; the custom_ids."""
    base = http_engine(engine)
    ids = custom_ids(jobs)
    params = engine.request_params({}) if hasattr(engine, "request_params") else base.request_params({})
    path = os.fspath(path)
    with open_atomic(path) as f:
        for cid, (_, ctx) in zip(ids, jobs):
            body = {"model": base.model, "messages": messages_for(ctx, strategy), **params}
            line = {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return ids


class _Spent:
    """The Meter interface `judge` needs, with fixed counts (a batch reply is not measured on a thread)."""

    def __init__(self, calls: int = 0, prompt: int = 0, completion: int = 0, hits: int = 0):
        self.counts = (calls, prompt, completion, hits)

    def result(self, new_question, new_system, verdict, reason, **kw) -> RewriteResult:
        calls, prompt, completion, hits = self.counts
        return RewriteResult(new_question, new_system, calls, prompt + completion, verdict, reason,
                             prompt_tokens=prompt, completion_tokens=completion, cache_hits=hits, **kw)


def _next_requests_path(workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        path = os.path.join(workdir, f"rewrites-{stamp}-{n:03d}.requests.jsonl")
        if not os.path.exists(path):
            return path
        n += 1


def _cache_of(engine, cache) -> ReplyCache | None:
    if isinstance(cache, ReplyCache):
        return cache
    if cache is not None:
        return ReplyCache(cache)
    cached = _cached_engine(engine)
    return cached.cache if cached is not None else None


def _cached_engine(engine) -> CachedEngine | None:
    return next((e for e in chain(engine) if isinstance(e, CachedEngine)), None)


def _problem(text: str, base) -> str | None:
    """What the live engine would call malformed (empty or over-long); it would retry, a batch cannot."""
    if not text.strip():
        return "malformed reply: empty"
    limit = getattr(base, "max_reply_chars", None)
    if limit and len(text) > limit:
        return f"malformed reply: over-long ({len(text)} chars, limit {limit})"
    return None


@dataclass
class _Round:
    """One batch round's bookkeeping: which job is a cache hit, which sends its request, what came back."""

    jobs: list
    keys: list[str]
    hits: dict[int, str] = field(default_factory=dict)  # job -> cached reply
    first: dict[str, int] = field(default_factory=dict)  # request key -> the job that sends it
    fresh: dict[int, BatchReply] = field(default_factory=dict)  # job -> its reply from this batch
    failure: str | None = None
    results: list = field(default_factory=list)


def _admit(r: _Round, store, budget) -> None:
    """Cached replies are not sent; identical requests are sent once; each request sent is admitted by the budget."""
    from rewriter.budget import BudgetExhausted

    for i, key in enumerate(r.keys):
        reply = store.get(key) if store is not None else None
        if reply is not None:
            r.hits[i] = reply
        elif key in r.first:
            continue  # same request as an earlier job: shares its reply
        else:
            if budget is not None:
                try:
                    budget.admit()
                except BudgetExhausted as e:
                    r.results[i] = RewriteResult(None, None, 0, 0, "skipped", str(e))
                    continue
            r.first[key] = i


def _fetch(r: _Round, engine, base, workdir, strategy, mode, poll_seconds, timeout, sleep) -> dict[int, BatchReply]:
    """Send the round's requests; each sent job's reply line (an error line when the batch or the line failed)."""
    sent = sorted(r.first.values())
    requests_path = _next_requests_path(os.fspath(workdir))
    ids = write_requests([r.jobs[i] for i in sent], engine, requests_path, strategy)
    output_path, errors_path = output_paths(requests_path)
    lines: dict[str, BatchReply] = {}
    try:
        if mode == "api":
            submit(engine, requests_path, poll_seconds=poll_seconds, timeout=timeout, sleep=sleep)
        else:
            run_offline(requests_path, output_path, base)
    except BatchError as e:
        r.failure = str(e)
    for path in (output_path, errors_path):
        if os.path.exists(path):
            try:
                lines.update(read_results(path))
            except BatchError as e:
                r.failure = r.failure or str(e)
    return {i: lines.get(cid) or BatchReply(None, r.failure or f"no result for custom_id {cid!r} in the batch output")
            for cid, i in zip(ids, sent)}


def _account(r: _Round, replies: dict[int, BatchReply], base, store, cached, budget, strategy, mode) -> None:
    """Check each reply, count its tokens, fill the cache and charge the budget."""
    for i, line in replies.items():
        if line.ok:
            problem = _problem(line.text or "", base)
            if problem is not None:
                line = line._replace(error=problem)
        if line.ok or line.usage:
            p, c = line.prompt_tokens, line.completion_tokens
            if not line.usage:  # ~4 characters a token, like the live engine when a server omits usage
                p = sum(len(m["content"]) for m in messages_for(r.jobs[i][1], strategy)) // 4
                c = len(line.text or "") // 4
            r.fresh[i] = line._replace(prompt_tokens=p, completion_tokens=c)
            if mode == "api":  # replay calls went through base.generate already
                base.record_usage(p, c)
        else:
            r.fresh[i] = line
        if line.ok and store is not None:
            store.put(r.keys[i], getattr(base, "name", "engine"), line.text)
        if cached is not None:
            cached.count_miss()
        if budget is not None:
            billed = r.fresh[i].ok or r.fresh[i].usage
            budget.charge(1 if billed else 0, r.fresh[i].prompt_tokens, r.fresh[i].completion_tokens,
                          model=base.model, kind="openai", reserved=1)


def _result(r: _Round, i: int, ctx, engine, cached, strategy) -> RewriteResult:
    """Job i's RewriteResult from its own reply, a cached one, or the reply of an identical request."""
    if i in r.fresh:
        line = r.fresh[i]
        meter = _Spent(1 if (line.ok or line.usage) else 0, line.prompt_tokens, line.completion_tokens)
        text, err = line.text, line.error
    else:
        if i in r.hits:
            text, err = r.hits[i], None
        else:  # a duplicate of an earlier job's request (a skipped job's duplicates were skipped too)
            line = r.fresh[r.first[r.keys[i]]]
            text, err = line.text, line.error
        meter = _Spent(0, 0, 0, 1)
        if cached is not None and err is None:
            cached.count_hit()
    if err is not None:
        res = meter.result(None, None, "error", scrub(engine, f"BatchError: {err}"), failure="http")
    elif not text or not text.strip():
        res = meter.result(None, None, "error", "empty reply from the rewriter engine", failure="malformed")
    else:
        res = judge(ctx, meter, strategy.parse(text), None)
    # A batch is timed as a whole (the round's wall time); no row is charged the batch's time.
    res.seconds = None
    return res


def rewrite_batch(jobs, engine, workdir: str | os.PathLike, cache=None, *, mode: str = "api",
                  poll_seconds: float = 10.0, timeout: float = 24 * 3600.0, budget=None,
                  sleep: Callable[[float], None] = time.sleep, strategy=None) -> list[RewriteResult]:
    """The one-call rewrites of (sample, RewriteContext) jobs as one batch; RewriteResults in job order.

    `engine`: an OpenAI-compatible engine, possibly wrapped (CachedEngine, BudgetedEngine). `cache`: a ReplyCache
    or its path; None: the CachedEngine's cache when the engine has one, else no cache. Replies already cached are
    not sent (calls=0, cache_hits=1); identical requests in one round are sent once (the others count as cache
    hits). `mode`: "api" (the server's /v1/batches, see `submit`) or "replay" (`run_offline`, one by one).
    `budget`: a rewriter.budget.Budget: each request sent is admitted first (the rest are "skipped", like the
    live path) and charged with the tokens the results report; token and cost limits are checked before the
    batch, so one batch can pass them by at most its own size. `strategy`: a one-call strategy (default direct).
    Never raises for a failed batch or line: those rewrites get verdict "error" with a one-line reason and the
    samples stay numerical.
    """
    if mode not in ("api", "replay"):
        raise ValueError(f"rewrite_batch mode={mode!r}: choose 'api' or 'replay'")
    strategy = strategy or DirectStrategy()
    base = http_engine(engine)
    store, cached = _cache_of(engine, cache), _cached_engine(engine)
    keys = [request_key(engine, *strategy.request(ctx)) for _, ctx in jobs]
    r = _Round(jobs=list(jobs), keys=keys, results=[None] * len(jobs))
    _admit(r, store, budget)
    if r.first:
        replies = _fetch(r, engine, base, workdir, strategy, mode, poll_seconds, timeout, sleep)
        _account(r, replies, base, store, cached, budget, strategy, mode)
    for i, (_, ctx) in enumerate(jobs):
        if r.results[i] is None:
            r.results[i] = _result(r, i, ctx, engine, cached, strategy)
    return r.results
