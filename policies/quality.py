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


def round_quality(decisions: list[tuple[str, str]], faults: dict[str, str | None],
                  kinds: dict[str, str | None] | None = None) -> dict[str, Any]:
    """One round: decisions are (sample id, route) of its candidates; faults maps sample id -> family or None
    (a sample missing from it is clean); kinds marks the knowledge samples (hard but clean: a negative, so
    routing one symbolic is a false positive; counted apart too)."""
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
    knowledge = {i for i, _ in decisions if (kinds or {}).get(i) == "knowledge"}
    return {"candidates": n, "faulty": len(faulty), "symbolic": len(routed), "true_positives": tp,
            "knowledge": len(knowledge), "knowledge_routed": len(knowledge & routed),
            "precision": precision, "recall": recall, "f1": f1,
            "random": {"precision": r_precision, "recall": r_recall, "f1": r_f1}, "by_family": by_family}


def routing_quality(rounds: dict[int, list[tuple[str, str]]], faults: dict[str, str | None],
                    rewritten: dict[int, set[str]] | None = None, kinds: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Every round's quality, the totals over rounds, and the cumulative recall of the faulty training samples.

    `rewritten`: per round, the samples already on a rewritten prompt: their planted fault is no longer what the
    model sees, so in that round they count as clean (routing them again is not a hit)."""
    rewritten = rewritten or {}
    per_round = {str(e): round_quality(d, {i: f for i, f in faults.items() if i not in rewritten.get(e, set())}, kinds)
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


def auprc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the precision-recall curve as average precision (higher scores flag positives; tied scores are
    one threshold): compare it with the positives' base rate, what a blind signal gets. None without positives."""
    n_pos = sum(labels)
    if not n_pos or len(scores) == n_pos:
        return None
    groups: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for s_, y in zip(scores, labels):
        groups[s_][0] += 1
        groups[s_][1] += int(y)
    seen = hits = 0
    total = 0.0
    for value in sorted(groups, reverse=True):
        n, pos = groups[value]
        seen, hits = seen + n, hits + pos
        total += pos * hits / seen
    return total / n_pos


# Per epoch, from the training forward; then the dynamics over the epochs so far; then the base model's reading of
# the original prompt (one value per sample).
SIGNALS = ("loss", "c1", "c2", "p_gold", "margin", "el2n")
DYNAMICS = ("confidence", "variability", "correct_share", "forgetting", "aum")
INPUTS = ("q_nll", "q_top", "a_loss", "a_alone", "ifd", "presentation")  # presentation: the planted-copy detector


def detection_cell(value: dict[str, float], faults: dict[str, str | None], kinds: dict[str, str | None]) -> dict[str, Any]:
    """How well one signal's values (sample id -> value) flag the presentation-faulted samples: AUC against all other
    samples (`all`), against the clean ones per family, against the knowledge samples (`knowledge`: hard but clean,
    whose right route is numerical), and the average precision beside the base rate."""
    ids = list(value)
    faulty = [bool(faults.get(i)) for i in ids]
    cell: dict[str, Any] = {"all": auc([value[i] for i in ids], faulty),
                            "auprc": auprc([value[i] for i in ids], faulty),
                            "base_rate": sum(faulty) / len(ids) if ids else None}
    for fam in sorted({f for f in faults.values() if f}):
        keep = [i for i in ids if faults.get(i) == fam or (not faults.get(i) and not kinds.get(i))]
        cell[fam] = auc([value[i] for i in keep], [faults.get(i) == fam for i in keep])
    knowledge = [i for i in ids if faults.get(i) or kinds.get(i) == "knowledge"]
    cell["knowledge"] = auc([value[i] for i in knowledge], [bool(faults.get(i)) for i in knowledge])
    return cell


def detection(signals: list[dict], faults: dict[str, str | None], kinds: dict[str, str | None] | None = None,
              inputs: dict[str, dict[str, float | None]] | None = None) -> dict[str, Any]:
    """Per signal, `detection_cell` over every training sample still on its original prompt, per epoch and averaged
    over epochs (`mean`): the training signals of each epoch, the dynamics over the epochs up to it, and the base
    model's input signals of the original prompts (one 'epoch', 0). Higher on faulty samples = AUC above 0.5."""
    from adapters.signals import dynamics

    kinds = kinds or {}
    per_epoch: dict[str, dict[str, dict]] = {name: {} for name in (*SIGNALS, *DYNAMICS)}
    history: dict[str, list[dict]] = defaultdict(list)
    for epoch in sorted({r["epoch"] for r in signals if r["epoch"] > 0}):
        rows = [r for r in signals if r["epoch"] == epoch and not r["prompt_version"]]
        for r in rows:
            history[r["sample_id"]].append(r)
        for name in SIGNALS:
            value = {r["sample_id"]: r[name] for r in rows if r.get(name) is not None}
            if value:
                per_epoch[name][str(epoch)] = detection_cell(value, faults, kinds)
        dyn = {r["sample_id"]: dynamics(history[r["sample_id"]]) for r in rows}
        for name in DYNAMICS:
            value = {i: d[name] for i, d in dyn.items() if d[name] is not None}
            if value:
                per_epoch[name][str(epoch)] = detection_cell(value, faults, kinds)
    for name in INPUTS:
        value = {i: x[name] for i, x in (inputs or {}).items() if x.get(name) is not None}
        if value:
            per_epoch[name] = {"0": detection_cell(value, faults, kinds)}
    out: dict[str, Any] = {}
    for name, cells in per_epoch.items():
        if not cells:
            continue
        mean = {}
        for key in dict.fromkeys(k for c in cells.values() for k in c):
            vals = [c[key] for c in cells.values() if c.get(key) is not None]
            mean[key] = sum(vals) / len(vals) if vals else None
        out[name] = {"per_epoch": cells, "mean": mean}
    return out


def score_run(decisions: list[dict], signals: list[dict], faults: dict[str, str | None],
              kinds: dict[str, str | None] | None = None, inputs: dict[str, dict[str, float | None]] | None = None) -> dict[str, Any]:
    """`routing_quality` from a run's rows: decisions (epoch, sample_id, route, path; reverts are not routing),
    signals (epoch, sample_id, prompt_version: who trained on a rewritten prompt when), the planted faults, the
    ground-truth kinds and the original prompts' input signals (for the detection table)."""
    rounds: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in decisions:
        if d["path"] != "revert":
            rounds[d["epoch"]].append((d["sample_id"], d["route"]))
    rewritten: dict[int, set[str]] = defaultdict(set)
    for r in signals:
        if r["prompt_version"]:
            rewritten[r["epoch"]].add(r["sample_id"])
    out = routing_quality(dict(rounds), faults, dict(rewritten), kinds)
    knowledge = {i for i, k in (kinds or {}).items() if k == "knowledge"}
    if knowledge:  # hard but clean: routing one symbolic is already a false positive above; here, how many
        routed = {i for d in rounds.values() for i, route in d if route == "symbolic"}
        out["knowledge"] = {"samples": len(knowledge), "ever_routed": len(routed & knowledge) / len(knowledge)}
    return {**out, "detection": detection(signals, faults, kinds, inputs)}
