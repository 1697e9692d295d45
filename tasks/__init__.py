"""Data sets: samples (system prompt, question, gold answer, training target), answer extraction, scoring.

`load_task(cfg)` is the one entry point the rest of the project uses. This package does not import torch.
"""

from __future__ import annotations

import dataclasses

from router.errors import UserError
from tasks.babi import BabiTask
from tasks.base import Sample, Task, split
from tasks.clinifact import ClinifactTask
from tasks.gsm8k import Gsm8kTask

TASKS: dict[str, type[Task]] = {
    "babi": BabiTask,
    "gsm8k": Gsm8kTask,
    "clinifact": ClinifactTask,
}


def load_task(cfg) -> tuple[Task, list[Sample], list[Sample]]:
    """(task, train, held-out) for a router.config.TaskConfig.

    Every sample gets the same system prompt: task.system_prompt when set, else the task's default.
    """
    if cfg.name not in TASKS:
        raise UserError(f"task.name={cfg.name!r} is not one of {', '.join(TASKS)}")
    task = TASKS[cfg.name]()
    samples = task.load(cfg)
    if not samples:  # loaders refuse empty data themselves; this guards a user's own Task subclass
        raise UserError(f"task {cfg.name}: no samples loaded from {cfg.path or 'the default source'}; check task.path")
    system = cfg.system_prompt if cfg.system_prompt is not None else task.default_system
    samples = [dataclasses.replace(s, system=system) for s in samples]

    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise UserError(f"task {cfg.name}: sample id {s.id!r} occurs twice in {cfg.path or 'the data'}; ids (e.g. an id or index column) must be unique")
        seen.add(s.id)

    need = cfg.n_train + cfg.n_heldout
    if len(samples) < need:
        raise UserError(
            f"task {cfg.name}: {cfg.path or 'the data'} has {len(samples)} samples but task.n_train={cfg.n_train} + "
            f"task.n_heldout={cfg.n_heldout} = {need}; lower task.n_train or task.n_heldout"
        )
    train, heldout = split(samples, cfg.n_train, cfg.n_heldout, cfg.seed)
    return task, train, heldout


__all__ = ["TASKS", "Sample", "Task", "load_task", "split"]
