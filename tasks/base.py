"""The sample and task contracts every data set follows."""

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

    Subclasses set `name` and `default_system`, and implement `load`, `extract`.
    """

    name: str = ""
    default_system: str = ""

    def load(self, cfg) -> list[Sample]:  # cfg: router.config.TaskConfig
        raise NotImplementedError

    def extract(self, text: str) -> str:
        """The final answer found in a model's generated text ('' when none)."""
        raise NotImplementedError

    def normalize(self, answer: str) -> str:
        return " ".join(answer.strip().lower().rstrip(".").split())

    def score(self, text: str, sample: Sample) -> bool:
        return self.normalize(self.extract(text)) == self.normalize(sample.answer)


def split(samples: list[Sample], n_train: int, n_heldout: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A fixed train / held-out split: shuffle by seed, held-out first, so n_train never changes held-out."""
    order = list(samples)
    random.Random(seed).shuffle(order)
    heldout = order[:n_heldout]
    train = order[n_heldout : n_heldout + n_train]
    return train, heldout
