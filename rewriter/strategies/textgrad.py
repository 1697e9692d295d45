"""The textgrad strategy: one TGD step on the question (and optionally the system prompt), with the gold answer
in the loss.

Graph per question: question (+ system) -> student answer -> TextLoss(answer vs gold). The student answer is
the trained model's real answer, replayed through a stub EngineLM so that textgrad records the question as its
predecessor without running the student again. Calls to the rewriter engine: loss 1, gradient to the answer 1,
gradient to each optimised prompt 1, update of each optimised prompt 1 -> 4 per question, 6 with the system prompt.
"""

from __future__ import annotations

from functools import cache

from rewriter.engine import EngineError, one_line
from rewriter.engines import TG_TAG, as_textgrad, import_textgrad
from rewriter.strategies.base import Meter, RewriteContext, RewriteResult, Strategy, error, judge

# textgrad repeats the role in every prompt it builds, so it is short; the constraints carry the details.
QUESTION_ROLE = "question to a small language model (keep its facts, numbers and names; never reveal the answer)"
SYSTEM_ROLE = "system prompt of a small language model, shared by every question of the task"
ANSWER_ROLE = "the small language model's answer to the question"

QUESTION_CONSTRAINTS = [
    "Keep every fact, number and name of the question exactly as they are; do not add facts.",
    "Do not state, hint at or narrow down the answer.",
    "The improved variable is the question text only: no explanation, no answer, no preamble.",
]
SYSTEM_CONSTRAINTS = [
    "The system prompt is shared by all questions of the task: do not mention this question's facts or answer.",
    "The improved variable is the system prompt text only.",
]


def _eval_instruction(question: str, gold: str, student_correct: bool | None = None) -> str:
    if student_correct:  # a candidate by its loss, not by its answer: say so rather than let the critic invent a fault
        task = ("The student's answer is right, but the student has not learned it yet: it is not confident of it. "
                "Say what in the question's wording makes the answer hard to find, and how the wording could make "
                "it easier to see.")
    else:
        task = ("Compare the student's answer with the correct answer. If it is wrong, say what in the question's "
                "wording may have misled the student and how the wording could help it answer correctly.")
    return (
        "You check a small student model's answer to this question:\n"
        f"<QUESTION>\n{question}\n</QUESTION>\n"
        f"The correct answer is: {gold}\n"
        f"{task} The question's facts, numbers and names must stay exactly as they are, and the question must not "
        "reveal or hint at the answer. Be brief."
    )


@cache
def _classes():
    tg = import_textgrad()

    class Replay(tg.EngineLM):
        """The student's answer, already computed by the caller, as if the student produced it now."""

        def __init__(self, answer: str):
            self.answer = answer
            self.model_string = "replay"

        def generate(self, content, system_prompt=None, **kwargs):
            return self.answer

        def __call__(self, content, system_prompt=None, **kwargs):
            return self.answer

    class WholeVariable(tg.Variable):
        """textgrad shows the optimiser only the first and last 10 words of a variable over 20 words, so it
        would rewrite a truncated bAbI story; prompts here are short enough to show whole."""

        def get_short_value(self, n_words_offset: int = 10) -> str:
            return self.value

    return tg, Replay, WholeVariable


def _step(tg, engine, variable, constraints) -> str:
    try:
        tg.TGD(parameters=[variable], engine=engine, constraints=constraints).step()
    except IndexError as e:
        # textgrad's only IndexError here: the reply had no tags. The built-in engines refuse such a reply
        # themselves (`expect`); an engine that ignores `expect` lets it through, and it is still the reply's fault.
        raise EngineError(f"malformed reply: no {TG_TAG} ({one_line(str(e), 120)})", kind="malformed") from None
    return variable.value


class TextGradStrategy(Strategy):
    """One TGD step on the question (and P with ctx.optimize_system); the shared P by a minibatch step."""

    name = "textgrad"

    def rewrite(self, sample, ctx: RewriteContext) -> RewriteResult:
        meter = Meter(ctx.engine)
        try:
            tg, Replay, WholeVariable = _classes()
            engine = as_textgrad(ctx.engine)
            question = WholeVariable(ctx.question, requires_grad=True, role_description=QUESTION_ROLE)
            system = WholeVariable(ctx.system, requires_grad=ctx.optimize_system, role_description=SYSTEM_ROLE)
            answer = tg.BlackboxLLM(engine=Replay(ctx.student_answer), system_prompt=system)(question)
            answer.set_role_description(ANSWER_ROLE)
            loss = tg.TextLoss(_eval_instruction(ctx.question, ctx.gold, ctx.student_correct), engine=engine)(answer)
            loss.backward(engine)
            new_question = _step(tg, engine, question, QUESTION_CONSTRAINTS)
            new_system = _step(tg, engine, system, SYSTEM_CONSTRAINTS) if ctx.optimize_system else None
        except Exception as e:  # an engine fault (no tags, HTTP error, empty reply) fails this rewrite; a bug is raised again
            return error(meter, e)
        return judge(ctx, meter, new_question, new_system)

    def update_system(self, examples, ctx: RewriteContext) -> RewriteResult:
        return optimize_system_prompt(ctx.system, examples, ctx.engine)


def optimize_system_prompt(system: str, examples: list[tuple[str, str, str]], engine) -> RewriteResult:
    """One TGD step on the shared system prompt over a minibatch of (question, student_answer, gold), as in
    TextGrad's prompt optimisation. Calls: 3 per example + 1. The pure-symbolic baseline."""
    meter = Meter(engine)
    ctx = RewriteContext(engine=engine, system=system, question="", gold="", student_answer="", optimize_system=True)
    if not examples:
        return error(meter, "no examples to optimise the system prompt on")
    try:
        tg, Replay, WholeVariable = _classes()
        tg_engine = as_textgrad(engine)
        prompt = WholeVariable(system, requires_grad=True, role_description=SYSTEM_ROLE)
        losses = []
        for question, student_answer, gold in examples:
            q = tg.Variable(question, requires_grad=False, role_description="question to the language model")
            answer = tg.BlackboxLLM(engine=Replay(student_answer), system_prompt=prompt)(q)
            answer.set_role_description(ANSWER_ROLE)
            losses.append(tg.TextLoss(_eval_instruction(question, gold), engine=tg_engine)(answer))
        tg.sum(losses).backward(tg_engine)
        new_system = _step(tg, tg_engine, prompt, SYSTEM_CONSTRAINTS)
    except Exception as e:
        return error(meter, e)
    return judge(ctx, meter, None, new_system)
