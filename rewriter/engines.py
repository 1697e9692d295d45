"""The engines the rewriter can call, by config name: `openai` (any OpenAI-compatible endpoint, rewriter/http.py),
`local` (a transformers model in this process, rewriter/local.py), or your own as `package.module:Name`.

    engine = build_engine(cfg.rewriter)                    # a RewriterConfig
    engine = build_engine(cfg.rewriter, local_model=m, local_tokenizer=t)

The contract every engine keeps is in rewriter/engine.py (`Engine`, `check_engine`). `as_textgrad` adapts any
engine to textgrad's `EngineLM` without textgrad's disk cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Callable

from nslora.core import plugins
from nslora.core.errors import UserError
from rewriter.engine import CONTROL_PARAMS, Engine, EngineError, UsageCounter, check_engine, one_line, to_messages
from rewriter.http import OPENAI_URL, CircuitBreaker, OpenAIEngine, breaker_for, probe, reset_breakers
from rewriter.local import LocalEngine

def _openai(cfg, local_model=None, local_tokenizer=None):
    return OpenAIEngine(base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env, temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens, timeout=cfg.timeout, max_retries=cfg.max_retries, **retry_settings(cfg))


def _local(cfg, local_model=None, local_tokenizer=None):
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


@dataclass(frozen=True)
class EngineKind:
    """A built-in engine: how it is built from a RewriterConfig and what it is. Callers ask these flags, never the
    engine's name, so a new built-in engine is one entry here."""

    build: Callable[..., Engine]
    in_process: bool  # a model in this process: the run hands it the loaded model (the trained one by default)
    endpoint: bool  # calls an endpoint: probed before the run starts, priced by the dry run
    batch_api: bool  # can send a round's one-call rewrites through a Batch API (rewriter.batch=api)
    priced: bool  # its calls cost money at rewriter.prices (the dry run's estimate)
    help: str


# Built-in engines by config name; any other name is yours (package.module:Name), treated as an endpoint.
ENGINES: dict[str, EngineKind] = {
    "openai": EngineKind(_openai, in_process=False, endpoint=True, batch_api=True, priced=True,
                         help="any OpenAI-compatible endpoint (rewriter/http.py): retries, a circuit breaker, prices"),
    "local": EngineKind(_local, in_process=True, endpoint=False, batch_api=False, priced=False,
                        help="a transformers model in this process (rewriter/local.py): the trained model by default"),
}
YOURS = EngineKind(lambda cfg, **_: None, in_process=False, endpoint=True, batch_api=False, priced=False,
                   help="your own engine")


def engine_kind(name: str) -> EngineKind:
    """The flags of engine `name`; your own engine is called like an endpoint and cannot use the Batch API."""
    return ENGINES.get(name, YOURS)


def build_engine(cfg, local_model=None, local_tokenizer=None):
    """The engine a RewriterConfig names. `local_model`/`local_tokenizer`: an already loaded model to reuse."""
    if cfg.engine not in ENGINES:
        factory = plugins.resolve("rewriter.engine", cfg.engine, {}, "an engine class or factory", accept=callable)
        return plugins.instantiate("rewriter.engine_params", factory, cfg.engine_params)
    return ENGINES[cfg.engine].build(cfg, local_model=local_model, local_tokenizer=local_tokenizer)


def retry_settings(cfg) -> dict:
    """The retry and breaker keywords of OpenAIEngine that a RewriterConfig sets (fields it lacks keep defaults)."""
    names = ("backoff_base", "backoff_max", "retry_after_max", "breaker_failures", "breaker_cooldown", "max_reply_chars")
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}


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


__all__ = ["CONTROL_PARAMS", "ENGINES", "EngineKind", "engine_kind", "OPENAI_URL", "CircuitBreaker", "Engine", "EngineError", "LocalEngine", "OpenAIEngine",
           "UsageCounter", "as_textgrad", "breaker_for", "build_engine", "check_engine", "import_textgrad", "one_line",
           "probe", "reset_breakers", "retry_settings", "to_messages"]
