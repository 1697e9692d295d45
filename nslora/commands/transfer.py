"""`nslora train --data RUN_DIR/augmented --model OTHER`: is the rewritten data worth keeping on its own?

A second model is fine-tuned with plain LoRA twice per seed, on the same samples, steps and budget: once on the
task's original prompts and once on the prompts the source run ended with (task.prompts_from). Both answer the
source run's held-out set with its original prompts. It is an experiment of two arms, so it runs, resumes and
reports like one (paired differences with bootstrap intervals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from router.config import apply_overrides, from_dict, to_dict
from nslora.core.errors import UserError


def source_run(data: str) -> Path:
    """The run folder behind --data (the run folder, its augmented/ folder or its augmented.jsonl)."""
    from nslora.tasks import augmented_file

    run_dir = augmented_file(data).parent
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--data {data}: no config.yaml beside it in {run_dir}; give the augmented data of a run folder")
    return run_dir


def plan_transfer(data: str, model: str, seeds: list[int], out: str, name: str | None = None,
                  overrides: list[str] | None = None):
    from nslora.commands.experiment import ExperimentConfig

    run_dir = source_run(data)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    raw["model"] = {**raw.get("model", {}), "name_or_path": model, "gguf_file": None}
    raw["policy"] = {"name": "lora-only", "path": None, "params": {}}
    raw["task"] = {**raw.get("task", {}), "prompts_from": None}
    raw["run"] = {**raw.get("run", {}), "progress": False}
    base = to_dict(from_dict(apply_overrides(raw, overrides or []), f"{run_dir / 'config.yaml'} with --model {model}"))
    prompts = str((run_dir / "augmented.jsonl").resolve())
    rewritten = _rewritten_count(run_dir / "augmented.jsonl")
    if rewritten == 0:
        raise UserError(f"--data {data}: no training prompt was rewritten in that run, so both arms would train on the same data; "
                        "give the augmented data of a run whose rewrites were accepted")
    model_tag = Path(model).stem if model.endswith(".gguf") else model.replace("/", "-")
    exp = ExperimentConfig(name=name or f"transfer-{run_dir.name}-to-{model_tag}", out_dir=out, arms=["original", "augmented"],
                           extra_arms={"original": {}, "augmented": {"task.prompts_from": prompts}},
                           seeds=list(seeds), baseline="original")
    return exp, base, run_dir, rewritten


def _rewritten_count(path: Path) -> int:
    import json

    return sum(bool(json.loads(line).get("rewritten")) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def transfer(data: str, model: str, seeds: list[int], out: str, name: str | None = None, overrides: list[str] | None = None,
             jobs: int = 1, echo=print, pack: str | None = None) -> dict[str, Any] | None:
    """The transfer table; with `pack`, nothing runs: the finished runs are packed into that folder (None)."""
    from nslora.commands.experiment import Experiment

    exp, base, run_dir, rewritten = plan_transfer(data, model, seeds, out, name, overrides)
    note = (f"transfer: {model} trained on the original prompts vs the prompts of {run_dir} "
            f"({rewritten} of {base['task']['n_train']} training prompts rewritten); both answer the original held-out prompts")
    experiment = Experiment(exp, base, jobs=jobs, echo=echo, note=note)
    if pack is not None:
        experiment.pack(Path(pack))
        return None
    echo(note)
    table = experiment.run()
    missing = [f"{r['arm']} seed {s}" for r in table["arms"] for s in r["missing_seeds"]]
    if missing:
        raise UserError(f"{len(missing)} transfer run(s) did not finish ({', '.join(missing)}); see their logs, then rerun the same command")
    return table
