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
    return routing_quality(dict(rounds), faults, dict(rewritten))
