"""What every rewrite strategy takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rewriter import guard
from rewriter.engines import usage_of

Verdict = Literal["accepted", "rejected", "error"]


@dataclass
class RewriteResult:
    new_question: str | None
    new_system: str | None
    calls: int
    tokens: int
    verdict: Verdict
    reason: str
    candidate: str | None = None  # what the engine proposed, kept for inspection even when the guard rejected it


@dataclass
class RewriteContext:
    engine: Any  # rewriter.engines contract: name, generate(), counters
    system: str  # the current system prompt P
    question: str  # the current question Q (perhaps already rewritten before)
    gold: str
    student_answer: str  # what the trained model answers now; computed by the caller, never regenerated here
    optimize_system: bool = False


class Meter:
    """Calls and tokens spent between construction and `spent()`, counted on the engine in this thread."""

    def __init__(self, engine):
        self.engine = engine
        self.start = usage_of(engine)

    def spent(self) -> tuple[int, int]:
        calls, tokens = usage_of(self.engine)
        return calls - self.start[0], tokens - self.start[1]


def failure_reason(e: BaseException) -> str:
    """One line for the run store; engine errors already come without secrets."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}"


def judge(ctx: RewriteContext, meter: Meter, new_question: str | None, new_system: str | None) -> RewriteResult:
    """Run the guard on what a strategy produced and package the result."""
    calls, tokens = meter.spent()
    if new_question is not None:
        ok, reason = guard.check(ctx.question, new_question, ctx.gold)
        if not ok:
            return RewriteResult(None, None, calls, tokens, "rejected", reason, candidate=new_question)
    reason = "ok"
    if new_system is not None:
        ok, why = guard.check_system(ctx.system, new_system)
        if not ok and new_question is None:
            return RewriteResult(None, None, calls, tokens, "rejected", why, candidate=new_system)
        if not ok:
            # A good question rewrite is worth keeping even when the shared prompt's rewrite is not.
            new_system, reason = None, f"ok; system prompt rejected: {why}"
    return RewriteResult(new_question, new_system, calls, tokens, "accepted", reason)


def error(meter: Meter, e: BaseException | str) -> RewriteResult:
    calls, tokens = meter.spent()
    reason = e if isinstance(e, str) else failure_reason(e)
    return RewriteResult(None, None, calls, tokens, "error", reason)
