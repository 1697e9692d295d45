"""Data sets: samples (system prompt, question, gold answer, training target), answer extraction, scoring.

`load_task(cfg)` is the one entry point the rest of the project uses. `TASKS` maps built-in names to classes;
your own Task class is named as 'package.module:ClassName' (contract and check in base.py). This package does
not import torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nslora.core import plugins
from nslora.core.errors import UserError
from nslora.tasks.babi import BabiTask
from nslora.tasks.base import Sample, Task, check_task, split
from nslora.tasks.clinifact import ClinifactTask
from nslora.tasks.controlled import ControlledTask
from nslora.tasks.gsm8k import Gsm8kTask
from nslora.tasks.sft import SftTask

TASKS: dict[str, type[Task]] = {
    "babi": BabiTask,
    "gsm8k": Gsm8kTask,
    "clinifact": ClinifactTask,
    "controlled": ControlledTask,
    "sft": SftTask,
}


def load_samples(cfg) -> tuple[Task, list[Sample]]:
    """(task, every sample of its data) for a tasks.config.TaskConfig, each with its system prompt: task.system_prompt
    when set; else the sample's own (sft data with a system turn), else the task's default."""
    cls = plugins.resolve("task.name", cfg.name, TASKS, "a Task class with load(cfg) and extract(text)",
                          accept=lambda obj: isinstance(obj, type) and callable(getattr(obj, "load", None)))
    task = plugins.instantiate("task.params", cls, cfg.params)
    samples = task.load(cfg)
    if not samples:  # loaders refuse empty data themselves; this guards a user's own Task subclass
        raise UserError(f"task {cfg.name}: no samples loaded from {cfg.path or 'the default source'}; check task.path")
    if cfg.name not in TASKS:
        plugins.conformance("task.name", cfg.name, lambda: check_task(task, samples))
    return task, [dataclasses.replace(s, system=cfg.system_prompt if cfg.system_prompt is not None else (s.system or task.default_system))
                  for s in samples]


def load_task(cfg) -> tuple[Task, list[Sample], list[Sample]]:
    """(task, train, held-out) for a tasks.config.TaskConfig (samples as `load_samples` gives them)."""
    task, samples = load_samples(cfg)

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
    # A task may split itself (sft with a held-out file); the rest split by task.seed.
    train, heldout = (task.split if callable(getattr(task, "split", None)) else split)(samples, cfg.n_train, cfg.n_heldout, cfg.seed)
    if hasattr(task, "prepare"):
        train, heldout = task.prepare(train, heldout, cfg)
    if cfg.prompts_from:
        train = with_prompts_from(train, cfg.prompts_from)
    return task, train, heldout


def augmented_file(path: str) -> Path:
    """The augmented.jsonl behind a run folder, its augmented/ folder, or the file itself."""
    p = Path(path)
    for candidate in (p, p / "augmented.jsonl", p.parent / "augmented.jsonl" if p.name == "augmented" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    raise UserError(f"task.prompts_from: {path} holds no augmented data; give a run folder, its augmented/ folder or its augmented.jsonl")


def with_prompts_from(train: list[Sample], path: str) -> list[Sample]:
    """The same training samples with the system prompt and question another run ended with."""
    file = augmented_file(path)
    rows = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{file} line {n}: not an augmented-data row (JSON with id, system, question); give a file `nslora run` wrote") from None
    out = []
    for s in train:
        row = rows.get(s.id)
        if row is None:
            raise UserError(f"task.prompts_from: training sample {s.id} is not in {file}; the augmented data must come from a run with the same task settings (name, path, seed, n_train, n_heldout)")
        if row.get("answer") != s.answer:
            raise UserError(f"task.prompts_from: sample {s.id} has answer {row.get('answer')!r} in {file} but {s.answer!r} in the task; the data sets differ")
        out.append(dataclasses.replace(s, system=row["system"], question=row["question"]))
    return out


__all__ = ["TASKS", "Sample", "Task", "check_task", "load_task", "split"]
