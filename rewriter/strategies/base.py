"""What every rewrite strategy takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rewriter import guard
from rewriter.engines import cache_hits_of, usage_detail_of

# skipped: not attempted (budget exhausted before the rewrite started); the sample stays numerical.
Verdict = Literal["accepted", "rejected", "error", "skipped"]


@dataclass
class RewriteResult:
    new_question: str | None
    new_system: str | None
    calls: int
    tokens: int
    verdict: Verdict
    reason: str
    candidate: str | None = None  # what the engine proposed, kept for inspection even when the guard rejected it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0  # engine calls answered by the reply cache (not in `calls`)
    scores: dict[str, Any] = field(default_factory=dict)  # the meaning guard's measurements of the candidate
    seconds: float = 0.0  # wall time of this rewrite (set by rewriter.pool)


@dataclass
class RewriteContext:
    engine: Any  # rewriter.engines contract: name, generate(), counters
    system: str  # the current system prompt P
    question: str  # the current question Q (perhaps already rewritten before)
    gold: str
    student_answer: str  # what the trained model answers now; computed by the caller, never regenerated here
    optimize_system: bool = False
    guard: Any = None  # rewriter.guard.GuardConfig; None: the defaults (embedding similarity on)
    task: str | None = None  # "babi", "gsm8k", "clinifact": for task-aware strategies (rules); None: guessed


class Meter:
    """Calls, tokens and cache hits spent between construction and `spent()`, on the engine in this thread."""

    def __init__(self, engine):
        self.engine = engine
        self.start = self._now()

    def _now(self) -> tuple[int, int, int, int]:
        if self.engine is None:
            return 0, 0, 0, 0
        return (*usage_detail_of(self.engine), cache_hits_of(self.engine))

    def detail(self) -> tuple[int, int, int, int]:
        """(calls, prompt tokens, completion tokens, cache hits)."""
        now = self._now()
        return tuple(b - a for a, b in zip(self.start, now))  # type: ignore[return-value]

    def spent(self) -> tuple[int, int]:
        calls, prompt, completion, _ = self.detail()
        return calls, prompt + completion

    def result(self, new_question, new_system, verdict, reason, **kw) -> "RewriteResult":
        calls, prompt, completion, hits = self.detail()
        return RewriteResult(new_question, new_system, calls, prompt + completion, verdict, reason,
                             prompt_tokens=prompt, completion_tokens=completion, cache_hits=hits, **kw)


def failure_reason(e: BaseException) -> str:
    """One line for the run store; engine errors already come without secrets."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}"


def judge(ctx: RewriteContext, meter: Meter, new_question: str | None, new_system: str | None) -> RewriteResult:
    """Run the guard on what a strategy produced and package the result (with the guard's scores)."""
    scores: dict[str, Any] = {}
    if new_question is not None:
        verdict = guard.assess(ctx.question, new_question, ctx.gold, ctx.guard)
        scores = verdict.scores
        if not verdict.accepted:
            return meter.result(None, None, "rejected", verdict.reason, candidate=new_question, scores=scores)
    reason = "ok"
    if new_system is not None:
        ok, why = guard.check_system(ctx.system, new_system)
        if not ok and new_question is None:
            return meter.result(None, None, "rejected", why, candidate=new_system, scores=scores)
        if not ok:
            # A good question rewrite is worth keeping even when the shared prompt's rewrite is not.
            new_system, reason = None, f"ok; system prompt rejected: {why}"
    return meter.result(new_question, new_system, "accepted", reason, scores=scores)


def error(meter: Meter, e: BaseException | str) -> RewriteResult:
    reason = e if isinstance(e, str) else failure_reason(e)
    return meter.result(None, None, "error", reason)
