"""A persistent, content-addressed cache of engine replies (one SQLite file), so no rewrite is paid for twice.

    engine = CachedEngine(OpenAIEngine(...), "runs/r/rewrites.sqlite")
    engine.generate(...)  # first time: one HTTP call; any later identical request (this run or a rerun): none

The key is the sha256 of (engine kind, model, base_url without credentials, the full messages, the sampling
parameters the call would send), so changing the temperature, the model or one character of a prompt misses.
Successful replies are stored; so are failures that would repeat (an EngineError with `repeats`: a malformed reply
to a deterministic request after its retries, a 4xx refusal): a rerun raises them again at once, without a call
(kind "known-failure"), unless `retry_failures` says to send them again. Transient failures (timeouts, 5xx,
connection errors, an open circuit, the budget) are never stored. textgrad's own disk cache is never involved:
textgrad only ever sees our engines through `engines.as_textgrad`.

Thread-safe: one connection behind a lock; concurrent identical requests are made once (the others wait for
the first and count as hits). Counters: `hits`, `misses` (totals) and `hits_here()` (this thread's).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

from nslora.core.atomic import connect_durable
from rewriter.engine import CONTROL_PARAMS, EngineError, to_messages, usage_detail_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def identity_of(engine) -> dict:
    """kind, model, base_url of an engine; engines written elsewhere fall back to their class and name."""
    if hasattr(engine, "identity"):
        return dict(engine.identity())
    return {"kind": getattr(engine, "kind", None) or type(engine).__name__, "model": getattr(engine, "name", ""), "base_url": None}


def request_key(engine, prompt, system=None, **params) -> str:
    """The cache key of one generate call."""
    if hasattr(engine, "request_params"):
        sampling = engine.request_params(params)
    else:
        sampling = {k: v for k, v in params.items() if k not in CONTROL_PARAMS}
    payload = {**identity_of(engine), "messages": to_messages(prompt, system), "params": sampling}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    """The SQLite store behind CachedEngine: get/put by key."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._lock = threading.Lock()
        self._db = connect_durable(self.path)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, engine: str, reply: str) -> None:
        with self._lock, self._db:  # one transaction a reply: a crash loses at most the call in flight
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, engine, reply, created) VALUES (?, ?, ?, ?)",
                (key, engine, reply, time.time()),
            )

    def failure(self, key: str) -> tuple[str, str] | None:
        """(kind, reason) of a request that failed in a way that would repeat, or None."""
        with self._lock:
            row = self._db.execute("SELECT kind, reason FROM failures WHERE key=?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put_failure(self, key: str, engine: str, kind: str, reason: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO failures (key, engine, kind, reason, created) VALUES (?, ?, ?, ?, ?)",
                             (key, engine, kind, reason, time.time()))

    def forget_failure(self, key: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM failures WHERE key=?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedEngine:
    """Any engine with a persistent reply cache in front; same `generate` contract and counters.

    `calls`, `prompt_tokens`, `completion_tokens` and `usage_here()` are the wrapped engine's: they count only
    calls really made, so a cache hit costs 0 calls and 0 tokens.
    """

    def __init__(self, engine, path: str | os.PathLike, retry_failures: bool = False):
        self.engine = engine
        self.cache = path if isinstance(path, ReplyCache) else ReplyCache(path)
        self.retry_failures = retry_failures
        self.name = getattr(engine, "name", type(engine).__name__)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._inflight: dict[str, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedEngine({self.engine!r})"

    def __getattr__(self, attr):  # kind, model, outcomes, breaker, ... of the wrapped engine
        if attr == "engine":
            raise AttributeError(attr)
        return getattr(self.engine, attr)

    # counters, delegated so that strategies' meters see only real calls
    @property
    def calls(self) -> int:
        return self.engine.calls

    @property
    def prompt_tokens(self) -> int:
        return self.engine.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.engine.completion_tokens

    def usage_here(self) -> tuple[int, int]:
        c, p, k = usage_detail_of(self.engine)
        return c, p + k

    def usage_detail_here(self) -> tuple[int, int, int]:
        return usage_detail_of(self.engine)

    def hits_here(self) -> int:
        return getattr(self._local, "hits", 0)

    def identity(self) -> dict:
        return identity_of(self.engine)

    def request_params(self, params: dict) -> dict:
        if hasattr(self.engine, "request_params"):
            return self.engine.request_params(params)
        return {k: v for k, v in params.items() if k not in CONTROL_PARAMS}

    def count_miss(self) -> None:
        """A request this engine did not answer from the cache (the Batch API path sends it itself)."""
        with self._lock:
            self.misses += 1

    def count_hit(self) -> None:
        with self._lock:
            self.hits += 1
        self._local.hits = self.hits_here() + 1

    def is_cached(self, prompt, system=None, **params) -> bool:
        return self.cache.get(request_key(self.engine, prompt, system, **params)) is not None

    def generate(self, prompt, system=None, **params) -> str:
        key = request_key(self.engine, prompt, system, **params)
        while True:
            reply = self.cache.get(key)
            if reply is not None:
                self.count_hit()
                return reply
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    mine = self._inflight[key] = threading.Event()
            if waiting is None:
                break
            waiting.wait()  # the same request is in flight in another thread: take its reply (or try ourselves)
        try:
            known = None if self.retry_failures else self.cache.failure(key)
            if known is not None:  # counted where it lands: rewrites.failure = known-failure
                raise EngineError(f"not sent again: it failed before ({known[1]}); rewriter.retry_failures=true "
                                  "sends it again", kind="known-failure")
            self.count_miss()
            try:
                reply = self.engine.generate(prompt, system=system, **params)
            except EngineError as e:
                if e.repeats:
                    self.cache.put_failure(key, self.name, e.kind, str(e))
                raise
            self.cache.put(key, self.name, reply)
            if self.retry_failures:
                self.cache.forget_failure(key)
            return reply
        finally:
            with self._lock:
                del self._inflight[key]
            mine.set()

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_entries": len(self.cache)}
