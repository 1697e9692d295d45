"""`nslora eval TARGET --data FILE`: score a run, an adapter or a base model on any test file.

TARGET is a run folder (its base model + adapter, and its task settings), an adapter folder (its
adapter_config.json names the base model) or a base model (a name `nslora run` accepts). Every sample of the data
is answered by batched greedy generation and scored both ways (strict and flexible); the replies go to
replies.jsonl, the accuracies with bootstrap intervals to summary.json, both under OUT (default:
RUN/evals/<data name>[-split]-<task>[-firstN] for a run folder, evals/... otherwise; an existing one is refused
unless `--overwrite`), and a table is printed. Exactly the rows of `--data` (its `--split`) are scored: the run's
own data settings (held-out file, splits) never carry over. A sample longer
than the limit is refused (default) or, with `--long truncate`, loses story lines from the front until it fits,
the question kept; how many were truncated is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nslora.core.errors import UserError
from router.prompts import fit


def _target(target: str) -> tuple[str, str | None, dict[str, Any]]:
    """(base model, adapter folder or None, the run's task settings or {}) of TARGET."""
    import yaml

    p = Path(target)
    if (p / "config.yaml").is_file() and (p / "adapter" / "adapter_config.json").is_file():
        cfg = yaml.safe_load((p / "config.yaml").read_text())
        return cfg["model"]["name_or_path"], str(p / "adapter"), cfg.get("task") or {}
    if (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"{p}/adapter_config.json names no base_model_name_or_path; evaluate the run folder instead")
        return base, str(p), {}
    return target, None, {}


def bootstrap(correct: np.ndarray, draws: int = 10000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean accuracy and its percentile interval over resampled items."""
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(draws, len(correct)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"accuracy": float(correct.mean()), "low": float(low), "high": float(high)}


def _samples(name: str, data: str, settings: dict[str, Any]):
    """(task, its samples with their system prompts, the flexible scorer) of the data file."""
    from nslora.tasks import load_samples
    from nslora.tasks.config import TaskConfig
    from nslora.tasks.scoring import build_scorer

    cfg = TaskConfig(name=name, path=data, **settings)
    task, samples = load_samples(cfg)
    return task, samples, build_scorer(cfg.scorer, task, samples)


# The run's settings that name its own data: they never apply to --data (an sft run's held-out file would be added
# to the rows scored, and its split choice would pick --data's split).
DATA_PARAMS = ("heldout_path", "heldout_split", "split")


def _check_dataset_dict(data: str, split: str | None) -> None:
    """A DatasetDict folder is scored on one split the user names, never on a default one."""
    info = Path(data) / "dataset_dict.json"
    if split is None and info.is_file():
        splits = json.loads(info.read_text()).get("splits", [])
        raise UserError(f"--data {data} is a DatasetDict with splits {', '.join(splits)}; pick one with --split "
                        f"(e.g. --split {splits[-1] if splits else 'test'})")


def folder_name(data: str, split: str | None, task: str, limit: int | None) -> str:
    """One evaluation folder per (data, split, task, limit), so evaluations never overwrite each other."""
    parts = [Path(data.rstrip("/")).stem or "data", split, task, f"first{limit}" if limit is not None else None]
    return "-".join(p for p in parts if p)


def _check_split(task: str, split: str) -> None:
    import inspect

    from nslora.tasks import TASKS

    cls = TASKS.get(task)
    if cls is not None and "split" not in inspect.signature(cls).parameters:
        raise UserError(f"--split {split}: task {task} reads one file, which is one split; give that split's file to --data")


def _prompts(tokenizer, samples, data: str, max_length: int, long: str) -> list[tuple[str, str]]:
    from adapters.train import prompt_text

    prompts = []
    for s in samples:
        if long == "truncate":
            prompts.append((s.system, fit(tokenizer, s.system, s.question, max_length)[0]))
            continue
        n = len(tokenizer(prompt_text(tokenizer, s.system, s.question), add_special_tokens=False)["input_ids"])
        if n > max_length:
            raise UserError(f"{data}: sample {s.id} is {n} tokens, over --max-length={max_length}; raise it or pass --long truncate")
        prompts.append((s.system, s.question))
    return prompts


def evaluate(target: str, data: str, task: str | None = None, params: dict[str, Any] | None = None, out: str | None = None,
             max_new_tokens: int = 32, batch_size: int = 16, max_length: int = 512, long: str = "refuse",
             progress: bool = True, limit: int | None = None, split: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Answer and score every sample of `data`; writes replies.jsonl and summary.json, returns the summary."""
    from adapters.model import load_model
    from adapters.generate import greedy_replies
    from nslora.core.atomic import refuse_existing, write_text

    if long not in ("refuse", "truncate"):
        raise UserError(f"--long={long!r} must be refuse or truncate")
    base, adapter, run_task = _target(target)
    name = task or run_task.get("name")
    if name is None:
        raise UserError("--task is needed: the target is not a run folder, so it does not say which task the data is")
    same = name == run_task.get("name")  # the run's own task: its params, scorer and prompt carry over
    settings = {k: v for k, v in run_task.items() if k in ("params", "scorer", "system_prompt", "scoring")} if same else {}
    if "params" in settings:
        settings["params"] = {k: v for k, v in settings["params"].items() if k not in DATA_PARAMS}
    _check_dataset_dict(data, split)
    if split is not None:
        _check_split(name, split)
        params = {**(params or {}), "split": split}
    if params:
        settings["params"] = {**settings.get("params", {}), **params}
    if limit is not None and limit < 1:
        raise UserError(f"--limit={limit} must be >= 1")
    is_run = adapter is not None and Path(target, "config.yaml").is_file()
    folder = Path(out) if out else (Path(target) / "evals" if is_run else Path("evals")) / folder_name(data, split, name, limit)
    if not overwrite:
        refuse_existing(folder, "nslora eval", "--overwrite (or --out DIR)")
    task_obj, samples, flexible = _samples(name, data, settings)
    if limit is not None:
        samples = samples[:limit]
    model, tokenizer, _ = load_model(base)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    prompts = _prompts(tokenizer, samples, data, max_length, long)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="eval", unit="sample")
    replies = dict(greedy_replies(model, tokenizer, prompts, max_new_tokens, batch_size, bar))
    if bar is not None:
        bar.close()
    strict = getattr(task_obj, "score_strict", None)
    rows = [{"id": s.id, "question": q, "answer": s.answer, "reply": replies[i], "prediction": task_obj.extract(replies[i]),
             "strict": None if strict is None else bool(strict(replies[i], s)), "flexible": bool(flexible(replies[i], s)),
             "truncated": q != s.question} for i, (s, (_, q)) in enumerate(zip(samples, prompts))]
    summary = {"target": target, "base": base, "adapter": adapter, "data": data, "split": split, "task": name, "samples": len(rows), "limit": limit,
               "truncated": sum(r["truncated"] for r in rows), "max_length": max_length, "long": long,
               "max_new_tokens": max_new_tokens, "flexible": bootstrap(np.array([r["flexible"] for r in rows], float))}
    if strict is not None:
        summary["strict"] = bootstrap(np.array([r["strict"] for r in rows], float))
    write_text(folder / "replies.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text(folder / "summary.json", json.dumps(summary, indent=2))
    return {**summary, "folder": str(folder)}


def table(summary: dict[str, Any]) -> str:
    lines = [f"{summary['target']} on {summary['data']} ({summary['task']}, {summary['samples']} samples"
             + (f", {summary['truncated']} truncated" if summary["truncated"] else "") + ")", "",
             "| scoring | accuracy % | 95% CI |", "| --- | --- | --- |"]
    for kind in ("strict", "flexible"):
        if kind in summary:
            a = summary[kind]
            lines.append(f"| {kind} | {100 * a['accuracy']:.1f} | [{100 * a['low']:.1f}, {100 * a['high']:.1f}] |")
    lines += ["", f"replies: {summary['folder']}/replies.jsonl, summary: {summary['folder']}/summary.json"]
    return "\n".join(lines)
