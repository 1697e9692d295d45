"""Per-sample training signals as pure functions: loss, correctness, C1, saturation.

Everything here works on tensors or plain numbers and is tested without a trainer.
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over each sample's answer tokens, and whether all of them are argmax-correct.

    `labels` is -100 outside the answer; position t of the logits predicts token t+1.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    safe = shift_labels.clamp(min=0)
    tok_loss = F.cross_entropy(shift_logits.transpose(1, 2).float(), safe, reduction="none")
    tok_loss = tok_loss * mask
    counts = mask.sum(dim=1).clamp(min=1)
    loss = tok_loss.sum(dim=1) / counts
    with torch.no_grad():
        hit = (shift_logits.argmax(dim=-1) == safe) | ~mask
        correct = hit.all(dim=1) & mask.any(dim=1)
    return loss, correct


def loss_change_ratio(loss_now: float, loss_before: float | None) -> float | None:
    """C1 = (L_t - L_{t-1}) / L_{t-1}; None when there is no earlier epoch. Negative means progress."""
    if loss_before is None or not math.isfinite(loss_before) or not math.isfinite(loss_now):
        return None
    return (loss_now - loss_before) / max(loss_before, 1e-12)


def is_saturated(c1_by_epoch: list[dict[str, float | None]], misclassified: set[str], k: float, window: int) -> tuple[bool, float | None]:
    """Saturated when the median |C1| over the misclassified samples in the last `window` epochs is below k.

    `c1_by_epoch` is oldest first. Returns (saturated, the median that was compared) — the median is None,
    and the answer False, when there is not yet a full window of C1 values or nobody is misclassified.
    """
    if len(c1_by_epoch) < window or not misclassified:
        return False, None
    values = []
    for epoch in c1_by_epoch[-window:]:
        values += [abs(epoch[i]) for i in misclassified if epoch.get(i) is not None]
    if not values:
        return False, None
    median = statistics.median(values)
    return median < k, median
