"""Settings of the data: which task, which file, how many samples (the `task` section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nslora.core import plugins
from nslora.core.options import option, require


@dataclass
class TaskConfig:
    name: str = option("babi", "Data set: babi, gsm8k, clinifact, controlled, sft (your own data in TRL's prompt-completion or messages format, from task.path), or your own Task class as 'package.module:ClassName'.")
    params: dict[str, Any] = option({}, "Keyword arguments passed to the task class's __init__ (your own task's settings).")
    scorer: str | None = option(None, "How a held-out reply is scored: None (the task's own score), exact, contains, or your own function as 'package.module:function' taking (reply, sample) and returning a bool.")
    scoring: Literal["flexible", "strict"] = option("flexible", "Which held-out accuracy is the headline (metrics.json final, summary, experiment tables): flexible (the answer extracted from free text) or strict (the answer in the expected form: '#### N', the label alone, one word). Both are always recorded.")
    long: Literal["refuse", "truncate"] = option("refuse", "A sample over model.max_length: refuse the run, or truncate its question's story from the front (the question line kept); metrics.json counts truncated samples.")
    path: str | None = option(None, "Data file (official format). babi without a path uses this project's generator; gsm8k without a path loads openai/gsm8k from the hub.")
    babi_task: int = option(1, "bAbI task for the generator: 1, 2 or 3 supporting facts.")
    n_train: int = option(64, "Training samples.")
    n_heldout: int = option(32, "Held-out samples: only evaluated, never trained on or rewritten.")
    seed: int = option(0, "Seed of the train / held-out split (and of the generator).")
    system_prompt: str | None = option(None, "System prompt P; default: the task's own.")
    target: Literal["answer", "solution"] = option("answer", "Train on the short answer, or on the worked solution where the data has one (gsm8k).")
    prompts_from: str | None = option(None, "Train on the prompts of another run's augmented data (RUN_DIR, RUN_DIR/augmented or augmented.jsonl) instead of the task's own; ids, answers and the held-out set stay the task's (`nslora train --data`).")

    def __post_init__(self):
        from nslora.tasks import TASKS
        from nslora.tasks.scoring import SCORERS

        plugins.check_name("task.name", self.name, TASKS)
        if self.scorer is not None:
            plugins.check_name("task.scorer", self.scorer, SCORERS)
        require(self.babi_task in (1, 2, 3), f"task.babi_task={self.babi_task!r} must be 1, 2 or 3")
        require(self.n_train >= 1, f"task.n_train={self.n_train!r} must be >= 1")
        require(self.n_heldout >= 1, f"task.n_heldout={self.n_heldout!r} must be >= 1")
