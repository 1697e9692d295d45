"""Experiment tables: mean ± std over seeds, and paired differences against a baseline arm with bootstrap
confidence intervals. The statistics are pure functions of numpy arrays; `arm_table` reads finished run folders.

Pairing: every arm and seed answers the same held-out items (the split is task.seed, fixed across seeds), so the
difference of two arms is taken item by item within each seed. The interval resamples both sources of noise:
seeds (with replacement) and held-out items (with replacement, the same items for every seed drawn).
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from nslora.core.provenance import footer, runs_match, stamp


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _resampled_means(arrays: list[np.ndarray], draws: int, seed: int) -> np.ndarray:
    """means[d, j]: the mean of arrays[j] (seeds x items) under the d-th two-level resample, the same seeds and
    items drawn for every array (so paired quantities stay paired)."""
    k, n = arrays[0].shape
    rng = np.random.default_rng(seed)
    means = np.empty((draws, len(arrays)))
    chunk = max(1, 2_000_000 // (k * n))  # bounds the (chunk, k, n) gather to ~16 MB
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        si = rng.integers(0, k, size=(m, k))
        ii = rng.integers(0, n, size=(m, n))
        for j, a in enumerate(arrays):
            means[start:start + m, j] = a[si[:, :, None], ii[:, None, :]].mean(axis=(1, 2))
    return means


def _check(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty seeds x items array, got shape {a.shape}")
    return a


def mde(se: float, confidence: float = 0.95, power: float = 0.8) -> float:
    """Minimum detectable effect: the smallest true difference a two-sided test at this confidence finds with
    this power, given the standard error of the estimate ((z_{1-a/2} + z_power) * se)."""
    z = NormalDist()
    return float((z.inv_cdf(1 - (1 - confidence) / 2) + z.inv_cdf(power)) * se)


def design_mde(baseline_accuracy: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """The MDE of comparing two arms of n answers each at the baseline's accuracy p, as if unpaired:
    se = sqrt(2 p (1 - p) / n), p kept at least 1/n from 0 and 1. Pairing can only lower it, so this is what the
    design could detect when the data give no paired variance to measure (arms identical on every item)."""
    p = min(max(baseline_accuracy, 1.0 / n), 1.0 - 1.0 / n)
    return mde(float(np.sqrt(2.0 * p * (1.0 - p) / n)), confidence, power)


def paired_bootstrap(diff: np.ndarray, draws: int = 10000, confidence: float = 0.95, seed: int = 0,
                     baseline: np.ndarray | None = None) -> dict[str, Any]:
    """diff[s, i] = arm minus baseline on item i under seed s (each in {-1, 0, 1} for accuracy).

    Returns the mean difference, its percentile interval over `draws` two-level resamples, the bootstrap
    standard error and the minimum detectable effect at 80% power for this many seeds and items. Arms that agree
    on every item have no interval (a zero-width one would read as certainty): `identical` is True, and the MDE is
    the design's (design_mde, from the `baseline` correctness array when given, else at p = 0.5).
    """
    diff = _check(diff, "diff")
    if not diff.any():
        p = float(np.mean(baseline)) if baseline is not None else 0.5
        return {"mean": 0.0, "low": None, "high": None, "se": None, "identical": True,
                "mde": design_mde(p, diff.size, confidence)}
    estimates = _resampled_means([diff], draws, seed)[:, 0]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    se = float(estimates.std(ddof=1))
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "se": se, "mde": mde(se, confidence),
            "identical": False}


def recovered_headroom(arm, floor, ceiling, draws: int = 10000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """(arm - floor) / (ceiling - floor) on paired 0/1 correctness arrays (seeds x items, the same items in each),
    with a percentile interval over two-level resamples. A resample where the headroom is not above 0 has no
    ratio; when more than the interval's tail share of them lack one, the interval is not given (None): the
    headroom itself is not distinguishable from 0, and neither is any share of it."""
    arm, floor, ceiling = _check(arm, "arm"), _check(floor, "floor"), _check(ceiling, "ceiling")
    if not arm.shape == floor.shape == ceiling.shape:
        raise ValueError(f"arm, floor and ceiling must have one shape, got {arm.shape}, {floor.shape}, {ceiling.shape}")
    means = _resampled_means([arm, floor, ceiling], draws, seed)
    gain, room = means[:, 0] - means[:, 1], means[:, 2] - means[:, 1]
    tail = (1.0 - confidence) / 2
    h_low, h_high = np.quantile(room, [tail, 1.0 - tail])
    headroom = {"mean": float(ceiling.mean() - floor.mean()), "low": float(h_low), "high": float(h_high)}
    total = float(ceiling.mean() - floor.mean())
    point = float((arm.mean() - floor.mean()) / total) if total > 0 else None
    ok = room > 0
    undefined = float(1.0 - ok.mean())
    low = high = None
    if undefined <= tail:
        # A draw without a ratio counts as -inf: the lower bound stays conservative.
        ratios = np.where(ok, gain / np.where(ok, room, 1.0), np.nan)
        ratios = np.concatenate([ratios[ok], np.full(int((~ok).sum()), -np.inf)])
        low, high = (float(x) for x in np.quantile(ratios, [tail, 1.0 - tail]))
    return {"mean": point, "low": low, "high": high, "headroom": headroom, "undefined_share": undefined}


# ------------------------------------------------------------------------------------------------ run folders


def _run_facts(run_dir: Path) -> dict[str, Any] | None:
    """What the table needs of one finished run (None while it has no metrics.json)."""
    from nslora.report.data import load_run

    if not (run_dir / "metrics.json").is_file():
        return None
    run = load_run(run_dir)
    m, c = run.metrics, run.metrics["counts"]
    last = max(e["epoch"] for e in run.evals)
    both = {k: (m["heldout_accuracy"].get(k) or {}).get("final") for k in ("strict", "flexible")}  # older runs: None
    return {"config": run.config, "policy": run.policy, "final": m["heldout_accuracy"]["final"], **both,
            "before": m["heldout_accuracy"]["before"], "symbolic": c.get("symbolic", 0), "accepted": c.get("rewrites_accepted", 0),
            "rewritten_samples": c.get("rewritten_samples", 0), "llm_calls": m["llm"]["calls"], "cost": m["llm"]["cost"],
            "wall_seconds": m["wall_seconds"], "routing": m.get("routing"), "code": m.get("code"),
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
            **{f"{k}_mean": mean_std([x[k] for x in f])[0] if f and all(x[k] is not None for x in f) else None
               for k in ("strict", "flexible")},
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
            base_correct = np.array([[base[s]["correct"][i] for i in items] for s in paired])
            row["delta"] = {**paired_bootstrap(diff, draws, confidence, baseline=base_correct), "seeds": paired,
                            "wins": sum(facts[(arm, s)]["final"] > base[s]["final"] for s in paired),
                            "losses": sum(facts[(arm, s)]["final"] < base[s]["final"] for s in paired)}
        row["routing"] = _routing_means([x["routing"] for x in f]) if any(_routes_symbolic(x["policy"]) for x in f) else None
        rows.append(row)
    _add_headroom(rows, facts, seeds, baseline, draws, confidence)
    detection = _detection_means([x["routing"] for s, x in base.items() if x is not None])
    n_items = next((len(x["correct"]) for x in facts.values() if x is not None), 0)
    routes = any(_routes_symbolic(x["policy"]) for x in facts.values() if x is not None)
    table_stamp = stamp({"arms": arms, "seeds": seeds, "baseline": baseline, "config": config})
    return {"name": name, "routes": routes, "task": config.get("task", {}).get("name"), "model": config.get("model", {}).get("name_or_path"),
            "strategy": config.get("rewriter", {}).get("strategy"), "engine": config.get("rewriter", {}).get("engine"),
            "n_train": config.get("task", {}).get("n_train"), "n_heldout": n_items, "epochs": config.get("train", {}).get("epochs"),
            "p": config.get("saturation", {}).get("p"), "scoring": config.get("task", {}).get("scoring", "flexible"), "baseline": baseline, "seeds": seeds, "confidence": confidence,
            "bootstrap": draws, "arms": rows, **({"detection": detection} if detection else {}),
            "stamp": table_stamp, "runs_code_matches": runs_match([x["code"] for x in facts.values() if x is not None], table_stamp)}


CEILING = "lora-clean"  # the controlled benchmark's ceiling arm; the baseline is its floor


def _correct(fact: dict[str, Any]) -> list[int]:
    return [fact["correct"][i] for i in sorted(fact["correct"])]


def _add_headroom(rows: list[dict[str, Any]], facts: dict, seeds: list[int], floor: str, draws: int, confidence: float) -> None:
    """Each arm's recovered headroom (arm - floor) / (ceiling - floor), on the seeds all three finished."""
    if floor == CEILING or not any(r["arm"] == CEILING for r in rows):
        return
    for row in rows:
        paired = [s for s in seeds if all(facts.get((a, s)) is not None for a in (row["arm"], floor, CEILING))]
        if row["arm"] in (floor, CEILING) or not paired:
            continue
        arrays = [np.array([_correct(facts[(a, s)]) for s in paired]) for a in (row["arm"], floor, CEILING)]
        row["recovered"] = {**recovered_headroom(*arrays, draws=draws, confidence=confidence), "seeds": paired}


def _routing_means(runs: list[dict | None]) -> dict[str, Any] | None:
    """Routing quality against the planted faults, averaged over the arm's seeds (None without ground truth)."""
    runs = [r for r in runs if r and r.get("planted")]
    if not runs:
        return None

    def avg(get) -> float | None:
        vals = [v for v in map(get, runs) if v is not None]
        return float(np.mean(vals)) if vals else None

    out = {k: avg(lambda r, k=k: r["total"][k]) for k in ("precision", "recall", "f1")}
    out["random_f1"] = avg(lambda r: r["total"]["random"]["f1"])
    out["cumulative_recall"] = avg(lambda r: r["cumulative_recall"])
    out["planted"] = avg(lambda r: r["planted"])
    return out


def _detection_means(runs: list[dict | None]) -> dict[str, dict[str, float]] | None:
    """Per training signal and fault family, the AUC of the signal against the planted faults, averaged over
    epochs and the given runs (the floor arm's: nothing was rewritten there)."""
    runs = [r for r in runs if r and r.get("planted") and r.get("detection")]
    if not runs:
        return None
    out: dict[str, dict[str, float]] = {}
    for name in runs[0]["detection"]:
        cells: dict[str, list[float]] = {}
        for r in runs:
            for key, v in r["detection"][name]["mean"].items():
                if v is not None:
                    cells.setdefault(key, []).append(v)
        out[name] = {k: float(np.mean(v)) for k, v in cells.items()}
    return out


def _routes_symbolic(policy_name: str) -> bool:
    """What the arm's policy class declares (a class that cannot be imported here counts as routing)."""
    from nslora.core.errors import UserError
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
    if d.get("identical"):
        return "identical on every item"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _both(row: dict[str, Any]) -> str:
    strict, flexible = row.get("strict_mean"), row.get("flexible_mean")
    return "—" if strict is None or flexible is None else f"{_pct(strict)} / {_pct(flexible)}"


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
        out.append(f"| arm | held-out % (mean ± std, {t.get('scoring', 'flexible')}) | Δ vs {t['baseline']} [{level}% CI] | MDE | "
                   "wins/losses | per seed | strict / flexible % | before % | routed symbolic | rewrites accepted | LLM calls | wall s |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in t["arms"]:
            d = r.get("delta")
            per_seed = ", ".join(f"{100 * v:.1f}" for v in r["accuracy"]["per_seed"].values()) or "—"
            if r["missing_seeds"]:
                per_seed += f" (missing seeds {', '.join(map(str, r['missing_seeds']))})"
            out.append(f"| {r['arm']} | {_pct(r['accuracy']['mean'], r['accuracy']['std'])} | {_delta(r)} | "
                       f"{_pct(d['mde']) if d and 'mde' in d else '—'} | "
                       f"{str(d['wins']) + '/' + str(d['losses']) if d else '—'} | {per_seed} | {_both(r)} | {_pct(r['before_mean'])} | "
                       f"{r['symbolic']:.1f} | {r['accepted']:.1f} | {r['llm_calls']:.0f} | {r['wall_seconds']:.0f} |")
        out.append("")
        out.append(f"MDE: the smallest difference these seeds and held-out items detect with 80% power at {level}% "
                   "confidence; a Δ well inside it is an uninformative null, not evidence of no effect.")
        out.append("")
        out += _routing_table(t, level)
        if t.get("stamp"):
            out += ["", footer(t["stamp"]) + ("" if t.get("runs_code_matches", True) else
                                              " Some of its runs were made by other code (reused runs)."), ""]
    return "\n".join(out)


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _routing_table(t: dict[str, Any], level: int) -> list[str]:
    """Routing against the planted faults and recovered headroom (task.name=controlled only)."""
    rows = [r for r in t["arms"] if r.get("routing") or r.get("recovered")]
    if not rows:
        return []
    out = [f"Routing against the planted faults (over all rounds, mean over seeds; random = random routing of the same "
           f"number of candidates) and recovered headroom = (arm − {t['baseline']}) / ({CEILING} − {t['baseline']}) [{level}% CI]:", "",
           "| arm | precision | recall | F1 | random F1 | faulty samples ever routed | recovered headroom |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    headroom = None
    for r in rows:
        q, rec = r.get("routing") or {}, r.get("recovered")
        if rec:
            headroom = rec["headroom"]
            interval = f" [{_pct(rec['low'])}, {_pct(rec['high'])}]" if rec["low"] is not None else " [headroom not above 0]"
            shown = (_pct(rec["mean"]) + "%" + interval) if rec["mean"] is not None else "— (no headroom)"
        else:
            shown = "—"
        out.append(f"| {r['arm']} | {_num(q.get('precision'))} | {_num(q.get('recall'))} | {_num(q.get('f1'))} | "
                   f"{_num(q.get('random_f1'))} | {_pct(q['cumulative_recall']) + '%' if q.get('cumulative_recall') is not None else '—'} | {shown} |")
    if t.get("detection"):
        out += ["", _detection_table(t["detection"], t["baseline"])]
    if headroom:
        out += ["", f"Headroom ({CEILING} − {t['baseline']}): {100 * headroom['mean']:+.1f} points "
                    f"[{100 * headroom['low']:+.1f}, {100 * headroom['high']:+.1f}]."]
    out.append("")
    return out


SIGNAL_NAMES = {
    "loss": "loss", "c1": "C1 (loss-change ratio)", "c2": "C2 (gradient norm)", "p_gold": "p(gold answer) this epoch",
    "margin": "answer margin this epoch", "el2n": "EL2N this epoch", "confidence": "confidence (mean p(gold) so far)",
    "variability": "variability (std p(gold) so far)", "correct_share": "share of epochs correct",
    "forgetting": "forgetting events", "aum": "AUM (mean margin so far)", "q_nll": "question NLL (base model)",
    "q_top": "question top-5 NLL (base model)", "a_loss": "answer loss given prompt (base)",
    "a_alone": "answer loss alone (base)", "ifd": "IFD (base model)",
    "presentation": "presentation score (planted-copy detector)", "classifier": "reward classifier P(symbolic)"}
_CELL_KEYS = ("all", "auprc", "base_rate", "knowledge")


def _detection_table(det: dict[str, dict[str, float]], floor: str) -> str:
    """Which fault families each signal (and the reward classifier, when trained) tells apart from clean samples,
    and whether it tells presentation faults from hard-but-clean knowledge samples."""
    families = sorted({k for name, cells in det.items() if name != "classifier" for k in cells} - set(_CELL_KEYS) - {"samples", "task_seed"})
    knowledge = any(cells.get("knowledge") is not None for cells in det.values())
    head = ["all", "AUPRC (base rate)", *(["vs knowledge"] if knowledge else []), *families]
    lines = [f"AUC of each signal against the planted presentation faults (0.5 = blind; above 0.5 = higher on faulty "
             f"samples, below = lower), in {floor} runs averaged over epochs: `all` against every other training sample, "
             "AUPRC beside the faulty share (what a blind signal gets)"
             + (", `vs knowledge` against the hard-but-clean knowledge samples only" if knowledge else "")
             + ", and per family against the clean samples:", "",
             "| signal | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for name, cells in det.items():
        pr = f"{_num(cells.get('auprc'))} ({_num(cells.get('base_rate'))})" if cells.get("auprc") is not None else "—"
        row = [_num(cells.get("all")), pr, *([_num(cells.get("knowledge"))] if knowledge else []),
               *(_num(cells.get(k)) for k in families)]
        lines.append(f"| {SIGNAL_NAMES.get(name, name)} | " + " | ".join(row) + " |")
    if "classifier" in det:
        lines += ["", f"The classifier is scored on {det['classifier'].get('samples', '?')} training samples of another draw of the "
                      f"task (task.seed {det['classifier'].get('task_seed', '?')}) that it never saw."]
    return "\n".join(lines)
