"""Limits on what the symbolic branch may spend: calls, tokens and estimated cost (USD), and a dry-run estimate.

    budget = Budget(max_calls=500, max_cost=2.0)
    engine = budget.wrap(engine)      # every call is checked before it is made and charged after
    rewrite_many(jobs, "textgrad", budget=budget)   # jobs that start after a limit is reached: verdict "skipped"
    estimate(64, "textgrad", avg_prompt_tokens=120, model="gpt-4o")   # -> {"calls": 256, "tokens": ..., "cost": ...}

A call is refused (BudgetExhausted, an EngineError) once any limit has been reached, so the call limit is never
exceeded; tokens and cost can overshoot by at most the calls already in flight (a reply's size is only known
when it arrives). Prices are USD per 1M tokens, (prompt, completion), looked up by the exact model name, then by
the longest priced name the model starts with followed by "-" ("gpt-4o-2024-08-06" -> "gpt-4o"); local engines
(and any engine not of kind "openai") and unpriced models cost 0 (unpriced models are listed in `unpriced`).
"""

from __future__ import annotations

import threading
from typing import Any

from rewriter.engine import EngineError, engine_kind, usage_detail_of

# USD per 1M tokens (prompt, completion); OpenAI list prices for standard (non-batch) requests.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
}


class BudgetExhausted(EngineError):
    """A limit was reached before this call; nothing was sent."""

    def __init__(self, message: str):
        super().__init__(message, kind="budget")


def price_of(model: str | None, prices: dict[str, Any] | None = None, kind: str = "openai") -> tuple[float, float] | None:
    """(prompt, completion) USD per 1M tokens; (0, 0) for engines not of kind "openai" (local ones, and yours
    unless they declare kind "openai"); None when the model has no price."""
    if kind != "openai":
        return 0.0, 0.0
    table = DEFAULT_PRICES if prices is None else prices
    model = model or ""
    if model in table:
        p = table[model]
    else:
        matches = [name for name in table if model.startswith(name + "-")]
        if not matches:
            return None
        p = table[max(matches, key=len)]
    if isinstance(p, dict):
        return float(p.get("prompt", 0.0)), float(p.get("completion", 0.0))
    return float(p[0]), float(p[1])


def cost_of(model: str | None, prompt_tokens: int, completion_tokens: int, prices=None, kind: str = "openai") -> float:
    p = price_of(model, prices, kind) or (0.0, 0.0)
    return (prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6


class Budget:
    """Thread-safe spending limits; None means no limit."""

    def __init__(self, max_calls: int | None = None, max_tokens: int | None = None, max_cost: float | None = None,
                 prices: dict[str, Any] | None = None):
        for name, value in (("max_calls", max_calls), ("max_tokens", max_tokens), ("max_cost", max_cost)):
            if value is not None and value < 0:
                raise ValueError(f"budget {name}={value!r} must be >= 0 (or None for no limit)")
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.prices = prices
        self._lock = threading.Lock()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.refused = 0  # calls and rewrites refused because a limit was reached
        self.unpriced: set[str] = set()
        self._reserved = 0  # calls admitted but not finished: keeps the call limit exact under concurrency

    def exhausted(self) -> str | None:
        """The reason no further call may be made ("calls 100/100"), or None."""
        with self._lock:
            return self._why(self.calls + self._reserved)

    def _why(self, calls: int) -> str | None:
        if self.max_calls is not None and calls >= self.max_calls:
            return f"calls {calls}/{self.max_calls}"
        tokens = self.prompt_tokens + self.completion_tokens
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"tokens {tokens}/{self.max_tokens}"
        if self.max_cost is not None and self.cost >= self.max_cost:
            return f"cost ${self.cost:.4f}/${self.max_cost:g}"
        return None

    def admit(self) -> None:
        """Reserve one call or raise BudgetExhausted (counted in `refused`)."""
        with self._lock:
            why = self._why(self.calls + self._reserved)
            if why is not None:
                self.refused += 1
                raise BudgetExhausted(f"budget exhausted: {why}")
            self._reserved += 1

    def charge(self, calls: int, prompt_tokens: int, completion_tokens: int, model: str | None = None,
               kind: str = "openai", reserved: int = 0) -> None:
        price = price_of(model, self.prices, kind)
        with self._lock:
            self._reserved -= reserved
            self.calls += calls
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if price is None:
                if calls:
                    self.unpriced.add(str(model))
            else:
                self.cost += (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def refuse(self) -> str | None:
        """For a whole rewrite about to start: the reason it must be skipped (counted in `refused`), or None."""
        with self._lock:
            why = self._why(self.calls + self._reserved)
            if why is not None:
                self.refused += 1
            return why

    def wrap(self, engine) -> "BudgetedEngine":
        return engine if isinstance(engine, BudgetedEngine) and engine.budget is self else BudgetedEngine(engine, self)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                    "tokens": self.prompt_tokens + self.completion_tokens, "cost": round(self.cost, 6),
                    "refused": self.refused, "unpriced": sorted(self.unpriced),
                    "limits": {"max_calls": self.max_calls, "max_tokens": self.max_tokens, "max_cost": self.max_cost}}


class BudgetedEngine:
    """An engine whose every call is admitted by a Budget first and charged to it after (same contract)."""

    def __init__(self, engine, budget: Budget):
        self.engine = engine
        self.budget = budget
        self.name = getattr(engine, "name", type(engine).__name__)
        ident = engine.identity() if hasattr(engine, "identity") else {}
        self._model = ident.get("model", getattr(engine, "model", None))
        self._kind = engine_kind(engine)

    def __repr__(self) -> str:
        return f"BudgetedEngine({self.engine!r})"

    def __getattr__(self, attr):  # counters, usage_here, hits_here, identity, outcomes... of the wrapped engine
        if attr == "engine":
            raise AttributeError(attr)
        return getattr(self.engine, attr)

    def generate(self, prompt, system=None, **params) -> str:
        is_cached = getattr(self.engine, "is_cached", None)
        if is_cached is not None and is_cached(prompt, system, **params):
            return self.engine.generate(prompt, system=system, **params)  # a cache hit is free, even when exhausted
        self.budget.admit()
        before = usage_detail_of(self.engine)
        try:
            return self.engine.generate(prompt, system=system, **params)
        finally:
            after = usage_detail_of(self.engine)  # this thread's calls: a cache hit charges nothing
            calls, p, c = (b - a for a, b in zip(before, after))
            self.budget.charge(calls, p, c, model=self._model, kind=self._kind, reserved=1)


# ------------------------------------------------------------------------------------------------ estimate

# Calibrated on this project's prompts (the fake server, bAbI and GSM8K questions, ~4 characters a token):
# textgrad sends ~2,170 tokens of instructions over its 4 calls plus ~6 copies of the sample (question and
# system prompt); with the system prompt optimised, 6 calls, ~3,535 tokens plus ~8 copies. direct: ~104 + 1 copy.
# Critiques a capable engine writes (~150 tokens each) reappear in later prompts; they are counted in both.
_SHAPE = {
    # strategy, optimize_system: (calls, fixed prompt tokens, copies of the sample, critiques, updates)
    ("textgrad", False): (4, 2170, 6, 3, 1),
    ("textgrad", True): (6, 3535, 8, 4, 2),
    ("direct", False): (1, 104, 1, 0, 1),
    ("direct", True): (1, 104, 1, 0, 1),
    ("rules", False): (0, 0, 0, 0, 0),
    ("rules", True): (0, 0, 0, 0, 0),
}
CRITIQUE_TOKENS = 150


def estimate(n_samples: int, strategy: str, optimize_system: bool = False, avg_prompt_tokens: int = 120,
             model: str | None = "gpt-4o", prices: dict[str, Any] | None = None, kind: str = "openai",
             cache_hit_rate: float = 0.0, answer_check: bool = False) -> dict[str, Any]:
    """Calls, tokens and cost (USD) of rewriting `n_samples` samples, for a dry run (rough: within ~50%).

    `avg_prompt_tokens`: tokens of one sample's system prompt + question. `cache_hit_rate`: share of samples
    already in the reply cache (a resumed run). `answer_check`: one more call per rewrite (an upper bound: only
    accepted rewrites are checked)."""
    try:
        calls, fixed, copies, critiques, updates = _SHAPE[(strategy, bool(optimize_system))]
    except KeyError:
        raise ValueError(f"estimate: unknown strategy {strategy!r}; choose one of textgrad, direct, rules") from None
    n = max(0, round(n_samples * (1.0 - cache_hit_rate)))
    per_prompt = fixed + copies * avg_prompt_tokens + 2 * critiques * CRITIQUE_TOKENS
    per_completion = critiques * CRITIQUE_TOKENS + updates * (avg_prompt_tokens + 20)
    if answer_check:  # the rewritten prompt in, a short answer out
        calls, per_prompt, per_completion = calls + 1, per_prompt + avg_prompt_tokens + 20, per_completion + 16
    prompt_tokens, completion_tokens = n * per_prompt, n * per_completion
    price = price_of(model, prices, kind)
    cost = 0.0 if price is None else (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
    return {"samples": n_samples, "strategy": strategy, "calls": n * calls, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "tokens": prompt_tokens + completion_tokens,
            "cost": round(cost, 4), "priced": price is not None, "model": model}
