"""ns-lora from Python: the same runs, evaluations and exports as the `nslora` command, returning what they wrote.

    import nslora

    cfg = nslora.load_config(overrides=["train.epochs=2"])   # the embedded default; or load_config("configs/babi.yaml")
    result = nslora.run(cfg)                                  # Result(run_dir, metrics)
    print(result.metrics["heldout_accuracy"]["final"])
    nslora.evaluate(result.run_dir, "test.jsonl", task="sft")  # strict / flexible accuracy with intervals
    nslora.export(result.run_dir, merged="models/m", gguf="models/m.gguf", trl="data/aug.jsonl")

Errors a user can fix raise `nslora.UserError` with the same one-line message the command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from nslora.core.errors import UserError

__all__ = ["Config", "Result", "UserError", "evaluate", "export", "load_config", "resume", "run"]


def __getattr__(name: str) -> Any:
    # Config on first use: every module of the namespace imports through this package, and `nslora.core.errors`
    # must not load the whole configuration system.
    if name == "Config":
        from router.config import Config

        return Config
    raise AttributeError(f"module 'nslora' has no attribute {name!r}")


class Result(NamedTuple):
    run_dir: Path
    metrics: dict[str, Any]


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """A validated Config from a YAML file (None: the embedded default), with `section.key=value` overrides."""
    from router.config import load

    return load(path, overrides or [])


def run(cfg: Config) -> Result:
    """Routed fine-tuning with `cfg`; returns the run folder and its metrics.json."""
    from router.run import run as _run

    metrics = _run(cfg)
    return Result(Path(metrics.pop("run_dir")), metrics)


def resume(run_dir: str | Path) -> Result:
    """Continue a stopped run from its last checkpoint (a finished one returns its metrics)."""
    import json

    from router.run import resume as _resume

    metrics = _resume(str(run_dir)) or json.loads((Path(run_dir) / "metrics.json").read_text())
    metrics.pop("run_dir", None)
    return Result(Path(run_dir), metrics)


def evaluate(target: str | Path, data: str | Path, task: str | None = None, **options: Any) -> dict[str, Any]:
    """`nslora eval`: score a run folder, an adapter folder or a base model on `data`; returns the summary."""
    from nslora.commands.evaluate import evaluate as _evaluate

    return _evaluate(str(target), str(data), task=task, progress=options.pop("progress", False), **options)


def export(run_dir: str | Path, merged: str | Path | None = None, gguf: str | Path | None = None, gguf_type: str = "f16",
           trl: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """`nslora export`: the merged model folder, a GGUF file and / or the augmented data in TRL's format."""
    from nslora.commands.model_export import export_model, export_trl

    if not (merged or gguf or trl):
        raise UserError("export needs merged=, gguf= and / or trl=")
    report: dict[str, Any] = {}
    if trl:
        report.update(export_trl(run_dir, trl))
    if merged or gguf:
        report.update(export_model(run_dir, merged, gguf, gguf_type, overwrite=overwrite))
    return report
