"""The run's outputs: peft adapter, augmented data set (final prompts with provenance), metrics.json.

Every file goes through core.atomic: written to a temporary name, synced and renamed, so neither a reader nor a
crash ever sees half a file.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from nslora.core.atomic import folder_atomic, write_text
from nslora.core.provenance import stamp
from router.state import current_prompts


def augmented_rows(ctx, state) -> list[dict[str, Any]]:
    rewrites: dict[str, list[dict]] = {}
    for r in ctx.store.accepted_rewrites():
        rewrites.setdefault(r["sample_id"], []).append(
            {"epoch": r["epoch"], "engine": r["engine"], "strategy": r["strategy"], "version": r["version"]})
    shared = state.get("shared_system")
    as_row = getattr(ctx.task, "as_row", None)  # your data's own format (task.name=sft), beside ours
    prompts = current_prompts(state, ctx)
    dyn = ctx.store.dynamics([s.id for s in ctx.train], state["epoch"])  # each sample's training dynamics, for data maps
    # Base-model input signals of the original prompt and of the current one (a rewrite of the last round is not
    # measured: nothing trains on it in this run).
    original = ctx.store.inputs_for({s.id: 0 for s in ctx.train})
    current = ctx.store.inputs_for({s.id: prompts[s.id]["since"] or 0 for s in ctx.train})
    rows = []
    for s in ctx.train:
        p = prompts[s.id]
        system = shared or p["system"]
        rows.append({"id": s.id, "system": system, "question": p["question"], "answer": s.answer,
                     "target": s.target, "version": p["version"], "original_system": s.system,
                     "original_question": s.question, "rewritten": p["version"] > 0 or bool(shared),
                     "provenance": json.dumps(rewrites.get(s.id, [])), "dynamics": json.dumps(dyn[s.id]),
                     "inputs": json.dumps({"original": original.get(s.id), "current": current.get(s.id)}),
                     **(as_row(s, system, p["question"]) if as_row is not None else {})})
    return rows


def llm_usage(ctx) -> dict[str, Any]:
    """Calls, tokens, estimated cost and cache hits, summed over the run's recorded rewrites."""
    totals = ctx.store.llm_totals()
    engine, budget = ctx.rewriter.engine, ctx.rewriter.budget
    unpriced = totals.pop("unpriced")
    # A model without a price has cost unknown, not $0 (a paid model missing from rewriter.prices would read as free).
    usage = {"engine": getattr(engine, "name", None), **totals, "cost": None if unpriced else round(totals["cost"], 6)}
    usage["rounds"] = ctx.store.round_times()
    if ctx.rewriter.measured is not None:
        usage["concurrency_speedup"] = ctx.rewriter.measured
    if ctx.rewriter.serial is not None:
        usage["serial_server"] = ctx.rewriter.serial
    if budget is not None:
        usage["budget"] = {**budget.snapshot(), "exhausted": budget.exhausted()}
    return usage


def _both_scorings(ctx) -> dict[str, Any]:
    """Before / final held-out accuracy under strict and flexible scoring alike (whichever is the headline)."""
    out = {}
    for name in ("strict", "flexible"):
        acc = ctx.store.accuracy_by_epoch(name)
        if acc:
            out[name] = {"before": acc.get(0), "final": acc[max(acc)]}
    return out


def _routing(ctx) -> dict[str, Any]:
    """Decisions scored against the planted faults (the controlled benchmark)."""
    from policies.quality import score_run

    from policies.planted import with_presentation

    store = ctx.store
    return score_run(store.decisions(), store.signal_rows(), store.faults(), store.kinds(),
                     with_presentation(ctx.detector(), store.inputs_for({s.id: 0 for s in ctx.train})))


def export_run(path: Path, ctx, state, started: float) -> dict[str, Any]:
    import datasets

    model = ctx.trainer.accelerator.unwrap_model(ctx.trainer.model)
    with folder_atomic(path / "adapter") as d:
        model.save_pretrained(d)

    rows = augmented_rows(ctx, state)
    with folder_atomic(path / "augmented") as d:
        datasets.Dataset.from_list(rows).save_to_disk(str(d))
    write_text(path / "augmented.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    acc = {int(k): v for k, v in state.get("accuracy", {}).items()}
    last = max(acc)
    clock = getattr(ctx, "clock", None)
    wall, processes = clock.wall_seconds() if clock is not None and clock.process is not None else (time.perf_counter() - started, 1)
    counts = ctx.store.counts()
    counts.update({"train": len(ctx.train), "heldout": len(ctx.heldout),
                   "rewritten_samples": sum(r["version"] > 0 for r in rows),
                   "truncated": sum(bool(s.meta.get("truncated")) for s in ctx.train + ctx.heldout)})
    metrics = {
        "heldout_accuracy": {"before": acc[0], "final": acc[last], "per_epoch": {str(k): acc[k] for k in sorted(acc)},
                             "scoring": ctx.cfg.task.scoring, **_both_scorings(ctx)},
        "train": ctx.store.epoch_rows(),
        "counts": counts,
        "llm": llm_usage(ctx),
        "shared_system": state.get("shared_system"),
        **({"routing": _routing(ctx)} if getattr(ctx.task, "has_ground_truth", False) else {}),
        # How well the presentation detector finds planted copies it was not fitted on: the check on unlabelled data.
        **({"calibration": ctx.detector()} if ctx.detector() else {}),
        # Every process of the run (a resumed run's included), each up to its last finished step.
        "wall_seconds": round(wall, 3), "processes": processes,
        # Seconds per graph node and for checkpoints, up to this export (run.sqlite's timings has them per epoch).
        "node_seconds": ctx.store.timing_totals(),
        # The code and config that produced these numbers (nslora/core/provenance.py): a table made from this run later
        # knows whether its scorer or trainer has changed since.
        "code": stamp(dataclasses.asdict(ctx.cfg)),
    }
    write_text(path / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
