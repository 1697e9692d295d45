"""The router's own cost at N training samples: routing round, rewrite node (rules + meaning guard), checkpoints,
`nslora inspect` and report.html, with the trainer stubbed (deterministic losses, no model step), plus one full
run on the tiny test model. bAbI task 1 from the generator, the embedded default's settings, 3 epochs, saturation
forced from epoch 2 (two routing rounds), ~90% of the samples misclassified (the candidates), p = 0.1.

    python bench/scale.py                                   # N = 2000, 8000, 32000
    python bench/scale.py --full                            # and 100,000
    python bench/scale.py --baseline /tmp/old --baseline-sizes 2000 8000
        # the same measurements of another checkout (a `git worktree add /tmp/old COMMIT`), in this one run

Every N runs in a fresh process (its module imports from the checkout measured). Prints one JSON line: per tree
and N, the routing round (end of monitor to start of rewrite, per round) in s and ms per candidate, the rewrite
node in s and ms per rewrite, graph.sqlite and run.sqlite in MB, inspect's wall s and peak RSS MB, report.html MB,
the data map's PNG in kB, and growth ratios between consecutive N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stub_trainer() -> None:
    """Signals from a hash of (sample, epoch): loss falls by a sample-specific rate, 1 in 10 samples is right; the
    base-model input signals from a hash of the question."""
    from adapters import train

    def train_epoch(self, items, batch_size, seed, progress=None):
        epoch = seed % 1000
        out = {}
        for it in items:
            h = int(hashlib.sha256(it.id.encode()).hexdigest()[:8], 16)
            rate = 0.5 + (h % 1000) / 2000
            p = min(1.0, (h % 89) / 89 * (1 + epoch / 4))
            out[it.id] = train.StepSignals(loss=2.0 * rate ** epoch, correct=h % 10 == 0, grad_norm=0.1 + (h % 97) / 97,
                                           stats={"p_gold": p, "margin": 2 * p - 1, "el2n": 1 - p})
        return out

    def input_signals(self, prompts, batch_size, trained=frozenset()):
        out = {}
        for key, _, question, _ in prompts:
            h = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)
            q = 2.0 + (h % 100) / 50
            out[key] = {"q_nll": q, "q_top": 2 * q, "a_loss": 1.0 + (h % 7) / 7, "a_alone": 2.0, "ifd": (1.0 + (h % 7) / 7) / 2}
        return out

    train.Trainer.train_epoch = train_epoch
    train.Trainer.input_signals = input_signals
    train.Trainer.generate = lambda self, prompts, *a, **k: ["" for _ in prompts]


def _clock_nodes(marks: list) -> None:
    """(event, epoch, time) at the end of monitor and the start and end of rewrite: the round lies between."""
    from router import nodes

    monitor, rewrite = nodes.monitor, nodes.rewrite

    def timed_monitor(state, ctx):
        out = monitor(state, ctx)
        marks.append(("monitor_end", state["epoch"], time.perf_counter()))
        return out

    def timed_rewrite(state, ctx):
        marks.append(("rewrite_start", state["epoch"], time.perf_counter()))
        out = rewrite(state, ctx)
        marks.append(("rewrite_end", state["epoch"], time.perf_counter()))
        return out

    nodes.monitor, nodes.rewrite = timed_monitor, timed_rewrite


def one(n: int, stub: bool, out: Path) -> dict:
    """One run at N (in this process) and its inspection (in a child process)."""
    import importlib.util
    import sqlite3

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "tests" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    model_dir = out / "tiny"
    tiny.make_tiny(model_dir)
    if stub:
        _stub_trainer()
    marks: list = []
    _clock_nodes(marks)
    from nslora.commands.cli import main

    sets = [f"task.n_train={n}", "task.n_heldout=32", f"model.name_or_path={model_dir}", "model.max_length=1024",
            "lora.top_layers=null", "lora.target_modules=[q_proj,v_proj]", "train.epochs=3", "train.eval_every=0",
            "train.max_new_tokens=4", "saturation.k=1.0e9", "saturation.min_epoch=2", f"run.out_dir={out}",
            "run.name=scale", "run.progress=false"]
    started = time.perf_counter()
    rc = main(["run", *sum((["--set", s] for s in sets), [])])
    wall = time.perf_counter() - started
    assert rc == 0, f"run at N={n} failed"
    run = out / "scale"
    db = sqlite3.connect(run / "run.sqlite")
    per_epoch = dict(db.execute("SELECT epoch, COUNT(*) FROM decisions WHERE path != 'revert' GROUP BY epoch").fetchall())
    rewrites = dict(db.execute("SELECT epoch, COUNT(*) FROM rewrites GROUP BY epoch").fetchall())
    db.close()
    at = {(event, epoch): t for event, epoch, t in marks}
    rounds = []
    for epoch in sorted(per_epoch):
        route = at[("rewrite_start", epoch)] - at[("monitor_end", epoch)]
        rewrite = at[("rewrite_end", epoch)] - at[("rewrite_start", epoch)]
        k, r = per_epoch[epoch], rewrites.get(epoch, 0)
        rounds.append({"epoch": epoch, "candidates": k, "route_s": round(route, 3), "route_ms_per_candidate": round(1000 * route / k, 4),
                       "rewrites": r, "rewrite_s": round(rewrite, 3), "rewrite_ms_each": round(1000 * rewrite / r, 2) if r else None})
    probe = ("import json, resource, sys, time; t = time.perf_counter(); from nslora.commands.cli import main; "
             "rc = main(['inspect', sys.argv[1]]); "
             "print(json.dumps({'rc': rc, 's': time.perf_counter() - t, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    child = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, env=os.environ)
    inspected = json.loads(child.stdout.strip().splitlines()[-1])
    assert inspected["rc"] == 0, child.stderr[-2000:]
    mb = lambda p: round(p.stat().st_size / 2**20, 2)
    mean = lambda key: round(sum(r[key] for r in rounds) / len(rounds), 4) if rounds else None
    return {"n": n, "stubbed_trainer": stub, "run_wall_s": round(wall, 2), "rounds": rounds,
            "route_s": mean("route_s"), "route_ms_per_candidate": mean("route_ms_per_candidate"),
            "rewrite_s": mean("rewrite_s"), "rewrite_ms_each": mean("rewrite_ms_each") if all(r["rewrites"] for r in rounds) else None,
            "graph_sqlite_mb": mb(run / "checkpoints" / "graph.sqlite"), "run_sqlite_mb": mb(run / "run.sqlite"),
            "inspect_s": round(inspected["s"], 2), "inspect_peak_rss_mb": round(inspected["rss"] / 1024), "report_html_mb": mb(run / "report.html"),
            "datamap_png_kb": round((run / "report-datamap.png").stat().st_size / 1024, 1) if (run / "report-datamap.png").is_file() else None}


def _measure(tree: Path, n: int, stub: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "NSLORA_TREE": str(tree), "HF_HUB_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with tempfile.TemporaryDirectory(prefix="nslora-scale-") as tmp:
        env["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--out", tmp] + ([] if stub else ["--real"])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
        if proc.returncode != 0:
            raise SystemExit(f"N={n} on {tree} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _growth(rows: list[dict]) -> list[dict]:
    keys = ("route_s", "rewrite_s", "graph_sqlite_mb", "inspect_s", "report_html_mb")
    out = []
    for a, b in zip(rows, rows[1:]):
        out.append({"from": a["n"], "to": b["n"], **{k: round(b[k] / a[k], 2) if a.get(k) and b.get(k) is not None else None for k in keys}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--full", action="store_true", help="add N = 100,000")
    ap.add_argument("--real-n", type=int, default=2000, help="N of the full tiny-model run (0: none)")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure the same way (e.g. the code before a change)")
    ap.add_argument("--baseline-sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--real", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        sys.path.insert(0, os.environ.get("NSLORA_TREE", str(ROOT)))
        print(json.dumps(one(args.one, not args.real, args.out)))
        return
    sizes = args.sizes + ([100_000] if args.full else [])
    trees = [("head", ROOT, sizes)] + ([("baseline", args.baseline.resolve(), args.baseline_sizes)] if args.baseline else [])
    result = {"bench": "scale"}
    for name, tree, ns in trees:
        rows = [_measure(tree, n, stub=True) for n in ns]
        result[name] = {"tree": str(tree), "stubbed": rows, "growth": _growth(rows)}
        if args.real_n:
            result[name]["full_run"] = _measure(tree, args.real_n, stub=False)
    sys.path.insert(0, str(ROOT))
    from nslora.core.provenance import stamp

    result["stamp"] = stamp(vars(args))  # the commit measured as head, the date and the arguments
    print(json.dumps(result))


if __name__ == "__main__":
    main()
