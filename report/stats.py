"""Experiment tables: mean ± std over seeds, and paired differences against a baseline arm with bootstrap
confidence intervals. The statistics are pure functions of numpy arrays; `arm_table` reads finished run folders.

Pairing: every arm and seed answers the same held-out items (the split is task.seed, fixed across seeds), so the
difference of two arms is taken item by item within each seed. The interval resamples both sources of noise:
seeds (with replacement) and held-out items (with replacement, the same items for every seed drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def paired_bootstrap(diff: np.ndarray, draws: int = 10000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """diff[s, i] = arm minus baseline on item i under seed s (each in {-1, 0, 1} for accuracy).

    Returns the mean difference and its percentile interval over `draws` two-level resamples.
    """
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"diff must be a non-empty seeds x items array, got shape {diff.shape}")
    k, n = diff.shape
    rng = np.random.default_rng(seed)
    estimates = np.empty(draws)
    chunk = max(1, 2_000_000 // (k * n))  # bounds the (chunk, k, n) gather to ~16 MB
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        si = rng.integers(0, k, size=(m, k))
        ii = rng.integers(0, n, size=(m, n))
        estimates[start:start + m] = diff[si[:, :, None], ii[:, None, :]].mean(axis=(1, 2))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


# ------------------------------------------------------------------------------------------------ run folders


def _run_facts(run_dir: Path) -> dict[str, Any] | None:
    """What the table needs of one finished run (None while it has no metrics.json)."""
    from report.data import load_run

    if not (run_dir / "metrics.json").is_file():
        return None
    run = load_run(run_dir)
    m, c = run.metrics, run.metrics["counts"]
    last = max(e["epoch"] for e in run.evals)
    return {"config": run.config, "policy": run.policy, "final": m["heldout_accuracy"]["final"],
            "before": m["heldout_accuracy"]["before"], "symbolic": c.get("symbolic", 0), "accepted": c.get("rewrites_accepted", 0),
            "rewritten_samples": c.get("rewritten_samples", 0), "llm_calls": m["llm"]["calls"], "cost": m["llm"]["cost"],
            "wall_seconds": m["wall_seconds"],
            "correct": {e["sample_id"]: int(e["correct"]) for e in run.evals if e["epoch"] == last}}


def arm_table(name: str, arms: list[str], seeds: list[int], runs: dict[tuple[str, int], Path], baseline: str,
              draws: int = 10000, confidence: float = 0.95) -> dict[str, Any]:
    """One experiment's table from its run folders; a run without metrics.json is listed as missing."""
    facts = {key: _run_facts(path) for key, path in runs.items()}
    config = next((f["config"] for f in facts.values() if f is not None), {})
    base = {s: facts.get((baseline, s)) for s in seeds}
    rows = []
    for arm in arms:
        done = [s for s in seeds if facts.get((arm, s)) is not None]
        f = [facts[(arm, s)] for s in done]
        acc_mean, acc_std = mean_std([x["final"] for x in f])
        row: dict[str, Any] = {
            "arm": arm, "seeds": done, "missing_seeds": [s for s in seeds if s not in done],
            "accuracy": {"per_seed": {str(s): x["final"] for s, x in zip(done, f)}, "mean": acc_mean, "std": acc_std},
            "before_mean": mean_std([x["before"] for x in f])[0],
            **{key: mean_std([x[key] for x in f])[0] for key in ("symbolic", "accepted", "rewritten_samples", "llm_calls", "cost", "wall_seconds")},
        }
        paired = [s for s in done if base.get(s) is not None]
        if arm != baseline and paired:
            items = sorted(base[paired[0]]["correct"])
            for s in paired:
                if sorted(facts[(arm, s)]["correct"]) != items or sorted(base[s]["correct"]) != items:
                    raise ValueError(f"{name}: arm {arm} seed {s} answered other held-out items than {baseline}; "
                                     "the arms of one experiment must share task settings")
            diff = np.array([[facts[(arm, s)]["correct"][i] - base[s]["correct"][i] for i in items] for s in paired])
            row["delta"] = {**paired_bootstrap(diff, draws, confidence), "seeds": paired,
                            "wins": sum(facts[(arm, s)]["final"] > base[s]["final"] for s in paired),
                            "losses": sum(facts[(arm, s)]["final"] < base[s]["final"] for s in paired)}
        rows.append(row)
    n_items = next((len(x["correct"]) for x in facts.values() if x is not None), 0)
    routes = any(_routes_symbolic(x["policy"]) for x in facts.values() if x is not None)
    return {"name": name, "routes": routes, "task": config.get("task", {}).get("name"), "model": config.get("model", {}).get("name_or_path"),
            "strategy": config.get("rewriter", {}).get("strategy"), "engine": config.get("rewriter", {}).get("engine"),
            "n_train": config.get("task", {}).get("n_train"), "n_heldout": n_items, "epochs": config.get("train", {}).get("epochs"),
            "p": config.get("saturation", {}).get("p"), "baseline": baseline, "seeds": seeds, "confidence": confidence,
            "bootstrap": draws, "arms": rows}


def _routes_symbolic(policy_name: str) -> bool:
    """What the arm's policy class declares (a class that cannot be imported here counts as routing)."""
    from core.errors import UserError
    from policies import resolve

    try:
        return bool(resolve(policy_name).routes_symbolic)
    except UserError:
        return True


# ------------------------------------------------------------------------------------------------ markdown


def _pct(mean: float, std: float | None = None) -> str:
    if mean != mean:  # NaN: no finished seed
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _delta(row: dict[str, Any]) -> str:
    d = row.get("delta")
    if not d:
        return "—"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def markdown_table(tables: list[dict[str, Any]]) -> str:
    """The paper's shape (arms x tasks, accuracy % mean ± std with the difference to the baseline) when there
    are several tasks, then one detailed table per task."""
    out = []
    if len(tables) > 1:
        arms = list(dict.fromkeys(r["arm"] for t in tables for r in t["arms"]))
        out.append("| arm | " + " | ".join(f"{t['name']} (n={t['n_heldout']})" for t in tables) + " |")
        out.append("| --- |" + " --- |" * len(tables))
        for arm in arms:
            cells = []
            for t in tables:
                row = next((r for r in t["arms"] if r["arm"] == arm), None)
                if row is None or not row["seeds"]:
                    cells.append("—")
                    continue
                d = row.get("delta")
                cells.append(_pct(row["accuracy"]["mean"], row["accuracy"]["std"]) + (f" ({100 * d['mean']:+.1f})" if d else ""))
            out.append(f"| {arm} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"Held-out accuracy in %, mean ± std over seeds; in brackets the paired difference to "
                   f"{tables[0]['baseline']} in points.")
        out.append("")
    for t in tables:
        level = round(100 * t["confidence"])
        routing = f"p={t['p']}, rewriter {t['strategy']} ({t['engine']}), " if t.get("routes", True) else ""
        out.append(f"### {t['name']}: {t['task']}, {t['model']}, {t['n_train']} train / {t['n_heldout']} held-out, "
                   f"{t['epochs']} epochs, {routing}seeds {', '.join(map(str, t['seeds']))}")
        out.append("")
        if t.get("note"):
            out += [t["note"], ""]
        out.append(f"| arm | held-out % (mean ± std) | Δ vs {t['baseline']} [{level}% CI] | wins/losses | per seed | "
                   "before % | routed symbolic | rewrites accepted | LLM calls | wall s |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in t["arms"]:
            d = r.get("delta")
            per_seed = ", ".join(f"{100 * v:.1f}" for v in r["accuracy"]["per_seed"].values()) or "—"
            if r["missing_seeds"]:
                per_seed += f" (missing seeds {', '.join(map(str, r['missing_seeds']))})"
            out.append(f"| {r['arm']} | {_pct(r['accuracy']['mean'], r['accuracy']['std'])} | {_delta(r)} | "
                       f"{str(d['wins']) + '/' + str(d['losses']) if d else '—'} | {per_seed} | {_pct(r['before_mean'])} | "
                       f"{r['symbolic']:.1f} | {r['accepted']:.1f} | {r['llm_calls']:.0f} | {r['wall_seconds']:.0f} |")
        out.append("")
    return "\n".join(out)
