"""The OpenAI Batch API file format and the three ways to get a results file (used by rewriter.batch).

One JSONL line per request, in the format of the OpenAI Batch API (and of `vllm run-batch`):

    {"custom_id": "<sample id>", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": ..., "messages": [...], "temperature": ..., "max_tokens": ...}}

* `submit(engine, requests_path)`: OpenAI (or any server with /v1/files and /v1/batches): upload with
  purpose "batch", create the batch (completion window 24 h; OpenAI bills batch tokens at about half price), poll
  until it ends, download the output and error files next to the requests file
  (`x.requests.jsonl` -> `x.output.jsonl`, `x.errors.jsonl`).
* `run_offline(requests_path, output_path, engine)`: replay the lines one by one against any OpenAI-compatible
  chat endpoint (llama.cpp, Ollama, LM Studio: servers without a Batch API), with the engine's retries.
* vLLM without a server: `vllm run-batch -i x.requests.jsonl -o x.output.jsonl --model <model>`; then
  `read_results("x.output.jsonl")` reads it (same output shape).

The engine behind any wrappers (each wrapper exposes what it wraps as `.engine`) must have the HTTP engine's
batch hooks: `client` (an openai.OpenAI), `model`, `scrub(text)`, `describe_failure(exc)`, `record_usage(p, c)`,
`request_params(params)`. The API key is only ever in that client (never in a file, a message or an error).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

from nslora.core.atomic import open_atomic, write_bytes, write_text
from rewriter.engine import EngineError, one_line, usage_detail_of

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


def chain(engine):
    """The engine and every engine it wraps, outermost first (BudgetedEngine -> CachedEngine -> the engine): each
    wrapper exposes what it wraps as `.engine`."""
    for _ in range(8):
        if engine is None:
            return
        yield engine
        engine = getattr(engine, "engine", None)


def innermost(engine):
    """The engine under any wrappers."""
    last = engine
    for last in chain(engine):
        pass
    return last


def http_engine(engine):
    """The OpenAI-compatible engine behind any wrappers; a local engine has no endpoint to batch against."""
    base = innermost(engine)
    if not all(hasattr(base, hook) for hook in ("client", "model", "scrub", "describe_failure", "record_usage")):
        raise ValueError(
            f"the batch path needs an OpenAI-compatible engine (rewriter.engine=openai), not {getattr(engine, 'name', engine)!r}"
        )
    return base


def scrub(engine, text: str) -> str:
    base = innermost(engine)
    return base.scrub(text) if hasattr(base, "scrub") else text


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


# ------------------------------------------------------------------------------------------------ files


def _error_text(error) -> str:
    if isinstance(error, dict) and isinstance(error.get("error"), dict):  # {"error": {...}} (newer vLLM)
        error = error["error"]
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or json.dumps(error, sort_keys=True)
        return one_line(f"{code}: {message}" if code else message, 200)
    return one_line(str(error), 200)


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

    base = http_engine(engine)
    requests_path = os.fspath(requests_path)
    output_path, errors_path = output_paths(requests_path)
    for stale in (output_path, errors_path):
        if os.path.exists(stale):
            os.remove(stale)
    client = base.client.with_options(max_retries=2)  # management calls: a couple of quiet retries are fine
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
        raise BatchError(f"{where}: {what} failed: {base.describe_failure(e)}") from None
    if batch.status != "completed":
        counts = getattr(batch, "request_counts", None)
        done = f"; {counts.completed}/{counts.total} requests done" if counts is not None and counts.total else ""
        errs = getattr(getattr(batch, "errors", None), "data", None) or []
        why = "; " + "; ".join(_error_text({"code": e.code, "message": e.message}) for e in errs[:2]) if errs else ""
        raise BatchError(one_line(base.scrub(f"{where}: batch {batch.id} {batch.status}{done}{why}"), 300),
                         output_path if got_output else None, errors_path if got_errors else None)
    if not got_output:  # every line failed: an empty output file keeps read_results simple
        write_text(output_path, "")
    return output_path


def _download(client, file_id: str, path: str) -> None:
    content = client.files.content(file_id)
    data = content.content if hasattr(content, "content") else content.read()
    write_bytes(path, data)


def run_offline(requests_path: str | os.PathLike, output_path: str | os.PathLike, engine) -> str:
    """Replay a requests file one line at a time against the engine's chat endpoint (servers without a Batch
    API: llama.cpp, Ollama, LM Studio); writes a results file in the Batch API output shape. The engine's model
    and its retries, backoff and circuit breaker apply; the body's sampling parameters are sent as written.
    A line that fails after the retries becomes an error line. Returns output_path."""
    output_path = os.fspath(output_path)
    with open(requests_path, encoding="utf-8") as src, open_atomic(output_path) as out:
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
                error = {"code": type(e).__name__, "message": scrub(engine, one_line(str(e), 300))}
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
    return output_path


