"""A presentation detector calibrated on planted copies: no ground truth needed, so it works on your own data.

As AUM plants "threshold samples" whose labels it knows, a share of the training samples (signals.planted_share)
is copied and a presentation fault planted in each copy (signals.planted_families, taking turns; the built-ins of
the controlled benchmark, applied sentence by sentence to any text). The frozen base model reads copies and
originals (adapters.inputs); a logistic regression on the input signals learns to tell a planted copy from an
original, and its probability is each prompt's `presentation` score (in `SampleView.inputs`, read by the
`presentation` policy). The copies are never trained on, rewritten or exported.

How well it finds copies it was not fitted on (cross-validated by sample, overall and per family) goes to
metrics.json: an estimate of detection quality on data that has no labels. Its limit: a fault unlike every
planted family is found only as far as it moves the same signals.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from typing import Any

from policies.base import SampleView, register
from policies.signal import _Ranked
from nslora.tasks.base import Sample

# a_alone is the same for a copy and its original (one target), so it cannot tell them apart; it would only learn
# which answers the planted samples happened to have.
FEATURES = ("q_nll", "q_top", "a_loss", "ifd")
FOLDS = 5


def resolve_families(names: list[str]) -> list[tuple[str, Any]]:
    """(name, function) of each planted family: a built-in of tasks.controlled, or 'package.module:function'."""
    from nslora.core import plugins
    from nslora.tasks.controlled import FAMILIES

    return [(n, plugins.resolve("signals.planted_families", n, FAMILIES, "a function (sample, rng) -> Sample", accept=callable))
            for n in names]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def plant(sample: Sample, family: str, fn, rng: random.Random) -> Sample | None:
    """`sample` with `family` planted in its question, or None when the family leaves it unchanged (a question in
    a shape it does not know). A question without line breaks is split into one line per sentence for the family
    (the built-ins work line by line) and joined back with spaces."""
    lined = "\n" in sample.question.strip()
    shown = sample.question if lined else "\n".join(_sentences(sample.question))
    out = fn(dataclasses.replace(sample, question=shown), rng).question
    if not lined:
        out = " ".join(out.split("\n"))
    return None if out.strip() == sample.question.strip() else dataclasses.replace(sample, question=out)


def planted_copies(train: list[Sample], share: float, families: list[tuple[str, Any]], seed: int) -> list[tuple[str, str, Sample]]:
    """(sample id, family, copy) for a share of the training samples; each chosen sample gets the next family in
    turn that changes it (a sample no family changes gets no copy)."""
    if not share or not train:
        return []
    rng = random.Random(f"ns-lora-planted-{seed}")
    chosen = sorted(rng.sample(range(len(train)), max(1, round(share * len(train)))))
    out, turn = [], 0
    for i in chosen:
        s = train[i]
        for k in range(len(families)):
            name, fn = families[(turn + k) % len(families)]
            copy = plant(s, name, fn, random.Random(f"{seed}-{s.id}-planted-{name}"))
            if copy is not None:
                out.append((s.id, name, copy))
                turn = (turn + k + 1) % len(families)
                break
    return out


def _row(inputs: dict[str, float | None]) -> list[float] | None:
    values = [inputs.get(f) for f in FEATURES]
    return None if any(v is None or not math.isfinite(v) for v in values) else [float(v) for v in values]


def fit_detector(originals: dict[str, dict], copies: list[dict]) -> dict[str, Any] | None:
    """The detector from the original prompts' input signals (sample id -> signals) and the copies' (each a dict
    with sample_id, family and the signals): standardised features, a balanced L2 logistic regression, and its
    out-of-fold AUC (folds grouped by sample, so a copy is never judged by a model that saw its original).
    None when there are too few of either to fit."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    # (features, label, sample id, family): the originals first, then the copies.
    data = [(_row(x), 0, i, None) for i, x in sorted(originals.items())]
    data += [(_row(c), 1, c["sample_id"], c["family"]) for c in sorted(copies, key=lambda c: (c["sample_id"], c["family"]))]
    data = [d for d in data if d[0] is not None]
    xs, ys, groups, fams = (list(col) for col in zip(*data)) if data else ([], [], [], [])
    n_pos = sum(ys)
    if n_pos < FOLDS or len(ys) - n_pos < FOLDS:
        return None
    x, y = np.array(xs), np.array(ys)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    model = lambda: LogisticRegression(C=1.0, class_weight="balanced")
    # Folds grouped by sample: the ids sorted and dealt round-robin (no randomness to seed).
    fold_of = {g: k % FOLDS for k, g in enumerate(sorted(set(groups)))}
    folds = np.array([fold_of[g] for g in groups])
    oof = np.zeros(len(y))
    for k in range(FOLDS):
        test = folds == k
        if y[~test].min() == y[~test].max():
            return None
        oof[test] = model().fit(z[~test], y[~test]).predict_proba(z[test])[:, 1]
    final = model().fit(z, y)
    by_family = {}
    for fam in sorted({f for f in fams if f}):
        keep = np.array([f is None or f == fam for f in fams])
        by_family[fam] = float(roc_auc_score(y[keep], oof[keep]))
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": final.coef_[0].tolist(), "intercept": float(final.intercept_[0]),
            "copies": int(n_pos), "originals": int(len(y) - n_pos), "auc": float(roc_auc_score(y, oof)), "by_family": by_family}


def presentation_score(detector: dict[str, Any] | None, inputs: dict[str, float | None]) -> float | None:
    """The detector's probability that a prompt reads like a planted copy (None without a detector or a signal)."""
    if not detector or (row := _row(inputs)) is None:
        return None
    t = detector["intercept"] + sum(c * (v - m) / s for c, v, m, s in zip(detector["coef"], row, detector["mean"], detector["scale"]))
    return 1.0 / (1.0 + math.exp(-t)) if t > -700 else 0.0


def with_presentation(detector: dict[str, Any] | None, inputs: dict[str, dict]) -> dict[str, dict]:
    """Sample id -> its input signals with the detector's `presentation` score added (unchanged without one)."""
    if not detector:
        return inputs
    return {i: {**x, "presentation": presentation_score(detector, x)} for i, x in inputs.items()}


def score_originals(originals: dict[str, dict], copies: list[dict]) -> dict[str, dict]:
    """The original prompts' input signals with the `presentation` score of a detector fitted on them and the
    copies (unchanged when nothing was planted): what reports and reward pairs read from a finished run."""
    return with_presentation(fit_detector(originals, copies) if copies else None, originals)


@register
class PresentationPolicy(_Ranked):
    """The candidates whose prompts read most like a planted presentation fault (the planted-copy detector's score,
    `view.inputs["presentation"]`) go symbolic first. Needs signals.inputs and signals.planted_share > 0."""

    name = "presentation"
    signal = "presentation score (planted-copy detector)"
    needs_planted = True  # the run refuses it without signals.planted_share

    def score(self, view: SampleView) -> float:
        s = view.inputs.get("presentation")
        return -math.inf if s is None else s
