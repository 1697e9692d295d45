"""The sample and task contracts every data set follows, and the conformance check for your own task.

Your own task: a Task subclass (or any class with the same methods) named in config as
`task.name=my_pkg.tasks:MyTask`, built with `task.params` as keyword arguments. `load(cfg)` gets the whole `task`
section (path, seed, n_train, ...) and returns Samples; the prompt a sample is trained and evaluated on is its
`system` (P; `default_system` unless task.system_prompt is set) and its `question` (Q). `check_task` runs on it
and its loaded samples before the run starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One training or held-out item.

    `system` is the system prompt P, `question` the user turn Q, `answer` the short gold answer the scorer
    compares against, `target` the completion the model is trained to produce (teacher-forced).
    """

    id: str
    system: str
    question: str
    answer: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """A data set with its prompt construction, answer extraction and scorer.

    Subclasses set `name` and `default_system`, and implement `load`, `extract` (and `score` where exact match
    of the normalised extracted answer is not the right test).
    """

    name: str = ""
    default_system: str = ""

    def load(self, cfg) -> list[Sample]:  # cfg: tasks.config.TaskConfig
        raise NotImplementedError

    def extract(self, text: str) -> str:
        """The final answer found in a model's generated text ('' when none)."""
        raise NotImplementedError

    def prepare(self, train: list[Sample], heldout: list[Sample], cfg) -> tuple[list[Sample], list[Sample]]:
        """The split as the run will use it; a task may change its training samples here (the controlled
        benchmark plants its faults), never its held-out ones."""
        return train, heldout

    def extract_strict(self, text: str) -> str:
        """The answer only when the reply gives it in the expected form (lm-evaluation-harness's "strict
        match"); the default: the whole reply is the answer."""
        return text

    def normalize(self, answer: str) -> str:
        return " ".join(answer.strip().lower().rstrip(".").split())

    def matches(self, answer: str, sample: Sample) -> bool:
        """Whether an extracted answer is the gold one (normalised text equality; numbers override it)."""
        return self.normalize(answer) == self.normalize(sample.answer)

    def score(self, text: str, sample: Sample) -> bool:
        """Flexible scoring: the answer extracted from free text."""
        return self.matches(self.extract(text), sample)

    def score_strict(self, text: str, sample: Sample) -> bool:
        return self.matches(self.extract_strict(text), sample)


def split(samples: list[Sample], n_train: int, n_heldout: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A fixed train / held-out split: shuffle by seed, held-out first, so n_train never changes held-out."""
    order = list(samples)
    random.Random(seed).shuffle(order)
    heldout = order[:n_heldout]
    train = order[n_heldout : n_heldout + n_train]
    return train, heldout


def check_task(task, samples: list | None = None) -> None:
    """Conformance check for any task (built-in or yours); raises AssertionError naming the broken rule.
    `samples`: what its `load` returned (checked too)."""
    kind = type(task).__name__
    for method in ("load", "extract", "score"):
        assert callable(getattr(task, method, None)), f"{kind} needs a method {method}() (subclass nslora.tasks.Task)"
    assert isinstance(getattr(task, "default_system", None), str), f"{kind}.default_system must be a str (the system prompt P)"
    if samples is None:
        return
    assert isinstance(samples, list) and samples, f"{kind}.load(cfg) must return a non-empty list of nslora.tasks.Sample"
    for s in samples[:50]:
        assert isinstance(s, Sample), f"{kind}.load(cfg) must return nslora.tasks.Sample objects, got {type(s).__name__}"
        for name in ("id", "system", "question", "answer", "target"):
            assert isinstance(getattr(s, name), str), f"{kind}: Sample.{name} must be a str, got {type(getattr(s, name)).__name__} in sample {s.id!r}"
        assert s.question.strip() and s.target.strip(), f"{kind}: sample {s.id!r} has an empty question or target"
    probe = samples[0]
    extracted = task.extract(probe.target)
    assert isinstance(extracted, str), f"{kind}.extract(text) must return a str, got {type(extracted).__name__}"
    scored = task.score(probe.target, probe)
    assert isinstance(scored, bool), f"{kind}.score(text, sample) must return a bool, got {type(scored).__name__}"
