"""The scale path: a round's `direct` rewrites through the OpenAI Batch API file format, for large offline rounds.

    results = rewrite_batch(jobs, engine, workdir="runs/r/batches")   # same RewriteResults as rewrite_many

One JSONL line per rewrite request, in the format of the OpenAI Batch API (and of `vllm run-batch`):

    {"custom_id": "<sample id>", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": ..., "messages": [...], "temperature": ..., "max_tokens": ...}}

The messages are the ones the `direct` strategy sends on the live path (its SYSTEM and prompt), and the reply
cache is the same (`rewriter.cache.request_key`), so a batch round fills the cache a live round reads and vice
versa: a rerun of a round pays nothing and uploads nothing. Replies then go through `direct.clean` and the
meaning guard exactly like a live rewrite.

Three ways to get the results file:

* `submit(engine, requests_path)`: OpenAI (or any server with /v1/files and /v1/batches): upload with
  purpose "batch", create the batch (completion window 24 h; OpenAI bills batch tokens at about half price), poll
  until it ends, download the output and error files next to the requests file
  (`x.requests.jsonl` -> `x.output.jsonl`, `x.errors.jsonl`).
* `run_offline(requests_path, output_path, engine)`: replay the lines one by one against any OpenAI-compatible
  chat endpoint (llama.cpp, Ollama, LM Studio: servers without a Batch API), with the engine's retries.
* vLLM without a server: `vllm run-batch -i x.requests.jsonl -o x.output.jsonl --model <model>`; then
  `read_results("x.output.jsonl")` reads it (same output shape).

Only `direct` fits a batch: one independent call per sample. textgrad's steps depend on each other's replies.
The API key is only ever in the engine's client (never in a file, a message or an error).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple

from rewriter.cache import CachedEngine, ReplyCache, request_key
from rewriter.engines import EngineError, _messages, _one_line
from rewriter.strategies import direct
from rewriter.strategies.base import RewriteContext, RewriteResult, judge

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchError(EngineError):
    """A batch could not be submitted or did not complete. One line, without secrets.

    `output_path`/`errors_path`: files with the lines that did finish (an expired batch keeps its finished
    requests), or None.
    """

    def __init__(self, message: str, output_path: str | None = None, errors_path: str | None = None):
        super().__init__(message)
        self.output_path = output_path
        self.errors_path = errors_path


class BatchReply(NamedTuple):
    """One line of a results file: the reply text, or an error (one line)."""

    text: str | None
    error: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage: bool = False  # whether the server reported token usage

    @property
    def ok(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------------------------------------ helpers


def _unwrap(engine, want: Callable[[Any], bool]):
    """The first engine in a wrapper chain (BudgetedEngine -> CachedEngine -> OpenAIEngine) that `want`s."""
    seen = 0
    while engine is not None and seen < 8:
        if want(engine):
            return engine
        engine = engine.__dict__.get("engine") if hasattr(engine, "__dict__") else None
        seen += 1
    return None


def _http_engine(engine):
    """The OpenAIEngine behind any wrappers; a local engine has no endpoint to batch against."""
    base = _unwrap(engine, lambda e: "_client" in getattr(e, "__dict__", {}))
    if base is None:
        raise ValueError(
            f"the batch path needs an OpenAI-compatible engine (rewriter.engine=openai), not {getattr(engine, 'name', engine)!r}"
        )
    return base


def _cache_of(engine, cache) -> ReplyCache | None:
    if isinstance(cache, ReplyCache):
        return cache
    if cache is not None:
        return ReplyCache(cache)
    cached = _unwrap(engine, lambda e: isinstance(e, CachedEngine))
    return cached.cache if cached is not None else None


def prompt_for(ctx: RewriteContext) -> tuple[str, str]:
    """(prompt, system) of the direct strategy's one call: what `direct.rewrite` passes to `engine.generate`."""
    return direct._prompt(ctx.question, ctx.student_answer), direct.SYSTEM


def messages_for(ctx: RewriteContext) -> list[dict]:
    """The chat messages the direct strategy sends for this context (identical on the live and batch paths)."""
    return _messages(*prompt_for(ctx))


def custom_ids(jobs) -> list[str]:
    """Stable ids from the sample ids; a sample that appears twice gets `#2`, `#3`, ... (ids must be unique)."""
    seen: dict[str, int] = {}
    out = []
    for sample, _ in jobs:
        sid = str(getattr(sample, "id", sample))
        seen[sid] = seen.get(sid, 0) + 1
        out.append(sid if seen[sid] == 1 else f"{sid}#{seen[sid]}")
    return out


def output_paths(requests_path: str | os.PathLike) -> tuple[str, str]:
    """(output, errors) file paths next to a requests file: x.requests.jsonl -> x.output.jsonl, x.errors.jsonl."""
    path = os.fspath(requests_path)
    for suffix in (".requests.jsonl", ".jsonl"):
        if path.endswith(suffix):
            stem = path[: -len(suffix)]
            break
    else:
        stem = path
    return f"{stem}.output.jsonl", f"{stem}.errors.jsonl"


def _scrub(engine, text: str) -> str:
    base = _unwrap(engine, lambda e: hasattr(e, "_scrub"))
    return base._scrub(text) if base is not None else text


# ------------------------------------------------------------------------------------------------ files


def write_requests(jobs, engine, path: str | os.PathLike) -> list[str]:
    """Write one Batch API request line per (sample, RewriteContext) job for the direct strategy; the custom_ids."""
    base = _http_engine(engine)
    ids = custom_ids(jobs)
    params = engine.request_params({}) if hasattr(engine, "request_params") else base.request_params({})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for cid, (_, ctx) in zip(ids, jobs):
            body = {"model": base.model, "messages": messages_for(ctx), **params}
            line = {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return ids


def _error_text(error) -> str:
    if isinstance(error, dict) and isinstance(error.get("error"), dict):  # {"error": {...}} (newer vLLM)
        error = error["error"]
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or json.dumps(error, sort_keys=True)
        return _one_line(f"{code}: {message}" if code else message, 200)
    return _one_line(str(error), 200)


def _parse_line(obj: dict) -> BatchReply:
    response = obj.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    status = response.get("status_code") if isinstance(response, dict) else None
    if obj.get("error"):
        return BatchReply(None, _error_text(obj["error"]))
    if status is not None and int(status) != 200:
        inner = body.get("error", body) if isinstance(body, dict) else body
        return BatchReply(None, f"HTTP {status}: {_error_text(inner) if inner else 'no body'}")
    if not isinstance(body, dict):
        return BatchReply(None, "malformed reply: no response body")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return BatchReply(None, "malformed reply: no choices")
    text = ((choices[0] or {}).get("message") or {}).get("content") or ""
    usage = body.get("usage")
    if isinstance(usage, dict):
        return BatchReply(text, None, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), True)
    return BatchReply(text, None)


def read_results(path: str | os.PathLike) -> dict[str, BatchReply]:
    """custom_id -> BatchReply for an output (or error) file of the Batch API or of `vllm run-batch`."""
    out: dict[str, BatchReply] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BatchError(f"{os.fspath(path)} line {n} is not JSON: {e}") from None
            if not isinstance(obj, dict) or "custom_id" not in obj:
                raise BatchError(f"{os.fspath(path)} line {n} has no custom_id: not a batch results file")
            out[str(obj["custom_id"])] = _parse_line(obj)
    return out


# ------------------------------------------------------------------------------------------------ running


def submit(engine, requests_path: str | os.PathLike, poll_seconds: float = 10.0, timeout: float = 24 * 3600.0,
           sleep: Callable[[float], None] = time.sleep) -> str:
    """Run a requests file through the server's Batch API; the path of the downloaded output file.

    The error file (lines that failed) goes to the sibling `.errors.jsonl`. A batch that fails, expires, is
    cancelled or is not done within `timeout` seconds (it is then cancelled) raises BatchError, after
    downloading whatever output it has.
    """
    import openai

    base = _http_engine(engine)
    requests_path = os.fspath(requests_path)
    output_path, errors_path = output_paths(requests_path)
    for stale in (output_path, errors_path):
        if os.path.exists(stale):
            os.remove(stale)
    client = base._client.with_options(max_retries=2)  # management calls: a couple of quiet retries are fine
    where = base.name
    batch_id = None
    try:
        with open(requests_path, "rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
        batch_id = batch.id
        deadline = time.monotonic() + timeout
        while batch.status not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    client.batches.cancel(batch.id)
                except openai.OpenAIError:
                    pass
                raise BatchError(
                    f"{where}: batch {batch.id} not finished after {timeout:g} s (status {batch.status}); cancelled it",
                )
            sleep(min(poll_seconds, left))
            batch = client.batches.retrieve(batch.id)
        got_output = got_errors = False
        if batch.output_file_id:
            _download(client, batch.output_file_id, output_path)
            got_output = True
        if batch.error_file_id:
            _download(client, batch.error_file_id, errors_path)
            got_errors = True
    except openai.OpenAIError as e:
        what = f"batch {batch_id}" if batch_id else "batch submission"
        raise BatchError(f"{where}: {what} failed: {base._failure(e)}") from None
    if batch.status != "completed":
        counts = getattr(batch, "request_counts", None)
        done = f"; {counts.completed}/{counts.total} requests done" if counts is not None and counts.total else ""
        errs = getattr(getattr(batch, "errors", None), "data", None) or []
        why = "; " + "; ".join(_error_text({"code": e.code, "message": e.message}) for e in errs[:2]) if errs else ""
        raise BatchError(_one_line(base._scrub(f"{where}: batch {batch.id} {batch.status}{done}{why}"), 300),
                         output_path if got_output else None, errors_path if got_errors else None)
    if not got_output:  # every line failed: an empty output file keeps read_results simple
        open(output_path, "w").close()
    return output_path


def _download(client, file_id: str, path: str) -> None:
    content = client.files.content(file_id)
    data = content.content if hasattr(content, "content") else content.read()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run_offline(requests_path: str | os.PathLike, output_path: str | os.PathLike, engine) -> str:
    """Replay a requests file one line at a time against the engine's chat endpoint (servers without a Batch
    API: llama.cpp, Ollama, LM Studio); writes a results file in the Batch API output shape. The engine's model
    and its retries, backoff and circuit breaker apply; the body's sampling parameters are sent as written.
    A line that fails after the retries becomes an error line. Returns output_path."""
    from rewriter.engines import usage_detail_of

    output_path = os.fspath(output_path)
    tmp = output_path + ".tmp"
    with open(requests_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as out:
        for n, line in enumerate(src):
            if not line.strip():
                continue
            req = json.loads(line)
            body = dict(req.get("body") or {})
            messages = body.pop("messages", [])
            body.pop("model", None)
            rid = f"offline-{n}"
            before = usage_detail_of(engine)
            try:
                text = engine.generate(messages, **body)
            except Exception as e:  # one line, already without secrets for our engines
                error = {"code": type(e).__name__, "message": _scrub(engine, _one_line(str(e), 300))}
                row = {"id": rid, "custom_id": req.get("custom_id"), "response": None, "error": error}
            else:
                _, p, c = (b - a for a, b in zip(before, usage_detail_of(engine)))
                reply = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
                         "model": getattr(engine, "model", None),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
                row = {"id": rid, "custom_id": req.get("custom_id"),
                       "response": {"status_code": 200, "request_id": rid, "body": reply}, "error": None}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, output_path)
    return output_path


# ------------------------------------------------------------------------------------------------ a round


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


def rewrite_batch(jobs, engine, workdir: str | os.PathLike, cache=None, *, mode: str = "api",
                  poll_seconds: float = 10.0, timeout: float = 24 * 3600.0, budget=None,
                  sleep: Callable[[float], None] = time.sleep) -> list[RewriteResult]:
    """The direct rewrites of (sample, RewriteContext) jobs as one batch; RewriteResults in job order.

    `engine`: an OpenAIEngine, possibly wrapped (CachedEngine, BudgetedEngine). `cache`: a ReplyCache or its
    path; None: the CachedEngine's cache when the engine has one, else no cache. Replies already cached are not
    sent (calls=0, cache_hits=1); identical requests in one round are sent once (the others count as cache hits).
    `mode`: "api" (the server's /v1/batches, see `submit`) or "replay" (`run_offline`, one by one).
    `budget`: a rewriter.budget.Budget: each request sent is admitted first (the rest are "skipped", like the
    live path) and charged with the tokens the results report; token and cost limits are checked before the
    batch, so one batch can pass them by at most its own size. Never raises for a failed batch or line: those
    rewrites get verdict "error" with a one-line reason and the samples stay numerical.
    """
    from rewriter.budget import BudgetExhausted

    if mode not in ("api", "replay"):
        raise ValueError(f"rewrite_batch mode={mode!r}: choose 'api' or 'replay'")
    start = time.perf_counter()
    base = _http_engine(engine)
    store = _cache_of(engine, cache)
    cached_engine = _unwrap(engine, lambda e: isinstance(e, CachedEngine))
    name = getattr(base, "name", "engine")
    n = len(jobs)
    keys = [request_key(engine, *prompt_for(ctx)) for _, ctx in jobs]
    hits: dict[int, str] = {}  # job -> cached reply
    first: dict[str, int] = {}  # request key -> the job that sends it
    results: list[RewriteResult | None] = [None] * n
    for i, key in enumerate(keys):
        reply = store.get(key) if store is not None else None
        if reply is not None:
            hits[i] = reply
        elif key in first:
            continue  # same request as an earlier job: shares its reply
        else:
            if budget is not None:
                try:
                    budget.admit()
                except BudgetExhausted as e:
                    results[i] = RewriteResult(None, None, 0, 0, "skipped", str(e))
                    continue
            first[key] = i
    fresh: dict[int, BatchReply] = {}
    failure = None
    if first:
        sent = sorted(first.values())
        requests_path = _next_requests_path(os.fspath(workdir))
        ids = write_requests([jobs[i] for i in sent], engine, requests_path)
        output_path, errors_path = output_paths(requests_path)
        lines: dict[str, BatchReply] = {}
        try:
            if mode == "api":
                submit(engine, requests_path, poll_seconds=poll_seconds, timeout=timeout, sleep=sleep)
            else:
                run_offline(requests_path, output_path, base)
        except BatchError as e:
            failure = str(e)
        for path in (output_path, errors_path):
            if os.path.exists(path):
                try:
                    lines.update(read_results(path))
                except BatchError as e:
                    failure = failure or str(e)
        for cid, i in zip(ids, sent):
            line = lines.get(cid) or BatchReply(None, failure or f"no result for custom_id {cid!r} in the batch output")
            if line.ok:
                problem = _problem(line.text or "", base)
                if problem is not None:
                    line = line._replace(error=problem)
            if line.ok or line.usage:
                p, c = line.prompt_tokens, line.completion_tokens
                if not line.usage:  # ~4 characters a token, like the live engine when a server omits usage
                    p, c = sum(len(m["content"]) for m in messages_for(jobs[i][1])) // 4, len(line.text or "") // 4
                fresh[i] = line._replace(prompt_tokens=p, completion_tokens=c)
                if mode == "api" and hasattr(base, "_record"):  # replay calls went through base.generate already
                    base._record(p, c)
            else:
                fresh[i] = line
            if line.ok and store is not None:
                store.put(keys[i], name, line.text)
            if cached_engine is not None:
                with cached_engine._lock:
                    cached_engine.misses += 1
            if budget is not None:
                billed = fresh[i].ok or fresh[i].usage
                budget.charge(1 if billed else 0, fresh[i].prompt_tokens, fresh[i].completion_tokens,
                              model=base.model, kind="openai", reserved=1)
    seconds = round(time.perf_counter() - start, 4)
    for i, ((_, ctx), key) in enumerate(zip(jobs, keys)):
        if results[i] is not None:
            continue
        if i in fresh:
            line = fresh[i]
            meter = _Spent(1 if (line.ok or line.usage) else 0, line.prompt_tokens, line.completion_tokens)
            text, err = line.text, line.error
        else:
            if i in hits:
                text, err = hits[i], None
            else:  # a duplicate of an earlier job's request (a skipped job's duplicates were skipped too)
                line = fresh[first[key]]
                text, err = line.text, line.error
            meter = _Spent(0, 0, 0, 1)
            if cached_engine is not None and err is None:
                cached_engine._hit()
        if err is not None:
            res = meter.result(None, None, "error", _scrub(engine, f"BatchError: {err}"))
        elif not text or not text.strip():
            res = meter.result(None, None, "error", "empty reply from the rewriter engine")
        else:
            res = judge(ctx, meter, direct.clean(text), None)
        res.seconds = seconds if i in fresh else 0.0
        results[i] = res
    return results  # type: ignore[return-value]


def _problem(text: str, base) -> str | None:
    """What the live engine would call malformed (empty or over-long); it would retry, a batch cannot."""
    if not text.strip():
        return "malformed reply: empty"
    limit = getattr(base, "max_reply_chars", None)
    if limit and len(text) > limit:
        return f"malformed reply: over-long ({len(text)} chars, limit {limit})"
    return None
