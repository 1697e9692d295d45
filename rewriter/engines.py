"""Engines the rewriter calls: any OpenAI-compatible HTTP endpoint, or a transformers model in this process.

The contract is small on purpose: `name` (safe to log: never holds a key), one method
`generate(prompt_or_messages, system=None, **params) -> str`, and the counters `calls`, `prompt_tokens`,
`completion_tokens`. `as_textgrad` adapts any such engine to textgrad's `EngineLM` without textgrad's disk cache.

Control keyword (not sent, not part of a cache key): `expect="<TAG>"`: a reply without that text is malformed
(textgrad's update replies must carry `<IMPROVED_VARIABLE>`); the HTTP engine retries it like a fault.

OpenAIEngine does its own retries (the openai client runs with max_retries=0, so counts are exact): timeouts,
429 (honouring Retry-After), 5xx, connection errors and malformed replies (empty, over-long, missing the
expected tag) are retried up to `max_retries` times with exponential backoff and jitter; a circuit breaker per
endpoint (shared by every engine on that base_url) fails calls fast after `breaker_failures` consecutive
failed attempts, for `breaker_cooldown` seconds, then lets one trial call through. `outcomes` counts every
attempt's outcome.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections import Counter
from contextlib import nullcontext
from functools import cache
from urllib.parse import urlsplit, urlunsplit

from router.errors import UserError

OPENAI_URL = "https://api.openai.com/v1"


class EngineError(RuntimeError):
    """One generate call failed (HTTP error, timeout, refused request). The message is one line, without secrets."""


class _Usage:
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

    def _record(self, prompt_tokens: int, completion_tokens: int) -> None:
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


def usage_of(engine) -> tuple[int, int]:
    """(calls, tokens) to difference around a rewrite; engines written elsewhere may only have the totals."""
    if hasattr(engine, "usage_here"):
        return engine.usage_here()
    return engine.calls, engine.prompt_tokens + engine.completion_tokens


def usage_detail_of(engine) -> tuple[int, int, int]:
    """(calls, prompt tokens, completion tokens), per thread where the engine can tell."""
    if hasattr(engine, "usage_detail_here"):
        return engine.usage_detail_here()
    if hasattr(engine, "usage_here"):
        calls, tokens = engine.usage_here()
        return calls, tokens, 0
    return engine.calls, engine.prompt_tokens, engine.completion_tokens


def cache_hits_of(engine) -> int:
    """Cache hits of the current thread (0 for an engine without a cache)."""
    return engine.hits_here() if hasattr(engine, "hits_here") else 0


CONTROL_PARAMS = ("expect",)  # keywords that steer an engine but are never sent nor part of a cache key


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

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
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


def _messages(prompt: str | list[dict], system: str | None) -> list[dict]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
    if system is not None and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _safe_url(url: str) -> str:
    """The URL without user:password or query string, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OpenAIEngine(_Usage):
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
        self.name = f"openai:{model}@{self.base_url}"
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
        self._client = openai.OpenAI(base_url=base_url or OPENAI_URL, api_key=self._key, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:  # the default repr would show the client, and with it the key
        return f"OpenAIEngine({self.name!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text

    def _failure(self, e: Exception) -> str:
        import openai

        if isinstance(e, openai.APITimeoutError):
            return f"timed out after {self.timeout:g} s"
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return _one_line(self._scrub(f"connection failed: {type(cause).__name__}: {cause}"))
        if isinstance(e, openai.APIStatusError):
            return _one_line(self._scrub(f"HTTP {e.status_code}: {e.message}"))
        return _one_line(self._scrub(f"{type(e).__name__}: {e}"))

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
            self._record(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        else:
            # Some servers omit usage; ~4 characters a token keeps the budget roughly right.
            sent = sum(len(str(m.get("content", ""))) for m in messages)
            self._record(sent // 4, len(text) // 4)
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
        messages = _messages(prompt, system)
        last = ""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if not self.breaker.allow():
                self._count("circuit_open")
                why = f"; last failure: {last}" if last else ""
                raise EngineError(
                    f"{self.name}: circuit open after {self.breaker.threshold} consecutive failures, not calling "
                    f"for {self.breaker.remaining():.0f} s{why}"
                )
            asked = None
            try:
                reply = self._client.chat.completions.create(model=self.model, messages=messages, **request)
            except openai.OpenAIError as e:
                outcome, retryable, asked = self._classify(e)
                self._count(outcome)
                last = self._failure(e)
                if not retryable:
                    self.breaker.success()  # the endpoint answered; the request was wrong
                    raise EngineError(f"{self.name}: {last}") from None
                self.breaker.failure()
                if asked is not None and asked > self.retry_after_max:
                    self._count("gave_up")
                    raise EngineError(
                        f"{self.name}: {last}; the server asks to wait {asked:.0f} s, over retry_after_max="
                        f"{self.retry_after_max:g}"
                    ) from None
            else:
                text, problem = self._read(reply, messages, expect)
                if problem is None:
                    self.breaker.success()
                    self._count("ok")
                    return text
                # The endpoint works; the reply is wrong. Retry, but do not trip the breaker over it.
                self.breaker.success()
                self._count("malformed")
                last = problem
            if attempt + 1 < attempts:
                self._count("retries")
                self._sleep(self._delay(attempt, asked))
        self._count("gave_up")
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        raise EngineError(f"{self.name}: {last}{tries}")


class LocalEngine(_Usage):
    """Greedy generation with an in-process transformers model (by default the model being trained)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.name = f"local:{os.path.basename(str(source).rstrip('/')) or source}"
        # One model, one forward at a time: Send branches may call from several threads.
        self._generate_lock = threading.Lock()
        self.kind = "local"

    def __repr__(self) -> str:
        return f"LocalEngine({self.name!r})"

    def identity(self) -> dict:
        return {"kind": "local", "model": self.name, "base_url": None}

    def request_params(self, params: dict) -> dict:
        max_new = int(params.get("max_tokens") or params.get("max_new_tokens") or self.max_new_tokens)
        return {"max_tokens": max_new, "do_sample": False}

    def _render(self, messages: list[dict]) -> tuple[str, bool]:
        """The prompt text, and whether the tokenizer should add its own special tokens."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        # Base models have no template; a plain transcript still reads as a conversation.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", True

    def generate(self, prompt: str | list[dict], system: str | None = None, **params) -> str:
        import torch

        text, special = self._render(_messages(prompt, system))
        max_new = int(params.get("max_tokens") or params.get("max_new_tokens") or self.max_new_tokens)
        tok = self.tokenizer
        with self._generate_lock:
            enc = tok(text, return_tensors="pt", add_special_tokens=special).to(self.model.device)
            was_training = self.model.training
            # A PeftModel would otherwise rewrite with the adapter being trained; the base model is the rewriter.
            no_adapter = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
            self.model.eval()
            try:
                with torch.no_grad(), no_adapter:
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=max_new,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                    )
            finally:
                self.model.train(was_training)
        n_in = enc["input_ids"].shape[1]
        new_ids = out[0, n_in:]
        self._record(int(n_in), int(new_ids.shape[0]))
        text = tok.decode(new_ids, skip_special_tokens=True).strip()
        expect = params.get("expect")
        if expect and expect not in text:
            raise EngineError(f"{self.name}: malformed reply: no {expect}")
        return text


def build_engine(cfg, local_model=None, local_tokenizer=None):
    """The engine a RewriterConfig names. `local_model`/`local_tokenizer`: an already loaded model to reuse."""
    if cfg.engine == "openai":
        return OpenAIEngine(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key_env=cfg.api_key_env,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            **retry_settings(cfg),
        )
    if local_model is None:
        if not cfg.local_model:
            raise UserError(
                "rewriter.engine=local needs a model: set rewriter.local_model to a model folder or hub id, "
                "or pass the loaded model to build_engine"
            )
        from adapters.model import load_model

        local_model, local_tokenizer, _ = load_model(cfg.local_model)
    if local_tokenizer is None:
        raise UserError("rewriter.engine=local: a local model was given without its tokenizer; pass both")
    return LocalEngine(local_model, local_tokenizer, max_new_tokens=cfg.max_tokens)


def retry_settings(cfg) -> dict:
    """The retry and breaker keywords of OpenAIEngine that a RewriterConfig sets (fields it lacks keep defaults)."""
    names = ("backoff_base", "backoff_max", "retry_after_max", "breaker_failures", "breaker_cooldown", "max_reply_chars")
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}


def probe(engine, timeout: float = 5.0) -> None:
    """Fail early, with one line, when an HTTP engine cannot be reached. Local engines need no probe."""
    if not isinstance(engine, OpenAIEngine):
        return
    import openai

    client = engine._client.with_options(timeout=timeout, max_retries=0)
    where = engine.base_url

    def unreachable(e: Exception) -> UserError:
        return UserError(
            f"rewriter endpoint {where} is unreachable ({engine._failure(e)}); start the server or fix rewriter.base_url"
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
            f"rewriter endpoint {where} refused a chat request ({engine._failure(e)}); check rewriter.base_url "
            f"(OpenAI-compatible servers usually end in /v1) and rewriter.model={engine.model}"
        ) from None
    except openai.OpenAIError as e:
        raise unreachable(e) from None


def import_textgrad():
    """Import textgrad with safe defaults: it writes a log file where TEXTGRAD_LOG_DIR points at import time
    (./logs/ otherwise), and litellm, which it imports, fetches a price list from the network unless told not to."""
    if "TEXTGRAD_LOG_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["TEXTGRAD_LOG_DIR"] = os.path.join(base, "ns-lora", "textgrad-logs")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import textgrad

    return textgrad


def _flatten(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, str) for part in content):
        return "\n".join(content)
    raise EngineError("textgrad sent multimodal content; the rewriter engines take text only")


TG_TAG = "<IMPROVED_VARIABLE>"


@cache
def _engine_lm_class():
    tg = import_textgrad()

    class TextgradEngine(tg.EngineLM):
        """Any engine as a textgrad EngineLM; no disk cache, so a rewrite always reflects the current prompt."""

        def __init__(self, engine):
            self.engine = engine
            self.model_string = engine.name

        def generate(self, content, system_prompt=None, **kwargs):
            text = _flatten(content)
            if TG_TAG in text or TG_TAG in (system_prompt or ""):
                # textgrad's update parses the reply between these tags: a reply without them is malformed.
                kwargs.setdefault("expect", TG_TAG)
            return self.engine.generate(text, system=system_prompt, **kwargs)

        def __call__(self, content, system_prompt=None, **kwargs):
            return self.generate(content, system_prompt=system_prompt, **kwargs)

    return TextgradEngine


def as_textgrad(engine):
    """Wrap an engine as a textgrad EngineLM."""
    return _engine_lm_class()(engine)
