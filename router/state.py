"""The graph's state: only small, serialisable facts. Model, tokenizer, optimizer and tensors live in the
RunContext the nodes close over, so a checkpoint of this state stays cheap."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict


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
