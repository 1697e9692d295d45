"""`nslora policy bench POLICY`: how a routing rule does where the right route is known, in minutes.

A small controlled benchmark (task.name=controlled: bAbI stories, a share of the training samples carrying a
planted presentation fault, held-out samples clean) run as an experiment with three arms: lora-only (the floor),
lora-clean (the same samples without faults: the ceiling) and POLICY routing into the rules rewriter. The two
reference runs are kept in the bench folder and reused by every later bench of the same settings; the POLICY arm
runs afresh each time (its code may have changed). Prints routing precision / recall / F1 per round against the
planted faults, the held-out difference to lora-only and the recovered headroom, with intervals.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from router.config import apply_overrides, from_dict, to_dict

# Sized so that `nslora policy bench loss-ratio` finishes in about 10 minutes on 2 CPU cores (README has the
# measurement). Half the training samples are faulted and p = 0.5, so a policy that finds them can route them all;
# a quarter are hard-but-clean knowledge samples, a false positive when routed symbolic.
BENCH_DEFAULT: dict[str, dict[str, Any]] = {
    "lora": {"top_layers": 8},
    "task": {"name": "controlled", "babi_task": 1, "n_train": 48, "n_heldout": 100, "params": {"fault_share": 0.5, "knowledge_share": 0.25}},
    "train": {"epochs": 3, "batch_size": 8, "max_new_tokens": 6, "eval_every": 0},
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
    base = to_dict(from_dict(apply_overrides({k: dict(v) for k, v in BENCH_DEFAULT.items()}, sets), "policy bench default"))
    base["run"]["progress"] = False
    return base


def policy_bench(spec: str, sets: list[str], jobs: int = 2, out: str = "experiments", seeds: list[int] | None = None,
                 echo=print) -> dict[str, Any]:
    """Run the bench and print its summary; returns the experiment table (results.json)."""
    from router.experiment import ARMS, Experiment, ExperimentConfig
    from router.run import plan

    arm, changes = policy_arm(spec)
    base = bench_config(sets)
    plan(from_dict(apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in changes.items()])))  # refuses a bad POLICY now
    digest = hashlib.sha1(yaml.safe_dump(base, sort_keys=True).encode()).hexdigest()[:8]
    arms = list(dict.fromkeys(["lora-only", "lora-clean", arm]))
    extra = {} if arm in ARMS and ARMS[arm] == changes else {arm: changes}
    exp = ExperimentConfig(name=f"policy-bench-{digest}", out_dir=out, arms=arms, extra_arms=extra,
                           seeds=list(seeds or [0]), baseline="lora-only", bootstrap=2000)
    runner = Experiment(exp, base, jobs=jobs, echo=echo)
    if arm not in ("lora-only", "lora-clean"):
        shutil.rmtree(runner.root / arm, ignore_errors=True)
    table = runner.run()
    echo("")
    echo(summary(table, arm, runner.root))
    return table


def summary(table: dict[str, Any], arm: str, root: Path) -> str:
    """Routing per round against the planted faults, then the held-out outcome (pure text)."""
    from report.stats import _num as _f
    row = next(r for r in table["arms"] if r["arm"] == arm)
    by_arm = {r["arm"]: r for r in table["arms"]}
    lines = [f"policy bench: {arm} on task {table['task']} ({table['n_train']} train, {table['n_heldout']} held-out, "
             f"p={table['p']}), seeds {', '.join(map(str, table['seeds']))}", "",
             "seed  round  candidates  faulty  knowledge  routed  precision  recall    F1  random F1  knowledge routed"]
    for seed in row["seeds"]:
        routing = json.loads((root / arm / f"seed-{seed}" / "metrics.json").read_text()).get("routing") or {}
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
    if table.get("detection"):
        from report.stats import _detection_table

        lines += ["", _detection_table(table["detection"], table["baseline"])]
    lines.append(f"runs and tables: {root}")
    return "\n".join(lines)


