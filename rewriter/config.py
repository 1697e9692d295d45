"""Settings of the symbolic branch: strategy, engine, reliability, cache, budget, meaning guard (the `rewriter`
section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nslora.core import plugins
from nslora.core.options import option, require


@dataclass
class RewriterConfig:
    strategy: str = option("direct", "textgrad: a TGD step with the gold answer in the loss (capable engines); direct: one rewrite call (small local models); rules: deterministic task-aware layouts, no LLM; or your own Strategy class as 'package.module:ClassName'.")
    strategy_params: dict[str, Any] = option({}, "Keyword arguments passed to the strategy class's __init__.")
    engine: str = option("local", "openai: any OpenAI-compatible endpoint; local: an in-process transformers model; or your own engine class or factory as 'package.module:Name'.")
    engine_params: dict[str, Any] = option({}, "Keyword arguments passed to your own engine's class or factory (built-in engines take the keys below). Put secrets in environment variables, never here.")
    base_url: str | None = option(None, "Endpoint of an OpenAI-compatible server (None: api.openai.com).")
    model: str = option("gpt-4o", "Model name sent to the endpoint (openai engine); also the key of its price.")
    api_key_env: str = option("OPENAI_API_KEY", "Name of the environment variable that holds the API key (the key itself never enters a file).")
    local_model: str | None = option(None, "Model for the local engine (default: the model being trained, without its adapter).")
    optimize_system: bool = option(False, "Also rewrite the system prompt P (per sample) together with the question.")
    temperature: float = option(0.0, "Sampling temperature of rewrite calls.")
    max_tokens: int = option(256, "Longest reply of a rewrite call.")
    timeout: float = option(60.0, "Seconds before one HTTP call is abandoned.")
    max_retries: int = option(2, "Retries of a failed call (timeouts, 429, 5xx, connection errors, malformed replies).")
    backoff_base: float = option(0.5, "First retry waits about this many seconds (x0.5-1 jitter), doubling each retry.")
    backoff_max: float = option(20.0, "Longest wait between two retries, in seconds.")
    retry_after_max: float = option(60.0, "Longest Retry-After a 429/503 may ask for; a longer one fails the call at once.")
    breaker_failures: int = option(5, "Consecutive failed attempts on one endpoint that open its circuit breaker.")
    breaker_cooldown: float = option(30.0, "Seconds an open breaker fails calls fast before letting one trial call through.")
    max_reply_chars: int | None = option(None, "Longer replies are malformed and retried (default: max(2000, 16 x max_tokens)).")
    concurrency: int = option(8, "Rewrites of one routing round run side by side (one sample's TextGrad steps stay in order).")
    cache: bool = option(True, "Keep every engine reply in a persistent SQLite cache, so a rerun pays nothing twice.")
    retry_failures: bool = option(False, "Send again requests that failed before in a way that would repeat (a malformed reply to a deterministic request, a 4xx refusal); by default the reply cache remembers them and a rerun skips them without a call.")
    cache_path: str | None = option(None, "Reply cache file (default: <run.out_dir>/rewrite-cache.sqlite, shared by the runs there).")
    max_calls: int | None = option(None, "Budget: most engine calls of the run (None: no limit); then the remaining symbolic samples stay numerical.")
    max_total_tokens: int | None = option(None, "Budget: most prompt + completion tokens of the run (None: no limit).")
    max_cost: float | None = option(None, "Budget: most estimated cost of the run in USD (None: no limit).")
    prices: dict[str, list[float]] = option({"gpt-4o": [2.5, 10.0], "gpt-4o-mini": [0.15, 0.6]}, "USD per 1M tokens, model: [prompt, completion]; local engines cost 0.")
    guard: bool = option(True, "Check that every rewrite kept the question's meaning and does not reveal the answer.")
    guard_similarity: bool = option(True, "Also require embedding similarity (all-MiniLM-L6-v2, offline) between original and rewrite.")
    guard_min_similarity: float = option(0.80, "Lowest cosine similarity of original and rewrite (faithful rewrites measured 0.89-0.99).")
    guard_min_length_ratio: float = option(0.5, "Shortest rewrite as a share of the original's length (less 50 chars of slack).")
    guard_max_length_ratio: float = option(3.0, "Longest rewrite as a multiple of the original's length (plus 200 chars of slack).")
    batch: Literal["off", "api", "replay"] = option("off", "Send a round's direct rewrites as one OpenAI Batch API job (api: servers with /v1/batches; replay: the same JSONL sent line by line, for llama.cpp / Ollama). Off: live concurrent calls.")
    batch_poll_seconds: float = option(30.0, "Seconds between polls of a submitted batch.")
    batch_timeout: float = option(86400.0, "Seconds to wait for a batch before cancelling it (its samples stay numerical).")
    answer_check: bool = option(False, "After the guard accepts a rewrite, the rewriting engine answers the new question (under the sample's system prompt) and the rewrite is kept only if the task's scorer finds that answer right: one more call per accepted rewrite; with the rules strategy this builds the engine too.")
    revert_after: int = option(2, "A rewritten sample whose loss fell below its loss at the rewrite in none of this many epochs after it goes back to its previous prompt, judged once when they have passed (one noisy epoch does not undo a rewrite that helped); 0: never.")

    def __post_init__(self):
        from rewriter.engines import ENGINES, engine_kind
        from rewriter.strategies import STRATEGIES

        plugins.check_name("rewriter.strategy", self.strategy, STRATEGIES)
        plugins.check_name("rewriter.engine", self.engine, ENGINES)
        require(self.timeout > 0, f"rewriter.timeout={self.timeout!r} must be > 0")
        require(self.max_tokens >= 8, f"rewriter.max_tokens={self.max_tokens!r} must be >= 8")
        require(self.max_retries >= 0, f"rewriter.max_retries={self.max_retries!r} must be >= 0")
        require(self.concurrency >= 1, f"rewriter.concurrency={self.concurrency!r} must be >= 1")
        require(self.breaker_failures >= 1, f"rewriter.breaker_failures={self.breaker_failures!r} must be >= 1")
        require(self.revert_after >= 0, f"rewriter.revert_after={self.revert_after!r} must be >= 0 (0 turns reverting off)")
        require(self.batch == "off" or engine_kind(self.engine).batch_api,
                f"rewriter.batch={self.batch!r} needs rewriter.engine=openai; set rewriter.batch=off otherwise")
        require(not self.answer_check or self.batch == "off",
                f"rewriter.answer_check=true needs live calls; set rewriter.batch=off (or answer_check=false)")
        for name in ("max_calls", "max_total_tokens", "max_cost"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"rewriter.{name}={value!r} must be >= 0, or null for no limit")
        require(-1.0 <= self.guard_min_similarity <= 1.0, f"rewriter.guard_min_similarity={self.guard_min_similarity!r} must be in [-1, 1]")
        require(0 <= self.guard_min_length_ratio < self.guard_max_length_ratio,
               f"rewriter.guard_min_length_ratio={self.guard_min_length_ratio!r} must be >= 0 and below guard_max_length_ratio={self.guard_max_length_ratio!r}")
        for model, price in self.prices.items():
            require(isinstance(price, list) and len(price) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in price),
                   f"rewriter.prices.{model}={price!r} must be [prompt, completion] USD per 1M tokens, e.g. [2.5, 10]")
