"""`nslora policy bench POLICY`: how a routing rule does where the right route is known, in minutes.

A small controlled benchmark (task.name=controlled: bAbI stories, a share of the training samples carrying a
planted presentation fault, held-out samples clean) run as an experiment with three arms: lora-only (the floor),
lora-clean (the same samples without faults: the ceiling) and POLICY routing into the rules rewriter. The two
reference runs are kept in the bench folder and reused by every later bench of the same settings; the POLICY arm
runs afresh each time (its code may have changed). Prints routing precision / recall / F1 per round against the
planted faults, the held-out difference to lora-only and the recovered headroom, with intervals.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from nslora.core.atomic import write_json
from nslora.core.errors import UserError
from router.config import apply_overrides, from_dict, to_dict

# Sized so that the faults cost accuracy (headroom lora-clean - lora-only with its interval above 0) and a bench of
# one rule still finishes in about 15 minutes on 2 CPU cores (README has the measurement): LoRA on the top 16
# layers (they learn the task in a few dozen steps, the top 8 do not), batches of 4 for enough steps on 64 samples,
# 6 epochs until training converges. Three quarters of the training samples are faulted, all families taking turns
# (latest_first misleads: on clean stories it teaches the wrong sentence); an eighth are hard-but-clean knowledge
# samples, a false positive when routed symbolic. p = 0.5 lets a policy that finds the faulty ones route them all.
BENCH_DEFAULT: dict[str, dict[str, Any]] = {
    "lora": {"top_layers": 16},
    "task": {"name": "controlled", "babi_task": 1, "n_train": 64, "n_heldout": 200,
             "params": {"fault_share": 0.75, "knowledge_share": 0.125}},
    "train": {"epochs": 6, "batch_size": 4, "lr": 0.003, "max_new_tokens": 6, "eval_every": 0, "eval_batch_size": 32},
    "saturation": {"k": 1.0, "p": 0.5, "min_epoch": 2},
    "rewriter": {"engine": "local", "strategy": "rules", "guard_similarity": False},
}


def policy_arm(spec: str) -> tuple[str, dict[str, Any]]:
    """(arm name, config changes) for POLICY: a built-in name, a saved reward-policy folder or module:ClassName."""
    from policies import REGISTRY

    if spec in REGISTRY:
        if spec == "reward":
            raise UserError("POLICY=reward needs its folder: give the folder written by `nslora policy train ... --out DIR`")
        return spec, {"policy.name": spec}
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / "policy.json").is_file():
            raise UserError(f"POLICY={spec!r}: the folder has no policy.json; give a folder written by `nslora policy train`")
        return "reward-" + re.sub(r"[^A-Za-z0-9_.-]", "-", folder.resolve().name), {"policy.name": "reward", "policy.path": str(folder.resolve())}
    if ":" in spec:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", spec), {"policy.name": spec}
    raise UserError(f"POLICY={spec!r} is not a built-in policy ({', '.join(sorted(REGISTRY))}), a saved reward-policy "
                    "folder (with policy.json) or package.module:ClassName")


def bench_config(sets: list[str]) -> dict[str, Any]:
    base = to_dict(from_dict(apply_overrides(copy.deepcopy(BENCH_DEFAULT), sets), "policy bench default"))
    base["run"]["progress"] = False
    return base


def policy_bench(specs: str | list[str], sets: list[str], jobs: int = 2, out: str = "experiments", seeds: list[int] | None = None,
                 echo=print) -> dict[str, Any]:
    """Run the bench for one or more policies and print their summaries (several: side by side at the end);
    returns the experiment table (results.json)."""
    from nslora.commands.experiment import ARMS, Experiment, ExperimentConfig
    from router.run import plan

    specs = [specs] if isinstance(specs, str) else list(specs)
    base = bench_config(sets)
    chosen: dict[str, dict[str, Any]] = {}
    for spec in specs:
        arm, changes = policy_arm(spec)
        plan(from_dict(apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in changes.items()])))  # refuses a bad POLICY now
        chosen[arm] = changes
    digest = hashlib.sha1(yaml.safe_dump(base, sort_keys=True).encode()).hexdigest()[:8]
    arms = list(dict.fromkeys(["lora-only", "lora-clean", *chosen]))
    extra = {a: c for a, c in chosen.items() if not (a in ARMS and ARMS[a] == c)}
    exp = ExperimentConfig(name=f"policy-bench-{digest}", out_dir=out, arms=arms, extra_arms=extra,
                           seeds=list(seeds or [0]), baseline="lora-only", bootstrap=2000)
    runner = Experiment(exp, base, jobs=jobs, echo=echo)
    for arm in chosen:
        if arm not in ("lora-only", "lora-clean"):
            shutil.rmtree(runner.root / arm, ignore_errors=True)
    started = time.perf_counter()
    table = runner.run()
    several = len(chosen) > 1  # then the signals' detection table (the same for every rule) once, at the end
    printed = [part for arm in chosen for part in ("", summary(table, arm, runner.root, detection=not several))]
    if several:
        printed += ["", side_by_side(table, list(chosen), runner.root)]
        if table.get("detection"):
            from nslora.report.stats import _detection_table

            printed += ["", _detection_table(table["detection"], table["baseline"])]
    for part in printed:
        echo(part)
    # What was printed, with the table it came from: the file to quote a bench's figures from (README, results/).
    command = " ".join(["nslora policy bench", *specs, *(f"--set {s}" for s in sets),
                        *(["--seeds", *map(str, seeds)] if seeds else [])])
    write_json(runner.root / "bench.json", {"command": command, "wall_seconds": round(time.perf_counter() - started, 1),
                                            "printed": "\n".join(printed).strip("\n").splitlines(), **table}, indent=1)
    return table


def _routing(root: Path, arm: str, seed: int) -> dict[str, Any]:
    return json.loads((root / arm / f"seed-{seed}" / "metrics.json").read_text()).get("routing") or {}


def _knowledge_routed(root: Path, arm: str, seeds: list[int]) -> float | None:
    """Share of the knowledge samples (hard but clean) ever routed symbolic, mean over seeds."""
    got = [(_routing(root, arm, s).get("knowledge") or {}).get("ever_routed") for s in seeds]
    got = [g for g in got if g is not None]
    return sum(got) / len(got) if got else None


def side_by_side(table: dict[str, Any], arms: list[str], root: Path) -> str:
    """One line per policy: routing over all rounds (means over seeds), then the held-out outcome."""
    from nslora.report.stats import _num as _f

    by_arm = {r["arm"]: r for r in table["arms"]}
    lines = ["policy                      F1  random F1  precision  recall  faulty routed  knowledge routed  held-out  "
             "vs lora-only [95% CI]    recovered [95% CI]"]
    for arm in arms:
        row = by_arm[arm]
        q, d, rec = row.get("routing") or {}, row.get("delta") or {}, row.get("recovered") or {}
        delta = (f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d.get("low") is not None
                 else "identical" if d.get("identical") else "-")
        got = (f"{100 * rec['mean']:.0f}% [{100 * rec['low']:.0f}%, {100 * rec['high']:.0f}%]" if rec.get("low") is not None
               else f"{100 * rec['mean']:.0f}%" if rec.get("mean") is not None else "-")
        lines.append(f"{arm[:24]:<24}  {_f(q.get('f1')):>4}  {_f(q.get('random_f1')):>9}  {_f(q.get('precision')):>9}  "
                     f"{_f(q.get('recall')):>6}  {_f(q.get('cumulative_recall')):>13}  {_f(_knowledge_routed(root, arm, row['seeds'])):>16}  "
                     f"{100 * row['accuracy']['mean']:>7.1f}%  {delta:<23}  {got}")
    return "\n".join(lines)


def summary(table: dict[str, Any], arm: str, root: Path, detection: bool = True) -> str:
    """Routing per round against the planted faults, then the held-out outcome (pure text)."""
    from nslora.report.stats import _num as _f
    row = next(r for r in table["arms"] if r["arm"] == arm)
    by_arm = {r["arm"]: r for r in table["arms"]}
    lines = [f"policy bench: {arm} on task {table['task']} ({table['n_train']} train, {table['n_heldout']} held-out, "
             f"p={table['p']}), seeds {', '.join(map(str, table['seeds']))}", "",
             "seed  round  candidates  faulty  knowledge  routed  precision  recall    F1  random F1  knowledge routed"]
    for seed in row["seeds"]:
        routing = _routing(root, arm, seed)
        for epoch, q in routing.get("rounds", {}).items():
            lines.append(f"{seed:>4}  {epoch:>5}  {q['candidates']:>10}  {q['faulty']:>6}  {q.get('knowledge', 0):>9}  "
                         f"{q['symbolic']:>6}  {_f(q['precision']):>9}  {_f(q['recall']):>6}  {_f(q['f1']):>4}  "
                         f"{_f(q['random']['f1']):>9}  {q.get('knowledge_routed', 0):>16}")
        if routing.get("total"):
            t = routing["total"]
            lines.append(f"{seed:>4}  total  {'':>10}  {'':>6}  {'':>9}  {'':>6}  {_f(t['precision']):>9}  {_f(t['recall']):>6}  "
                         f"{_f(t['f1']):>4}  {_f(t['random']['f1']):>9}   faulty samples ever routed: "
                         f"{_f(routing.get('cumulative_recall'))}" + (f", knowledge samples ever routed: "
                         f"{_f(routing['knowledge']['ever_routed'])}" if routing.get("knowledge") else ""))
    lines.append("")
    acc = {a: by_arm[a]["accuracy"]["mean"] for a in by_arm}
    lines.append("held-out accuracy: " + ", ".join(f"{a} {v:.3f}" for a, v in acc.items() if v == v))
    level = round(100 * table["confidence"])
    d = row.get("delta")
    if d and d.get("identical"):
        lines.append(f"{arm} - lora-only: identical on every held-out item, no difference to estimate "
                     f"(the design detects {100 * d['mde']:.1f} points with 80% power)")
    elif d:
        lines.append(f"{arm} - lora-only: {100 * d['mean']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
                     f"({level}% CI; detectable with 80% power: {100 * d['mde']:.1f})")
    rec = row.get("recovered")
    if rec:
        h = rec["headroom"]
        head = f"headroom lora-clean - lora-only: {100 * h['mean']:+.1f} points [{100 * h['low']:+.1f}, {100 * h['high']:+.1f}]"
        if rec["mean"] is None:
            lines.append(head + "; no headroom, so nothing to recover")
        elif rec["low"] is None:
            lines.append(head + f"; recovered {100 * rec['mean']:.0f}% (no interval: the headroom is not clearly above 0)")
        else:
            lines.append(head + f"; recovered {100 * rec['mean']:.0f}% [{100 * rec['low']:.0f}%, {100 * rec['high']:.0f}%]")
    if detection and table.get("detection"):
        from nslora.report.stats import _detection_table

        lines += ["", _detection_table(table["detection"], table["baseline"])]
    lines.append(f"runs and tables: {root}")
    return "\n".join(lines)


