"""The graph's state: only small, serialisable facts. Model, tokenizer, optimizer and tensors live in the
RunContext the nodes close over, so a checkpoint of this state stays cheap."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from nslora.core.errors import UserError


def round_decisions(old: list[dict] | None, new: list[dict] | None) -> list[dict]:
    """Send branches append their decisions; a node that records them (or starts a new round) resets the list with
    None, so later checkpoints do not carry them."""
    if new is None:
        return []
    return (old or []) + new


class RunState(TypedDict, total=False):
    epoch: int  # last finished training epoch (0 = before training)
    # Sample id -> the epoch its current prompt was written, for rewritten samples only (the rest train on their
    # original prompt). The texts live in run.sqlite's prompts table, so a checkpoint grows with what was rewritten,
    # not with the data set.
    prompt_epochs: dict[str, int]
    shared_system: str | None  # the optimised shared P (textgrad-only), None when unchanged
    saturated: bool
    candidates: int  # how many samples this epoch's routing round decides (their ids: Store.candidates(epoch))
    decisions: Annotated[list[dict[str, Any]], round_decisions]
    accuracy: dict[str, float]  # epoch (as str) -> held-out accuracy


def current_prompts(state, ctx, sample_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each sample's prompt now ({"system", "question", "version", "since", "loss_at", "prev_since"}): its original
    (version 0) unless the state points to a rewrite in run.sqlite's prompts table. All training samples by default.
    `ctx` is the RunContext (its store, train and by_id); read by the nodes and by the export alike."""
    epochs = state.get("prompt_epochs") or {}
    ids = [s.id for s in ctx.train] if sample_ids is None else sample_ids
    rows = ctx.store.prompt_rows({i: epochs[i] for i in ids if i in epochs})
    out = {}
    for i in ids:
        if i in epochs:
            if i not in rows:
                raise UserError(f"{ctx.store.path} has no prompt of sample {i} written at epoch {epochs[i]}, which the "
                                "checkpoint points to; the run folder is damaged: start the run again")
            out[i] = rows[i]
        else:
            s = ctx.by_id[i]
            out[i] = {"system": s.system, "question": s.question, "version": 0, "since": None, "loss_at": None, "prev_since": None}
    return out
