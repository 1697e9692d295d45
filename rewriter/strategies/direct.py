"""The direct strategy: one call asking the engine to restate the question. For small local models that cannot
keep textgrad's <IMPROVED_VARIABLE> tags."""

from __future__ import annotations

import re

from rewriter.strategies.base import Meter, RewriteContext, RewriteResult, Strategy, error, judge

SYSTEM = (
    "You rewrite questions so that a small language model answers them correctly. Keep every fact, number "
    "and name exactly as given, add no new facts, and do not answer the question. Reply with the rewritten "
    "question only."
)


def _verdict(student_correct: bool | None, loss: float | None) -> str:
    """What the rewriter is told about the answer: the truth, so a right answer is never called wrong."""
    if student_correct:
        unsure = f" (its loss on the answer is still {loss:.2f})" if loss is not None else ""
        return ("That answer is right, but the model has not learned it yet: it is not confident of it" + unsure + ". "
                "Rewrite the question so that what is asked, and where the answer is found, is easier to see")
    return "That answer is wrong. Rewrite the question so that its wording makes clearer what is asked"


def _prompt(question: str, student_answer: str, student_correct: bool | None = None, loss: float | None = None) -> str:
    # The gold answer is left out on purpose: small models told the answer tend to write it into the question,
    # and the guard would then reject the rewrite, wasting the call. The answer alone shows what misled.
    return (
        "A small language model was asked this question:\n"
        f"<QUESTION>\n{question}\n</QUESTION>\n"
        f"It answered: {student_answer.strip() or '(nothing)'}\n"
        f"{_verdict(student_correct, loss)}, keeping every fact, number and name. Do not answer it. Reply with the "
        "rewritten question only."
    )


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)
_LABEL = re.compile(r"^(?:\*\*)?(?:(?:rewritten|revised|improved|new)\s+)?question(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)
_TAGS = re.compile(r"</?QUESTION>", re.I)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


def clean(reply: str) -> str:
    """The question inside a reply that may come fenced, labelled, tagged or quoted."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _TAGS.sub("", text).strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


class DirectStrategy(Strategy):
    """Rewrites the question only, in one call; a joint system-prompt update is TextGrad's (`update_system`)."""

    name = "direct"
    system_method = "textgrad"

    def request(self, ctx: RewriteContext) -> tuple[str, str]:
        """(prompt, system) of the one call: the same on the live and the Batch API paths."""
        return _prompt(ctx.question, ctx.student_answer, ctx.student_correct, ctx.loss), SYSTEM

    def parse(self, reply: str) -> str:
        return clean(reply)

    def rewrite(self, sample, ctx: RewriteContext) -> RewriteResult:
        meter = Meter(ctx.engine)
        prompt, system = self.request(ctx)
        try:
            reply = ctx.engine.generate(prompt, system=system)
        except Exception as e:  # HTTP errors, timeouts, a local model running out of memory: report, do not stop
            return error(meter, e)
        if not reply or not reply.strip():
            return error(meter, "empty reply from the rewriter engine", kind="malformed")
        return judge(ctx, meter, self.parse(reply), None)

    def update_system(self, examples, ctx: RewriteContext) -> RewriteResult:
        # One call cannot carry a critique of several examples; TextGrad's minibatch step does that well.
        from rewriter.strategies.textgrad import optimize_system_prompt

        return optimize_system_prompt(ctx.system, examples, ctx.engine)
