"""Held-out scorers by config name (`task.scorer`): None keeps the task's own `score`; `exact` and `contains`
compare the whole reply; your own is a function `(reply, sample) -> bool` named as 'package.module:function'."""

from __future__ import annotations

import re
from typing import Callable

from core import plugins
from tasks.base import Sample, Task

Scorer = Callable[[str, Sample], bool]


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
