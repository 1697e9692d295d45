"""Routing quality against a known ground truth (the controlled benchmark): did the policy send the samples
whose deficit lies in their presentation to the symbolic branch?

Pure functions over plain data, tested on hand-built cases. Per routing round, "routed symbolic" is scored
against "has a planted fault" among that round's candidates: precision, recall, F1, and what random routing
of the same number of candidates gets in expectation (precision = the faulty share of the candidates,
recall = the routed share, F1 of the two). Over the run: the same summed over rounds, and the cumulative
recall, the share of all faulty training samples routed symbolic at least once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _prf(tp: float, routed: float, relevant: float) -> tuple[float | None, float | None, float | None]:
    precision = tp / routed if routed else None
    recall = tp / relevant if relevant else None
    if not precision or not recall:
        return precision, recall, (0.0 if precision is not None and recall is not None else None)
    return precision, recall, 2 * precision * recall / (precision + recall)


def round_quality(decisions: list[tuple[str, str]], faults: dict[str, str | None]) -> dict[str, Any]:
    """One round: decisions are (sample id, route) of its candidates; faults maps sample id -> family or None
    (a sample missing from it is clean)."""
    n = len(decisions)
    routed = {i for i, route in decisions if route == "symbolic"}
    faulty = {i for i, _ in decisions if faults.get(i)}
    tp = len(routed & faulty)
    precision, recall, f1 = _prf(tp, len(routed), len(faulty))
    # Random routing of len(routed) of the n candidates: E[tp] = routed * faulty / n.
    r_precision, r_recall, r_f1 = _prf(len(routed) * len(faulty) / n, len(routed), len(faulty)) if n else (None, None, None)
    by_family: dict[str, dict[str, int]] = {}
    for i in faulty:
        fam = by_family.setdefault(str(faults[i]), {"candidates": 0, "routed": 0})
        fam["candidates"] += 1
        fam["routed"] += i in routed
    return {"candidates": n, "faulty": len(faulty), "symbolic": len(routed), "true_positives": tp,
            "precision": precision, "recall": recall, "f1": f1,
            "random": {"precision": r_precision, "recall": r_recall, "f1": r_f1}, "by_family": by_family}


def routing_quality(rounds: dict[int, list[tuple[str, str]]], faults: dict[str, str | None],
                    rewritten: dict[int, set[str]] | None = None) -> dict[str, Any]:
    """Every round's quality, the totals over rounds, and the cumulative recall of the faulty training samples.

    `rewritten`: per round, the samples already on a rewritten prompt: their planted fault is no longer what the
    model sees, so in that round they count as clean (routing them again is not a hit)."""
    rewritten = rewritten or {}
    per_round = {str(e): round_quality(d, {i: f for i, f in faults.items() if i not in rewritten.get(e, set())})
                 for e, d in sorted(rounds.items())}
    tp = sum(r["true_positives"] for r in per_round.values())
    routed = sum(r["symbolic"] for r in per_round.values())
    relevant = sum(r["faulty"] for r in per_round.values())
    precision, recall, f1 = _prf(tp, routed, relevant)
    expected = sum(r["symbolic"] * r["faulty"] / r["candidates"] for r in per_round.values() if r["candidates"])
    r_precision, r_recall, r_f1 = _prf(expected, routed, relevant)
    faulty_all = {i for i, f in faults.items() if f}
    ever = {i for d in rounds.values() for i, route in d if route == "symbolic"}
    return {"planted": len(faulty_all), "train": len(faults), "rounds": per_round,
            "total": {"precision": precision, "recall": recall, "f1": f1,
                      "random": {"precision": r_precision, "recall": r_recall, "f1": r_f1}},
            "cumulative_recall": len(ever & faulty_all) / len(faulty_all) if faulty_all else None}


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for telling label True from False (ties count half): the chance a
    random positive scores above a random negative. 0.5 = no signal; below 0.5 = the signal runs the other way.
    None when either class is empty."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted(scores)
    # Mann-Whitney: the mid-rank of each positive among all scores.
    first: dict[float, int] = {}
    count: dict[float, int] = defaultdict(int)
    for r, v in enumerate(ranked):
        first.setdefault(v, r)
        count[v] += 1
    rank_sum = sum(first[v] + (count[v] + 1) / 2 for v in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


SIGNALS = ("loss", "c1", "c2")


def detection(signals: list[dict], faults: dict[str, str | None]) -> dict[str, Any]:
    """How well each raw training signal tells the faulty training samples from the clean ones: per signal, the
    AUC of its value (higher on faulty samples = above 0.5) over every sample still on its original prompt, per
    epoch and averaged over epochs, overall and for each family against the clean samples."""
    families = sorted({f for f in faults.values() if f})
    out: dict[str, Any] = {}
    for name in SIGNALS:
        per_epoch: dict[str, dict[str, float | None]] = {}
        for epoch in sorted({r["epoch"] for r in signals}):
            rows = [r for r in signals if r["epoch"] == epoch and not r["prompt_version"] and r[name] is not None]
            if not rows:
                continue
            value = {r["sample_id"]: r[name] for r in rows}
            cell = {"all": auc(list(value.values()), [bool(faults.get(i)) for i in value])}
            for fam in families:
                keep = [i for i in value if faults.get(i) in (fam, None)]
                cell[fam] = auc([value[i] for i in keep], [faults.get(i) == fam for i in keep])
            per_epoch[str(epoch)] = cell
        mean = {}
        for key in ["all", *families]:
            vals = [c[key] for c in per_epoch.values() if c.get(key) is not None]
            mean[key] = sum(vals) / len(vals) if vals else None
        out[name] = {"per_epoch": per_epoch, "mean": mean}
    return out


def score_run(decisions: list[dict], signals: list[dict], faults: dict[str, str | None]) -> dict[str, Any]:
    """`routing_quality` from a run's rows: decisions (epoch, sample_id, route, path; reverts are not routing),
    signals (epoch, sample_id, prompt_version: who trained on a rewritten prompt when) and the planted faults."""
    rounds: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in decisions:
        if d["path"] != "revert":
            rounds[d["epoch"]].append((d["sample_id"], d["route"]))
    rewritten: dict[int, set[str]] = defaultdict(set)
    for r in signals:
        if r["prompt_version"]:
            rewritten[r["epoch"]].add(r["sample_id"])
    return {**routing_quality(dict(rounds), faults, dict(rewritten)), "detection": detection(signals, faults)}
