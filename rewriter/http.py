"""Chat completions over any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, LM Studio, ...), with retries,
backoff and a circuit breaker per endpoint.

OpenAIEngine does its own retries (the openai client runs with max_retries=0, so counts are exact): timeouts,
429 (honouring Retry-After), 5xx and connection errors are retried as they were (the server never answered them);
a malformed reply (empty, over-long, missing the expected tag) is retried with a changed request, since a greedy
server answers the same request the same way: a format reminder appended to the last user turn, and from the
second retry on a temperature raised by 0.3 a retry. No identical request is sent twice after a malformed reply.
Up to `max_retries` retries, with exponential backoff and jitter; a circuit breaker per
endpoint (shared by every engine on that base_url) fails calls fast after `breaker_failures` consecutive
failed attempts, for `breaker_cooldown` seconds, then lets one trial call through. `outcomes` counts every
attempt's outcome. Public hooks for the Batch API path: `client`, `scrub`, `describe_failure`, `record_usage`.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

from nslora.core.errors import UserError
from rewriter.engine import CONTROL_PARAMS, EngineError, UsageCounter, one_line, to_messages

OPENAI_URL = "https://api.openai.com/v1"


class CircuitBreaker:
    """Per endpoint: closed; open for `cooldown` s after `threshold` consecutive failures; then one trial call."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock=time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0  # consecutive
        self.opened_until: float | None = None
        self._trial = False
        self.times_opened = 0
        self.last_failure = ""  # the cause behind the open circuit, for the reasons of the calls it refuses

    def allow(self) -> bool:
        with self._lock:
            if self.opened_until is None:
                return True
            if self._clock() >= self.opened_until and not self._trial:
                self._trial = True  # half-open: exactly one caller probes the endpoint
                return True
            return False

    def remaining(self) -> float:
        with self._lock:
            return 0.0 if self.opened_until is None else max(0.0, self.opened_until - self._clock())

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_until = None
            self._trial = False

    def failure(self, cause: str = "") -> None:
        with self._lock:
            self.failures += 1
            self.last_failure = cause or self.last_failure
            if self._trial or self.failures >= self.threshold:
                if self.opened_until is None or self._trial:
                    self.times_opened += 1
                self.opened_until = self._clock() + self.cooldown
                self._trial = False

    @property
    def is_open(self) -> bool:
        return self.opened_until is not None


_BREAKERS: dict[str, CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(endpoint: str, threshold: int = 5, cooldown: float = 30.0) -> CircuitBreaker:
    """The breaker of one endpoint (base_url without credentials), shared by every engine that calls it."""
    with _BREAKERS_LOCK:
        b = _BREAKERS.get(endpoint)
        if b is None:
            b = _BREAKERS[endpoint] = CircuitBreaker(threshold, cooldown)
        else:  # the latest engine's settings win; the state (failures, open) is kept
            b.threshold, b.cooldown = threshold, cooldown
        return b


def reset_breakers() -> None:
    """Forget every endpoint's state (tests; a long-lived process after an outage was fixed)."""
    with _BREAKERS_LOCK:
        _BREAKERS.clear()


def _retry_after(e) -> float | None:
    """Seconds a 429/503 asks us to wait (Retry-After-Ms, Retry-After as seconds or an HTTP date)."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def engine_label(model: str, base_url: str) -> str:
    """A short name for logs and reasons: the model's base name (a server's model may be a long file path) and the
    host of `base_url` (already without credentials: `_safe_url`)."""
    base = os.path.basename(str(model).rstrip("/")) or str(model)
    return f"openai:{base}@{urlsplit(base_url).netloc}"


# What each attempt outcome is as a failure kind (rewriter.engine.FAILURE_KINDS).
_KIND = {"timeout": "timeout", "connection_error": "connection", "rate_limited": "http", "server_error": "http",
         "client_error": "http", "malformed": "malformed"}
RETRY_TEMPERATURE_STEP = 0.3


def reminder(problem: str, expect: str | None, max_chars: int) -> str:
    """What a retry after a malformed reply adds to the request, so that it is not the request that failed."""
    if expect and f"no {expect}" in problem:
        closing = expect.replace("<", "</", 1)
        return f"(Format reminder: your previous reply lacked {expect}. Put your answer between {expect} and {closing}.)"
    if "over-long" in problem:
        return f"(Your previous reply was too long. Reply in under {max_chars // 2} characters.)"
    return "(Your previous reply was empty. Reply with the text asked for.)"


def with_reminder(messages: list[dict], note: str) -> list[dict]:
    out = [dict(m) for m in messages]
    last = next((m for m in reversed(out) if m.get("role") == "user" and isinstance(m.get("content"), str)), None)
    if last is None:
        return out + [{"role": "user", "content": note}]
    last["content"] = f"{last['content']}\n\n{note}"
    return out


def _safe_url(url: str) -> str:
    """The URL without user:password or query string, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class OpenAIEngine(UsageCounter):
    """Chat completions over any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, LM Studio, ...)."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str = "gpt-4o",
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 256,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        retry_after_max: float = 60.0,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        max_reply_chars: int | None = None,
        sleep=time.sleep,
    ):
        super().__init__()
        import openai

        key = os.environ.get(api_key_env)
        if base_url is None and not key:
            raise UserError(
                f"rewriter.engine=openai with no base_url calls api.openai.com and needs a key in ${api_key_env}; "
                f"export {api_key_env}=..., or set rewriter.base_url to a local server"
            )
        # Local servers ignore the key, but the client refuses to start without one.
        self._key = key or "EMPTY"
        self.base_url = _safe_url(base_url) if base_url else OPENAI_URL
        self.api_key_env = api_key_env
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.name = engine_label(model, self.base_url)
        self.kind = "openai"
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        # Servers that honour max_tokens never get near this; one that ignores it (or loops) is malformed.
        self.max_reply_chars = max_reply_chars or max(2000, 16 * max_tokens)
        self.breaker = breaker_for(self.base_url, breaker_failures, breaker_cooldown)
        self.outcomes: Counter = Counter()
        self._sleep = sleep
        # Our own retry loop counts every attempt; the client's hidden retries would not be counted.
        self.client = openai.OpenAI(base_url=base_url or OPENAI_URL, api_key=self._key, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:  # the default repr would show the client, and with it the key
        return f"OpenAIEngine({self.name!r})"

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text

    def describe_failure(self, e: Exception) -> str:
        import openai

        if isinstance(e, openai.APITimeoutError):
            return f"timed out after {self.timeout:g} s"
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return one_line(self.scrub(f"connection failed: {type(cause).__name__}: {cause}"))
        if isinstance(e, openai.APIStatusError):
            return one_line(self.scrub(f"HTTP {e.status_code}: {e.message}"))
        return one_line(self.scrub(f"{type(e).__name__}: {e}"))

    def identity(self) -> dict:
        """What a cache key needs to know about this engine (no credentials)."""
        return {"kind": "openai", "model": self.model, "base_url": self.base_url}

    def request_params(self, params: dict) -> dict:
        """The sampling parameters a call with these keywords sends."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens,
                **{k: v for k, v in params.items() if k not in CONTROL_PARAMS}}

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _classify(self, e: Exception) -> tuple[str, bool, float | None]:
        """(outcome, retryable, seconds the server asked us to wait)."""
        import openai

        if isinstance(e, openai.APITimeoutError):
            return "timeout", True, None
        if isinstance(e, openai.APIConnectionError):
            return "connection_error", True, None
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            if status == 429:
                return "rate_limited", True, _retry_after(e)
            if status >= 500 or status == 408:
                return "server_error", True, _retry_after(e)
            return "client_error", False, None  # 400/401/403/404: asking again will not help
        return "malformed", True, None  # e.g. a body that is not a chat completion

    def _delay(self, attempt: int, asked: float | None) -> float:
        backoff = min(self.backoff_max, self.backoff_base * (2 ** attempt)) * random.uniform(0.5, 1.0)
        return backoff if asked is None else max(asked, backoff)

    def _read(self, reply, messages: list[dict], expect: str | None) -> tuple[str, str | None]:
        """The reply's text (usage recorded: a malformed reply is still paid for) and what is wrong with it."""
        choices = getattr(reply, "choices", None)
        text = ((choices[0].message.content or "") if choices else "") if isinstance(choices, list) else ""
        usage = getattr(reply, "usage", None)
        if usage is not None:
            self.record_usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        else:
            # Some servers omit usage; ~4 characters a token keeps the budget roughly right.
            sent = sum(len(str(m.get("content", ""))) for m in messages)
            self.record_usage(sent // 4, len(text) // 4)
        if not text.strip():
            return text, "malformed reply: empty"
        if len(text) > self.max_reply_chars:
            return text, f"malformed reply: over-long ({len(text)} chars, limit {self.max_reply_chars})"
        if expect and expect not in text:
            return text, f"malformed reply: no {expect}"
        return text, None

    def generate(self, prompt: str | list[dict], system: str | None = None, **params) -> str:
        import openai

        expect = params.get("expect")
        request = self.request_params(params)
        messages = to_messages(prompt, system)
        last = ""
        attempts = self.max_retries + 1
        send, kind, malformed = (messages, request), "other", 0
        for attempt in range(attempts):
            if not self.breaker.allow():
                self._count("circuit_open")
                cause = last or self.breaker.last_failure
                raise EngineError(
                    f"{self.name}: {cause or 'failing'}; circuit open after {self.breaker.threshold} consecutive "
                    f"failures, not calling for {self.breaker.remaining():.0f} s", kind="circuit-open")
            asked = None
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=send[0], **send[1])
            except openai.OpenAIError as e:
                outcome, retryable, asked = self._classify(e)
                self._count(outcome)
                last, kind = self.describe_failure(e), _KIND[outcome]
                if not retryable:
                    self.breaker.success()  # the endpoint answered; the request was wrong, and would be again
                    raise EngineError(f"{self.name}: {last}", kind=kind, repeats=outcome == "client_error") from None
                self.breaker.failure(last)
                if asked is not None and asked > self.retry_after_max:
                    self._count("gave_up")
                    raise EngineError(
                        f"{self.name}: {last}; the server asks to wait {asked:.0f} s, over retry_after_max="
                        f"{self.retry_after_max:g}", kind=kind) from None
            else:
                text, problem = self._read(reply, send[0], expect)
                if problem is None:
                    self.breaker.success()
                    self._count("ok")
                    return text
                # The endpoint works; the reply is wrong. Do not trip the breaker over it, and do not ask the same
                # question again: a greedy server would give the same wrong reply.
                self.breaker.success()
                self._count("malformed")
                last, kind, malformed = problem, "malformed", malformed + 1
                send = self._changed(messages, request, problem, expect, malformed)
            if attempt + 1 < attempts:
                self._count("retries")
                self._sleep(self._delay(attempt, asked))
        self._count("gave_up")
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        # A malformed reply to a deterministic request would come back on a rerun: the cache remembers it.
        repeats = kind == "malformed" and float(request.get("temperature") or 0) == 0
        raise EngineError(f"{self.name}: {last}{tries}", kind=kind, repeats=repeats)

    def _changed(self, messages: list[dict], request: dict, problem: str, expect: str | None, n: int) -> tuple[list[dict], dict]:
        """The request of the n-th retry after a malformed reply: a reminder, then a higher temperature too."""
        self._count("retries_changed")
        changed = with_reminder(messages, reminder(problem, expect, self.max_reply_chars))
        if n < 2:
            return changed, request
        temperature = float(request.get("temperature") or 0) + RETRY_TEMPERATURE_STEP * (n - 1)
        return changed, {**request, "temperature": round(min(temperature, 2.0), 2)}


def probe(engine, timeout: float = 5.0) -> None:
    """Fail early, with one line, when an HTTP engine cannot be reached. Local engines need no probe."""
    if not isinstance(engine, OpenAIEngine):
        return
    import openai

    client = engine.client.with_options(timeout=timeout, max_retries=0)
    where = engine.base_url

    def unreachable(e: Exception) -> UserError:
        return UserError(
            f"rewriter endpoint {where} is unreachable ({engine.describe_failure(e)}); start the server or fix rewriter.base_url"
        )

    try:
        client.models.list()
        return
    except openai.APIStatusError as e:
        if e.status_code in (401, 403):
            raise UserError(
                f"rewriter endpoint {where} refused the API key (HTTP {e.status_code}); "
                f"check ${engine.api_key_env} or rewriter.api_key_env"
            ) from None
        # Some servers do not list models; the server answered, so try the call we actually need.
    except openai.OpenAIError as e:
        raise unreachable(e) from None
    try:
        client.chat.completions.create(model=engine.model, messages=[{"role": "user", "content": "ok"}], max_tokens=1)
    except openai.APIStatusError as e:
        raise UserError(
            f"rewriter endpoint {where} refused a chat request ({engine.describe_failure(e)}); check rewriter.base_url "
            f"(OpenAI-compatible servers usually end in /v1) and rewriter.model={engine.model}"
        ) from None
    except openai.OpenAIError as e:
        raise unreachable(e) from None


