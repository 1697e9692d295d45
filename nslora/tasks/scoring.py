"""Held-out scorers by config name (`task.scorer`): None keeps the task's own `score`; `exact` and `contains`
compare the whole reply; your own is a function `(reply, sample) -> bool` named as 'package.module:function'.

`final_answer` is the one rule every built-in task's flexible extraction follows: the reply's final committed
answer, none when it offers two candidates or hedges. A task supplies only what counts as a candidate.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

from nslora.core import plugins
from nslora.tasks.base import Sample, Task

Scorer = Callable[[str, Sample], bool]


# ------------------------------------------------------------------------------------- the extraction rule


class Candidate(NamedTuple):
    """An answer a sentence names: its value as the task compares it, and the span it covers in the sentence."""

    value: str
    start: int
    end: int


# The candidates one sentence names, in order, denied ones ("not in the kitchen") already left out.
Finder = Callable[[str], list[Candidate]]

ANSWER_MARKER = re.compile(r"\b(?:final\s+)?(?:answer|verdict)\b[\s*_]*(?:is\b|:|=)", re.I)
# A reply that reasons before it answers says so; where no marker names the answer, this sentence does.
_CONCLUSION = re.compile(r"[\W_]*(?:so|therefore|thus|hence|in\s+(?:conclusion|summary))\b", re.I)
# "I think" / "I believe" are left out on purpose: models put them before answers they commit to.
_HEDGE = re.compile(r"\b(?:maybe|perhaps|probably|possibly|likely|might|may\s+be|could\s+be|not\s+(?:sure|certain)"
                    r"|unsure|i\s+guess|my\s+guess|guessing|hard\s+to\s+(?:say|tell))\b", re.I)
# A sentence after the answer that opens like this and names another candidate takes the commitment back.
_DOUBT = re.compile(r"[\W_]*(?:or|maybe|perhaps|possibly|alternatively|unless|but\s+(?:maybe|perhaps|possibly)"
                    r"|(?:but\s+)?it\s+(?:might|may|could)\s+(?:also\s+)?be|(?:is|could|might)\s+it"
                    r"|(?:i'?m|i\s+am)\s+not\s+sure|not\s+sure)\b", re.I)
_OR_GAP = re.compile(r"[\s,;(\[*_$]*(?:\w+[\s,]+)?(?:either\s+)?(?:or(?!\s+rather)\b|/)"
                     r"(?:\s+(?:maybe|perhaps|possibly|even|else))?[\s(\[*_$]*(?:(?:in|at|to|into)\s+)?(?:the\s+)?", re.I)
_LIST_GAP = re.compile(r"[\s*_]*,[\s*_]*(?:the\s+)?", re.I)
_ADJACENT = re.compile(r"[\W_]*(?:the\s+)?[\W_]*", re.I)
_LIST_ITEM = re.compile(r"^\s*\d{1,2}[.)]\s+")
_CORRECTION = re.compile(
    r"(?:^|[.!?;:,(\n\u2014\u2013]|\s-|\b(?:but|oh|hmm|oops)\b)\s*(?:wait\b(?=\s*[,.!:\u2014-]|\s+(?:no|actually|i|that|let)\b)"
    r"|actually\b|no\s*,|no\s+wait\b|i\s+mean\b|correction\b|sorry\b|scratch\s+that\b|on\s+second\s+thought\b"
    r"|hold\s+on\b|let\s+me\s+(?:re-?check|recalculate|recount|correct)\b|i\s+made\s+an?\s+(?:mistake|error)\b"
    r"|that(?:'s|\s+is)\s+(?:wrong|incorrect)\b)|\sor\s+rather\b", re.I)


def sentences(text: str) -> list[str]:
    """The reply's sentences and lines; numbered-list markers dropped where the reply is a list ("1. ...")."""
    lines = [line for line in text.splitlines() if line.strip()]
    if sum(bool(_LIST_ITEM.match(line)) for line in lines) >= 2:
        lines = [_LIST_ITEM.sub("", line) for line in lines]
    return [s for line in lines for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip()]


def _question(sentence: str) -> bool:
    return sentence.rstrip(" *_\"')]").endswith("?")


def final_answer(text: str, find: Finder, *, last: bool = False, markers: tuple[re.Pattern, ...] = (ANSWER_MARKER,),
                 lists_offer: bool = True) -> str:
    """The reply's final committed answer ('' when it has none).

    After a self-correction ("Wait, actually", "no,", "I mean", "sorry", "or rather") that follows a candidate,
    only what comes after it counts. The answer sentence is the last one a marker ("the answer is", `markers`)
    puts a candidate right after; else, when answers come first (`last` False), the last conclusion ("So ...")
    or the first sentence after an echoed question, else the first; when reasoning comes first, the last.
    A question is never an answer. No answer when that sentence hedges, offers two candidates ("A or B", "A/B";
    "A, B" too where `lists_offer`), or a later sentence doubts it with another candidate ("Or maybe B.")."""
    heads = [m for m in _CORRECTION.finditer(text) if any(find(s) for s in sentences(text[: m.start()]))]
    for m in reversed(heads):
        if any(find(s) for s in sentences(text[m.end():])):
            return _committed(text[m.end():], find, last, markers, lists_offer)
    return _committed(text, find, last, markers, lists_offer)


def _committed(text: str, find: Finder, last: bool, markers: tuple[re.Pattern, ...], lists_offer: bool) -> str:
    stated = [(s, find(s)) for s in sentences(text)]
    answers = [i for i, (s, found) in enumerate(stated) if found and not _question(s)]
    if not answers:
        return ""
    i, k = _answer_at(stated, answers, last, markers)
    sentence, found = stated[i]
    value = found[k].value
    if _hedged(sentence, found[k]) or _offers_two(sentence, found, k, lists_offer):
        return ""
    if any(_DOUBT.match(s) and any(c.value != value for c in later) for s, later in stated[i + 1:]):
        return ""
    return value


def _answer_at(stated: list[tuple[str, list[Candidate]]], answers: list[int], last: bool,
               markers: tuple[re.Pattern, ...]) -> tuple[int, int]:
    """(sentence, candidate) indices of the answer; see final_answer for the order of trust."""
    for marker in markers:
        for i in reversed(answers):
            sentence, found = stated[i]
            for m in reversed(list(marker.finditer(sentence))):
                k = next((k for k, c in enumerate(found) if c.start >= m.end()), None)
                if k is not None and _ADJACENT.fullmatch(sentence[m.end() : found[k].start]):
                    return i, k
    if last:
        return answers[-1], len(stated[answers[-1]][1]) - 1
    concluded = [i for i in answers if _CONCLUSION.match(stated[i][0])]
    if concluded:
        return concluded[-1], 0
    asked = [j for j, (s, _) in enumerate(stated) if _question(s)]
    after = [i for i in answers if asked and i > asked[-1]]
    return (after or answers)[0], 0


def _hedged(sentence: str, answer: Candidate) -> bool:
    """A hedge before the answer in its sentence, or in a short tail after it ("12, I guess")."""
    tail = sentence[answer.end:]
    return bool(_HEDGE.search(sentence[: answer.start])) or (len(re.findall(r"[\w']+", tail)) <= 4 and bool(_HEDGE.search(tail)))


def _offers_two(sentence: str, found: list[Candidate], k: int, lists_offer: bool) -> bool:
    """The answer stands in a run of different candidates joined by "or" or "/" (or commas, where they offer)."""
    def gap(a: Candidate, b: Candidate) -> str:
        between = sentence[a.end : b.start]
        return "or" if _OR_GAP.fullmatch(between) else "list" if _LIST_GAP.fullmatch(between) else ""

    lo = hi = k
    joins = []
    while lo > 0 and (g := gap(found[lo - 1], found[lo])):
        joins.append(g)
        lo -= 1
    while hi + 1 < len(found) and (g := gap(found[hi], found[hi + 1])):
        joins.append(g)
        hi += 1
    offered = "or" in joins or (lists_offer and "list" in joins)
    return offered and len({c.value for c in found[lo : hi + 1]}) > 1


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def exact(reply: str, sample: Sample) -> bool:
    """The whole reply, trimmed and lower-cased, equals the gold answer."""
    return _norm(reply) == _norm(sample.answer)


def contains(reply: str, sample: Sample) -> bool:
    """The gold answer appears in the reply as whole words (case-insensitive)."""
    gold = _norm(sample.answer)
    return bool(gold) and re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", reply.lower()) is not None


SCORERS: dict[str, Scorer] = {"exact": exact, "contains": contains}


def check_scorer(scorer: Scorer, samples: list[Sample]) -> None:
    """Conformance check: a bool for a right and a wrong reply, the same one twice (AssertionError otherwise)."""
    name = getattr(scorer, "__name__", type(scorer).__name__)
    for s in samples[:3]:
        for reply in (s.answer, "\u2205"):
            got = scorer(reply, s)
            assert isinstance(got, bool), f"{name}(reply, sample) must return a bool, got {type(got).__name__}"
            assert scorer(reply, s) == got, f"{name} must give the same score for the same reply"


def build_scorer(name: str | None, task: Task, samples: list[Sample]) -> Scorer:
    """The scorer `task.scorer` names (None: the task's own); your own function is checked on the samples."""
    if name is None:
        return task.score
    scorer = plugins.resolve("task.scorer", name, SCORERS, "a function (reply, sample) -> bool", accept=callable)
    if name not in SCORERS:
        plugins.conformance("task.scorer", name, lambda: check_scorer(scorer, samples))
    return scorer
