"""Engines the rewriter calls: any OpenAI-compatible HTTP endpoint, or a transformers model in this process.

The contract is small on purpose: `name` (safe to log: never holds a key), one method
`generate(prompt_or_messages, system=None, **params) -> str`, and the counters `calls`, `prompt_tokens`,
`completion_tokens`. `as_textgrad` adapts any such engine to textgrad's `EngineLM` without textgrad's disk cache.
"""

from __future__ import annotations

import os
import threading
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
        here = self.usage_here()
        self._local.usage = (here[0] + 1, here[1] + prompt_tokens + completion_tokens)

    def usage_here(self) -> tuple[int, int]:
        """(calls, tokens) made by the current thread."""
        return getattr(self._local, "usage", (0, 0))


def usage_of(engine) -> tuple[int, int]:
    """(calls, tokens) to difference around a rewrite; engines written elsewhere may only have the totals."""
    if hasattr(engine, "usage_here"):
        return engine.usage_here()
    return engine.calls, engine.prompt_tokens + engine.completion_tokens


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
        self._client = openai.OpenAI(
            base_url=base_url or OPENAI_URL, api_key=self._key, timeout=timeout, max_retries=max_retries
        )

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

    def generate(self, prompt: str | list[dict], system: str | None = None, **params) -> str:
        import openai

        request = {"temperature": self.temperature, "max_tokens": self.max_tokens, **params}
        messages = _messages(prompt, system)
        try:
            reply = self._client.chat.completions.create(model=self.model, messages=messages, **request)
        except openai.OpenAIError as e:
            raise EngineError(f"{self.name}: {self._failure(e)}") from None
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        usage = reply.usage
        if usage is not None:
            self._record(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        else:
            # Some servers omit usage; ~4 characters a token keeps the budget roughly right.
            sent = sum(len(str(m.get("content", ""))) for m in messages)
            self._record(sent // 4, len(text) // 4)
        return text


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

    def __repr__(self) -> str:
        return f"LocalEngine({self.name!r})"

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
        return tok.decode(new_ids, skip_special_tokens=True).strip()


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


@cache
def _engine_lm_class():
    tg = import_textgrad()

    class TextgradEngine(tg.EngineLM):
        """Any engine as a textgrad EngineLM; no disk cache, so a rewrite always reflects the current prompt."""

        def __init__(self, engine):
            self.engine = engine
            self.model_string = engine.name

        def generate(self, content, system_prompt=None, **kwargs):
            return self.engine.generate(_flatten(content), system=system_prompt, **kwargs)

        def __call__(self, content, system_prompt=None, **kwargs):
            return self.generate(content, system_prompt=system_prompt, **kwargs)

    return TextgradEngine


def as_textgrad(engine):
    """Wrap an engine as a textgrad EngineLM."""
    return _engine_lm_class()(engine)
