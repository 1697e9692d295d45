"""The answer-equivalence check (`rewriter.answer_check`, off by default): a rewrite the meaning guard accepted is
kept only when the rewriting engine, asked the new question under the sample's system prompt, reaches the gold
answer by the task's scorer. It catches what the guard's surface checks cannot: a rewrite that kept every name
and number but changed what the question asks. One more call per accepted rewrite, metered like the rewrite's own.

    strategy = AnswerChecked(strategy, score)     # score(reply, sample) -> bool, the task's (flexible) scorer
"""

from __future__ import annotations

from typing import Any, Callable

from rewriter.engine import failure_kind, one_line
from rewriter.strategies.base import Meter, RewriteResult, Strategy, engine_fault, failure_reason

# An answer needs only a few words; a long reply is the engine explaining itself and costs tokens for nothing.
ANSWER_TOKENS = 64


class AnswerChecked(Strategy):
    """Wraps a strategy: its accepted rewrites must still be answered right by the engine."""

    calls_model = True

    def __init__(self, inner: Strategy, score: Callable[[str, Any], bool]):
        self.inner, self.score = inner, score
        self.name = getattr(inner, "name", "") or type(inner).__name__
        self.system_method = getattr(inner, "system_method", "")

    def rewrite(self, sample, ctx) -> RewriteResult:
        meter = Meter(ctx.engine)  # the whole: the inner strategy's calls and the check's
        res = self.inner.rewrite(sample, ctx)
        if res.verdict != "accepted" or res.new_question is None or ctx.engine is None:
            return res
        system = res.new_system if res.new_system is not None else ctx.system
        try:
            reply = ctx.engine.generate(res.new_question, system=system, max_tokens=ANSWER_TOKENS)
        except Exception as e:  # the check did not happen: keep the sample numerical rather than trust it unchecked
            if not engine_fault(e):
                raise  # a bug, not a failed call: rewriter.pool stops the round with its traceback
            return self._total(meter, res, "error", f"answer check failed: {failure_reason(e)}", keep=False,
                               failure=failure_kind(e))
        res.scores = {**res.scores, "answer_check": one_line(reply, 80)}
        if not self.score(reply, sample):
            why = f"answer check: the engine answered {one_line(reply, 80)!r} to the rewrite; gold {one_line(sample.answer, 40)!r}"
            return self._total(meter, res, "rejected", why, keep=False)
        return self._total(meter, res, "accepted", f"{res.reason}; answer check passed", keep=True)

    @staticmethod
    def _total(meter: Meter, res: RewriteResult, verdict: str, reason: str, keep: bool, **kw) -> RewriteResult:
        return meter.result(res.new_question if keep else None, res.new_system if keep else None, verdict, reason,
                            candidate=res.candidate if keep else res.new_question, scores=res.scores, **kw)

    def update_system(self, examples, ctx) -> RewriteResult:
        return self.inner.update_system(examples, ctx)
