"""Per-sample training signals as pure functions: loss, correctness, C1, saturation, training dynamics.

Everything here works on tensors or plain numbers and is tested without a trainer.
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample row, position, gold token) of every logit that predicts an answer token: position t predicts token
    t+1, and `labels` is -100 outside the answer. Only these logits enter the loss and the statistics."""
    shift = labels[:, 1:]
    rows, cols = (shift != -100).nonzero(as_tuple=True)
    return rows, cols, shift[rows, cols]


def scored_loss(logits: torch.Tensor, gold: torch.Tensor, rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy per sample over its scored logits (N, vocab) and whether all of them are argmax-correct;
    `rows` says which of the `n` samples each logit belongs to. A sample without scored logits: loss 0, not correct."""
    tok_loss = F.cross_entropy(logits.float(), gold, reduction="none")
    counts = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, torch.ones_like(tok_loss))
    loss = torch.zeros(n, dtype=tok_loss.dtype, device=logits.device).index_add(0, rows, tok_loss) / counts.clamp(min=1)
    with torch.no_grad():
        misses = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, (logits.argmax(dim=-1) != gold).float())
        correct = (misses == 0) & (counts > 0)
    return loss, correct


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`scored_loss` from full (B, T, vocab) logits and their labels."""
    rows, cols, gold = scored_positions(labels)
    return scored_loss(logits[:, :-1][rows, cols], gold, rows, labels.shape[0])


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


# ------------------------------------------------------------------------------------ training dynamics

# Per epoch, from the training forward's logits (no extra pass): each is a mean over the sample's answer tokens.
TOKEN_STATS = ("p_gold", "margin", "el2n")


@torch.no_grad()
def answer_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """`scored_stats` from full (B, T, vocab) logits and their labels."""
    rows, cols, gold = scored_positions(labels)
    return scored_stats(logits[:, :-1][rows, cols], gold, rows, labels.shape[0])


@torch.no_grad()
def scored_stats(logits: torch.Tensor, gold: torch.Tensor, rows: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Each of the `n` samples' mean over its answer tokens (the scored logits, (N, vocab), `rows` naming each one's
    sample) of: the gold token's probability (`p_gold`, dataset cartography's confidence for one epoch), the gold
    logit minus the largest other logit (`margin`, what AUM averages over epochs) and the L2 distance of the
    predicted distribution from the one-hot gold token (`el2n`). NaN for a sample without answer tokens."""
    picked = logits.float()
    probs = picked.softmax(dim=-1)
    p_gold = probs.gather(1, gold[:, None])[:, 0]
    gold_logit = picked.gather(1, gold[:, None])[:, 0]
    other = picked.scatter(1, gold[:, None], float("-inf")).max(dim=1).values
    el2n = (probs.pow(2).sum(dim=1) - 2 * p_gold + 1).clamp(min=0).sqrt()  # ||p - e_gold||, without building e_gold
    counts = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, torch.ones_like(p_gold))
    out = {}
    for name, per_token in (("p_gold", p_gold), ("margin", gold_logit - other), ("el2n", el2n)):
        sums = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, per_token)
        out[name] = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return out


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def dynamics(history: list[dict]) -> dict[str, float | None]:
    """A sample's training dynamics over the epochs so far, from its per-epoch signals rows (oldest first, each with
    `correct` and, where recorded, `p_gold`, `margin`, `el2n`):
    `confidence` and `variability` (mean and population std of p_gold over epochs: Swayamdipta et al. 2020),
    `correct_share` (share of epochs argmax-correct), `forgetting` (right -> wrong transitions: Toneva et al. 2019),
    `aum` (mean margin over epochs: Pleiss et al. 2020; negative for a sample the model keeps contradicting),
    `el2n` (after the first epoch: Paul et al. 2021). None where no epoch recorded the statistic."""
    p = _finite(r.get("p_gold") for r in history)
    margins = _finite(r.get("margin") for r in history)
    correct = [bool(r["correct"]) for r in history if r.get("correct") is not None]
    first_el2n = _finite([history[0].get("el2n")]) if history else []
    mean = statistics.fmean(p) if p else None
    return {
        "confidence": mean,
        "variability": statistics.pstdev(p) if p else None,
        "correct_share": sum(correct) / len(correct) if correct else None,
        "forgetting": float(sum(a and not b for a, b in zip(correct, correct[1:]))) if correct else None,
        "aum": statistics.fmean(margins) if margins else None,
        "el2n": first_el2n[0] if first_el2n else None,
    }
