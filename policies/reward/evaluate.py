"""What `nslora policy eval` and `nslora policy show` print: a saved policy measured on runs, and its summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.base import SampleView
from policies.reward.folder import load_folder
from policies.reward.pairs import sample_text


def views_from_runs(run_dirs) -> list[SampleView]:
    """One view per train sample of each run, from its last recorded epoch (held-out samples never appear)."""
    from policies.reward.pairs import _read

    views = []
    for d in run_dirs:
        samples, signals, _ = _read(Path(d))
        for sid, hist in sorted(signals.items()):
            last, s = hist[-1], samples[sid]
            views.append(SampleView(id=f"{Path(d).name}/{sid}", epoch=last["epoch"], loss=last["loss"], c1=last["c1"],
                                    c2=last["c2"], correct=bool(last["correct"]), losses=tuple(r["loss"] for r in hist),
                                    system=s["system"], question=s["question"]))
    return views


def evaluate_policy(path: str | Path, run_dirs, criterion: str | None = None, max_pairs: int = 2000, seed: int = 0) -> dict:
    """Pairwise accuracy, ROC-AUC and ECE on pairs built from `run_dirs` (criterion: the one it was trained on),
    plus, routing those runs' train samples, the agreement with the fallback signal policy and the deferred share."""
    from policies.reward.pairs import build_pairs
    from policies.reward.policy import RewardPolicy
    from policies.reward.train import evaluate_scores

    meta, cal, _ = load_folder(path)
    trained_on = meta.get("provenance", {})
    criterion = criterion or trained_on.get("criterion", "c1")
    pairs = build_pairs(run_dirs, criterion, max_pairs=max_pairs, seed=seed, high_share=trained_on.get("high_share", 0.5))
    rows = list(pairs["train"]) + list(pairs["test"])  # a policy is evaluated on runs it did not train on
    policy = RewardPolicy(str(path), p=meta["p"])
    texts = sorted({t for r in rows for t in (r["chosen"], r["rejected"])})
    score_of = dict(zip(texts, policy.score_texts(texts).tolist()))
    metrics = evaluate_scores(rows, score_of, cal)
    views = views_from_runs(run_dirs)
    policy.calibrate(views)
    decisions = [policy.decide(v) for v in views]
    signal = [policy.fallback_.decide(v) for v in views]
    metrics.update({
        "criterion": criterion, "views": len(views),
        "agreement_with_fallback": float(np.mean([a.route == b.route for a, b in zip(decisions, signal)])),
        "deferred_share": float(np.mean([d.path == "fallback" for d in decisions])),
        "symbolic_share": float(np.mean([d.route == "symbolic" for d in decisions])),
    })
    planted = [item for d in run_dirs for item in planted_faults(d)]
    if planted:  # a controlled run: how well P(symbolic) finds the planted faults it never saw
        metrics["ground_truth_auc"] = ground_truth_auc(path, planted)
    return metrics


def planted_faults(run_dir: str | Path) -> list[tuple[str, str | None]]:
    """(text, planted fault or None) of each training sample of a controlled run, as first presented; [] for a
    run without ground truth. Read here for scoring only: pairs and views never carry the fault."""
    import sqlite3

    db = sqlite3.connect(f"file:{Path(run_dir) / 'run.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT system, question, fault FROM samples WHERE split='train' ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # a run from before the column existed
        return []
    finally:
        db.close()
    return [(sample_text(system, question), fault) for system, question, fault in rows] if any(f for _, _, f in rows) else []


def ground_truth_auc(path: str | Path, items: list[tuple[str, str | None]]) -> dict[str, float | None]:
    """AUC of the saved policy's P(symbolic) against the planted faults: overall ("all") and for each family
    against the clean samples. `items` are (text, fault or None)."""
    from policies.quality import auc
    from policies.reward.policy import RewardPolicy

    meta, _, _ = load_folder(path)
    texts = [t for t, _ in items]
    probs = RewardPolicy(str(path), p=meta["p"]).proba(texts).tolist()
    out = {"all": auc(probs, [bool(f) for _, f in items]), "samples": len(items)}
    for fam in sorted({f for _, f in items if f}):
        keep = [k for k, (_, f) in enumerate(items) if f in (fam, None)]
        out[fam] = auc([probs[k] for k in keep], [items[k][1] == fam for k in keep])
    return out


def describe_policy(path: str | Path) -> dict:
    """The summary `nslora policy show` prints; reads JSON only (no model load)."""
    meta, cal, model_dir = load_folder(path)
    return {
        "path": str(path), "format_version": meta["format_version"], "backbone": meta["backbone"],
        "calibration": cal["method"], "threshold": meta["threshold"], "band": meta["band"], "p": meta["p"],
        "fallback": meta["fallback"], "provenance": meta.get("provenance", {}), "metrics": meta.get("metrics", {}),
        "model_files": sorted(p.name for p in model_dir.iterdir()),
    }
