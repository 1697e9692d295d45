"""The graph's state: only small, serialisable facts. Model, tokenizer, optimizer and tensors live in the
RunContext the nodes close over, so a checkpoint of this state stays cheap."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict


def round_decisions(old: list[dict] | None, new: list[dict] | None) -> list[dict]:
    """Send branches append their decision; a node that starts a new round resets the list with None."""
    if new is None:
        return []
    return (old or []) + new


class RunState(TypedDict, total=False):
    epoch: int  # last finished training epoch (0 = before training)
    prompts: dict[str, dict[str, Any]]  # sample id -> {"system", "question", "version"[, "since", "loss_at", "prev"]}
    shared_system: str | None  # the optimised shared P (textgrad-only), None when unchanged
    saturated: bool
    candidates: list[str]
    reverted: list[str]  # samples sent back to their previous prompt this epoch (not candidates again this epoch)
    decisions: Annotated[list[dict[str, Any]], round_decisions]
    accuracy: dict[str, float]  # epoch (as str) -> held-out accuracy
