"""The rules strategy: deterministic, task-aware layouts of the question. No LLM, no calls, faithful by
construction (every sentence is kept verbatim; only structure and an answer-format hint are added).

    bAbI      1. Mary moved to the bathroom.      (story sentences numbered, one a line)
              ...
              Question: Where is Mary? Answer with one word: the place.
    GSM8K     one sentence a line, then "Give the final answer as a number."
    CliniFact the claim, the abstract and the task under labelled sections
    controlled the canonical bAbI presentation restored from the text (nslora/tasks/controlled.py: markup, case and
              typos fixed, time-marked sentences reordered, distractors dropped, the question asked plainly)
    other     one sentence a line

The task comes from `ctx.task`, else from the sample's meta (the task loaders' keys), else from the text.

With `optimize_system` the system prompt P gets the task's reading guidance appended (once), the rules
analogue of TextGrad's joint P update; `shared_system` does the same for the shared P of the prompt-only arm.
"""

from __future__ import annotations

import re

from rewriter.strategies.base import Meter, RewriteContext, RewriteResult, Strategy, judge
from nslora.tasks.controlled import canonical

BABI_HINT = "Answer with one word: the place."
GSM8K_HINT = "Give the final answer as a number."
# A sentence ends at . ! ? followed by space and a capital, a digit, a quote or a currency sign; "3.50" and
# "e.g. the" stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'\u201c(A-Z0-9$\u00a3\u20ac])")
_CLINIFACT = re.compile(r"^Claim:\s*(?P<claim>.*?)\n\s*\nAbstract:\s*(?P<abstract>.*?)(?:\n\s*\n(?P<task>[^\n]*))?\s*$", re.S)


def detect(sample, ctx: RewriteContext) -> str:
    if getattr(ctx, "task", None):
        return str(ctx.task).lower()
    meta = getattr(sample, "meta", None) or {}
    if "story" in meta and "supporting" in meta:
        return "babi"
    if "claim" in meta and "abstract" in meta:
        return "clinifact"
    if "solution" in meta:
        return "gsm8k"
    text = ctx.question
    if _CLINIFACT.match(text.strip()):
        return "clinifact"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) >= 2 and lines[-1].rstrip().endswith("?") and all(len(line) < 120 for line in lines):
        return "babi"
    return "generic"


def sentences(text: str) -> list[str]:
    out = []
    for line in text.strip().splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip())
    return out


def _strip_hint(text: str, hint: str) -> str:
    return text[: -len(hint)].rstrip() if text.rstrip().endswith(hint) else text


def babi(question: str) -> str:
    lines = [re.sub(r"^\s*(?:\d+\.\s+|Question:\s*|Story:\s*)", "", line).strip() for line in question.strip().splitlines()]
    lines = [_strip_hint(line, BABI_HINT) for line in lines if line and line != "Story:"]
    story, asked = lines[:-1], lines[-1]
    numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(story, start=1))
    return f"Story:\n{numbered}\nQuestion: {asked} {BABI_HINT}"


def gsm8k(question: str) -> str:
    return "\n".join(sentences(_strip_hint(question, GSM8K_HINT))) + "\n" + GSM8K_HINT


def clinifact(question: str) -> str:
    m = _CLINIFACT.match(question.strip())
    if m is None:
        return "\n".join(sentences(question))
    task = (m.group("task") or "").strip()
    parts = [f"CLAIM:\n{m.group('claim').strip()}", f"ABSTRACT:\n{m.group('abstract').strip()}"]
    if task:
        parts.append(f"TASK:\n{task}")
    return "\n\n".join(parts)


def generic(question: str) -> str:
    return "\n".join(sentences(question))


# What a careful reader needs to know, per task; appended to P, never replacing it.
SYSTEM_GUIDANCE = {
    "babi": "The story lists moves in order: a person is in the place they moved to last. Reply with the place only.",
    "gsm8k": "Reply with the final number only, without units or words.",
    "clinifact": "TRUE: the abstract's results support the claim. FALSE: they are inconclusive or contradict it. "
                 "NONE: the abstract does not address the claim. Reply with the one word only.",
    "generic": "Reply with the answer only.",
}
SYSTEM_GUIDANCE["controlled"] = SYSTEM_GUIDANCE["babi"]


def system_prompt(system: str, task: str) -> str:
    guidance = SYSTEM_GUIDANCE.get(task, SYSTEM_GUIDANCE["generic"])
    if guidance in system:
        return system
    return f"{system.rstrip()} {guidance}".strip()


def shared_system(system: str, task: str | None) -> RewriteResult:
    """The prompt-only arm's shared P under the rules strategy (TextGrad's optimize_system_prompt otherwise)."""
    ctx = RewriteContext(engine=None, system=system, question="", gold="", student_answer="", optimize_system=True)
    return judge(ctx, Meter(None), None, system_prompt(system, str(task or "generic").lower()))


RULES = {"babi": babi, "gsm8k": gsm8k, "clinifact": clinifact, "controlled": canonical, "generic": generic}


class RulesStrategy(Strategy):
    """Deterministic, task-aware layouts: no engine, no calls."""

    name = "rules"
    calls_model = False

    def rewrite(self, sample, ctx: RewriteContext) -> RewriteResult:
        meter = Meter(ctx.engine)
        task = detect(sample, ctx)
        rule = RULES.get(task, generic)
        # No engine here, so an exception is a bug in a rule: it stops the round (rewriter.pool) with its traceback.
        new_question = rule(ctx.question)
        new_system = system_prompt(ctx.system, task) if ctx.optimize_system else None
        return judge(ctx, meter, new_question, new_system)

    def update_system(self, examples, ctx: RewriteContext) -> RewriteResult:
        return shared_system(ctx.system, ctx.task)
