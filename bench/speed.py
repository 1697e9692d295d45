"""How fast an experiment runs: the embedded default end to end, its training and held-out generation rates, and the
meaning guard's cost per rewrite, for this checkout and, with --baseline, another one, in one run.

    python bench/speed.py                                   # this checkout only
    python bench/speed.py --baseline /tmp/old               # and the code before (`git worktree add /tmp/old COMMIT`)
    python bench/speed.py --baseline /tmp/old --experiment  # and part of the controlled experiment (slow)

Every measurement runs in a fresh process importing from the checkout measured; the trees take turns, so machine
noise falls on both. Prints one JSON line: per tree the default's process wall time, the run's own wall time and
seconds by node, its held-out accuracy, training samples a second (samples x epochs / train_epoch seconds), held-out
replies a second; the guard's ms a rewrite over rules rewrites of bAbI task 1 and, apart, of the controlled
benchmark's faulty samples (each with the embedder's load, as a first rewrite round pays it) and how many of them
needed the embedding; head/baseline ratios; and the verdicts on which the two guards disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "configs/experiments/controlled.yaml"


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "NSLORA_TREE": str(tree), "HF_HUB_OFFLINE": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def demo(tree: Path) -> dict:
    """`nslora run` with no config (the embedded default) in a child process."""
    with tempfile.TemporaryDirectory(prefix="nslora-speed-") as tmp:
        cmd = [sys.executable, "-m", "nslora.commands.cli", "run", "--set", f"run.out_dir={tmp}", "--set", "run.name=demo",
               "--set", "run.progress=false"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=tree)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"the embedded default on {tree} failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "demo" / "metrics.json").read_text())
        config = (Path(tmp) / "demo" / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(config)
    nodes = metrics["node_seconds"]
    acc = metrics["heldout_accuracy"]
    evaluations = len(acc["per_epoch"])
    return {"process_wall_s": round(wall, 1), "run_wall_s": metrics["wall_seconds"], "node_s": nodes,
            "heldout_accuracy": {"before": acc["before"], "final": acc["final"]},
            "train_samples_per_s": round(cfg["task"]["n_train"] * cfg["train"]["epochs"] / nodes["train_epoch"], 2),
            "heldout_replies_per_s": round(cfg["task"]["n_heldout"] * evaluations / nodes["evaluate"], 2),
            "summary": _summary(proc.stdout)}


def _summary(stdout: str) -> list[str]:
    """The run's closing summary as printed: from its held-out accuracy line to the end."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("held-out accuracy:")]
    return lines[starts[-1]:] if starts else lines[-8:]


def guard_worker(n: int) -> dict:
    """(In the tree measured.) Rules rewrites of n bAbI task 1 questions and n controlled-benchmark samples, judged
    by a fresh guard with its embedding check on: ms a rewrite and every verdict."""
    import torch

    torch.set_num_threads(2)
    from rewriter import guard
    from rewriter.pool import rewrite_many
    from rewriter.strategies import RewriteContext, build_strategy
    from nslora.tasks import load_task
    from nslora.tasks.config import TaskConfig

    cfg = guard.GuardConfig()
    out: dict = {"verdicts": []}
    for task, params in (("babi", {}), ("controlled", {"fault_share": 1.0, "knowledge_share": 0.0})):
        _, train, _ = load_task(TaskConfig(name=task, babi_task=1, n_train=n, n_heldout=1, seed=0, params=params))
        jobs = [(s, RewriteContext(engine=None, system=s.system, question=s.question, gold=s.answer, student_answer="",
                                   guard=cfg, task=task)) for s in train]
        guard._EMBEDDERS.clear()  # each task's round loads the embedder when it first needs it
        started = time.perf_counter()
        results = rewrite_many(jobs, build_strategy("rules"), concurrency=8)
        out[f"{task}_ms_per_rewrite"] = round(1000 * (time.perf_counter() - started) / len(jobs), 3)
        out[f"{task}_embedded"] = sum("similarity" in r.scores for r in results)
        out["verdicts"] += [[f"{task}:{s.id}", r.verdict, r.reason] for (s, _), r in zip(jobs, results)]
    return out


def _child(tree: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          env=_env(tree), cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{args} on {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def experiment(tree: Path, arms: list[str]) -> dict:
    """The controlled experiment's runs for `arms` at seed 0, at its own settings; wall seconds."""
    with tempfile.TemporaryDirectory(prefix="nslora-speed-") as tmp:
        cmd = [sys.executable, "-m", "nslora.commands.cli", "experiment", EXPERIMENT, "--out", tmp, "--set", "experiment.seeds=[0]",
               "--set", f"experiment.arms=[{','.join(arms)}]", "--set", "run.progress=false"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=tree)
        if proc.returncode != 0:
            raise SystemExit(f"the controlled experiment on {tree} failed:\n{proc.stderr[-3000:]}")
        return {"arms": arms, "wall_s": round(time.perf_counter() - started, 1)}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another checkout to measure the same way (e.g. the code before a change)")
    ap.add_argument("--guard-n", type=int, default=500, help="samples per task whose rules rewrites the guard judges")
    ap.add_argument("--experiment", action="store_true", help="also time the controlled experiment's runs of --arms at seed 0")
    ap.add_argument("--arms", nargs="+", default=["lora-only", "loss-ratio"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "guard":
        sys.path.insert(0, os.environ.get("NSLORA_TREE", str(ROOT)))
        print(json.dumps(guard_worker(args.guard_n)))
        return
    trees = [("head", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    result: dict = {"bench": "speed", **{name: {"tree": str(tree)} for name, tree in trees}}
    for name, tree in trees:
        result[name]["demo"] = demo(tree)
    for name, tree in trees:
        result[name]["guard"] = _child(tree, "--worker", "guard", "--guard-n", str(args.guard_n))
    if args.experiment:
        for name, tree in trees:
            result[name]["experiment"] = experiment(tree, args.arms)
    verdicts = {name: result[name]["guard"].pop("verdicts") for name, _ in trees}
    if args.baseline:
        head, base = result["head"], result["baseline"]
        differ = [[h[0], b[1], b[2], h[1], h[2]] for h, b in zip(verdicts["head"], verdicts["baseline"]) if h[1] != b[1]]
        result["guard_agreement"] = round(1 - len(differ) / len(verdicts["head"]), 4)
        result["guard_disagreements"] = differ  # [sample, baseline verdict, its reason, head verdict, its reason]
        result["speedup"] = {
            "demo_process_wall": _ratio(base["demo"]["process_wall_s"], head["demo"]["process_wall_s"]),
            "demo_run_wall": _ratio(base["demo"]["run_wall_s"], head["demo"]["run_wall_s"]),
            "train_samples_per_s": _ratio(head["demo"]["train_samples_per_s"], base["demo"]["train_samples_per_s"]),
            "heldout_replies_per_s": _ratio(head["demo"]["heldout_replies_per_s"], base["demo"]["heldout_replies_per_s"]),
            **{f"guard_{t}_ms_per_rewrite": _ratio(base["guard"][f"{t}_ms_per_rewrite"], head["guard"][f"{t}_ms_per_rewrite"])
               for t in ("babi", "controlled")},
            "experiment_wall": _ratio(base.get("experiment", {}).get("wall_s"), head.get("experiment", {}).get("wall_s")),
        }
    sys.path.insert(0, str(ROOT))
    from nslora.core.provenance import stamp

    result["stamp"] = stamp(vars(args))  # the commit measured as head, the date and the arguments
    print(json.dumps(result))


if __name__ == "__main__":
    main()
