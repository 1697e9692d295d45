"""The engine contract: what the rewriter needs from an LLM, and a conformance check for your own engine.

An engine is any object with a `name` (safe to log: never holds a key) and one method

    generate(prompt_or_messages, system=None, **params) -> str

Everything else is an optional hook, looked up by name, each with a fallback (the Protocols MeteredEngine,
CacheableEngine and BatchEngine below name them in code):

    usage_detail_here() -> (calls, prompt_tokens, completion_tokens)  made by the calling thread, so a rewrite's
                            cost is exact while other threads share the engine (fallback: the totals below)
    calls, prompt_tokens, completion_tokens                            running totals (fallback: 0, nothing counted)
    identity() -> dict      what the reply cache keys on besides the messages (fallback: class and name)
    request_params(params) -> dict   the sampling parameters a call sends (cache key, Batch API lines)
    kind, model             "openai" engines are priced by `model` (rewriter.prices); anything else costs 0

Control keyword (never sent, never part of a cache key): `expect="<TAG>"`: a reply without that text is
malformed (textgrad's update replies must carry `<IMPROVED_VARIABLE>`); an engine may retry it or raise.
An engine raises EngineError (one line, no secrets) when a call fails; the rewrite then records an error and
the sample stays numerical.

Your own engine: `rewriter.engine=my_pkg.engines:MyEngine` (a class or a factory), built with
`rewriter.engine_params` as keyword arguments; `check_engine` runs on it before the run starts.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Protocol, runtime_checkable

CONTROL_PARAMS = ("expect",)  # keywords that steer an engine but are never sent nor part of a cache key


@runtime_checkable
class Engine(Protocol):
    """The whole required contract."""

    name: str

    def generate(self, prompt: str | list[dict], system: str | None = None, **params: Any) -> str: ...


class MeteredEngine(Engine, Protocol):
    """Counts exact per rewrite while several threads share the engine (the built-ins; wrappers pass it on)."""

    def usage_detail_here(self) -> tuple[int, int, int]: ...


class CacheableEngine(Engine, Protocol):
    """Says what a reply depends on besides the messages, so the reply cache keys on it."""

    def identity(self) -> dict: ...

    def request_params(self, params: dict) -> dict: ...


class BatchEngine(CacheableEngine, Protocol):
    """What the Batch API path (rewriter/batch_api.py) needs of the engine under any wrappers."""

    client: Any  # an openai.OpenAI
    model: str

    def scrub(self, text: str) -> str: ...

    def describe_failure(self, exc: Exception) -> str: ...

    def record_usage(self, prompt_tokens: int, completion_tokens: int) -> None: ...


# Why a call failed, as stored with a failed rewrite (`rewrites.failure`) and grouped by `nslora inspect`.
FAILURE_KINDS = ("malformed", "http", "timeout", "connection", "circuit-open", "budget", "known-failure", "other")


class EngineError(RuntimeError):
    """One generate call failed (HTTP error, timeout, refused request). The message is one line, without secrets.

    `kind`: one of FAILURE_KINDS. `repeats`: the same request would fail the same way again (a malformed reply to a
    deterministic request, a 4xx refusal), so the reply cache remembers it and a rerun does not pay for it again."""

    def __init__(self, message: str, kind: str = "other", repeats: bool = False):
        super().__init__(message)
        self.kind, self.repeats = kind, repeats


def failure_kind(e: BaseException) -> str:
    """The failure kind of any exception a rewrite met (an engine's own errors say theirs)."""
    kind = getattr(e, "kind", None)
    return kind if kind in FAILURE_KINDS else "other"


class UsageCounter:
    """Thread-safe call and token counters.

    Totals serve the run's budget; the per-thread view lets a strategy measure its own calls while other
    threads (LangGraph Send branches) share the same engine.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def record_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        c, p, k = self.usage_detail_here()
        self._local.usage = (c + 1, p + prompt_tokens, k + completion_tokens)

    def usage_here(self) -> tuple[int, int]:
        """(calls, tokens) made by the current thread."""
        c, p, k = self.usage_detail_here()
        return c, p + k

    def usage_detail_here(self) -> tuple[int, int, int]:
        """(calls, prompt tokens, completion tokens) made by the current thread."""
        return getattr(self._local, "usage", (0, 0, 0))


def usage_detail_of(engine) -> tuple[int, int, int]:
    """(calls, prompt tokens, completion tokens), per thread where the engine can tell; 0 where it keeps no count."""
    if hasattr(engine, "usage_detail_here"):
        return engine.usage_detail_here()
    if hasattr(engine, "usage_here"):
        calls, tokens = engine.usage_here()
        return calls, tokens, 0
    return tuple(int(getattr(engine, k, 0) or 0) for k in ("calls", "prompt_tokens", "completion_tokens"))


def engine_kind(engine) -> str:
    """"openai" (priced by model), "local", or what your engine declares (`identity()["kind"]`, else `kind`)."""
    try:
        kind = engine.identity().get("kind") if hasattr(engine, "identity") else None
    except Exception:
        kind = None
    return str(kind or getattr(engine, "kind", None) or "custom")


def cache_hits_of(engine) -> int:
    """Cache hits of the current thread (0 for an engine without a cache)."""
    return engine.hits_here() if hasattr(engine, "hits_here") else 0



def to_messages(prompt: str | list[dict], system: str | None) -> list[dict]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
    if system is not None and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."




HOOKS = ("usage_detail_here", "identity", "request_params")


def check_engine(engine, call: bool = True) -> None:
    """Conformance check for any engine (like scikit-learn's check_estimator). Raises AssertionError naming the
    broken rule. With `call`, makes one short generate call and checks the reply's type."""
    kind = type(engine).__name__
    assert isinstance(getattr(engine, "name", None), str) and engine.name, f"{kind} needs a non-empty str attribute `name`"
    generate = getattr(engine, "generate", None)
    assert callable(generate), f"{kind} needs a method generate(prompt, system=None, **params) -> str"
    params = inspect.signature(generate).parameters
    assert "system" in params, f"{kind}.generate must take a `system` keyword (the system prompt, or None)"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), \
        f"{kind}.generate must take **params (sampling settings such as max_tokens, and expect=)"
    for hook in HOOKS:
        assert not hasattr(engine, hook) or callable(getattr(engine, hook)), f"{kind}.{hook} must be a method"
    if hasattr(engine, "usage_detail_here"):
        usage = engine.usage_detail_here()
        assert isinstance(usage, tuple) and len(usage) == 3 and all(isinstance(x, int) for x in usage), \
            f"{kind}.usage_detail_here() must return (calls, prompt_tokens, completion_tokens) as ints, got {usage!r}"
    if call:
        reply = engine.generate("Reply with the word OK.", system="You answer in one word.", max_tokens=8)
        assert isinstance(reply, str), f"{kind}.generate must return a str, got {type(reply).__name__}"
