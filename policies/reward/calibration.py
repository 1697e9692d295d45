"""Pure functions: reward score -> P(symbolic), the budget threshold, and the quality metrics.

Calibrations are plain dicts of numbers so they save as JSON (no pickle: a policy folder must be safe to load).
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("isotonic", "platt")


def fit_calibration(scores, labels, method: str) -> dict:
    """Fit score -> P(label 1) on held-out items; returns a JSON-able dict that `apply_calibration` reads."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise ValueError("calibration needs both chosen (1) and rejected (0) items")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, labels)
        # IsotonicRegression predicts by linear interpolation between these knots, clipped at the ends.
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6).fit(scores.reshape(-1, 1), labels)  # C large: plain Platt, no shrinkage
        return {"method": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    raise ValueError(f"calibration={method!r} is not one of {', '.join(METHODS)}")


def apply_calibration(cal: dict, scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if cal["method"] == "isotonic":
        return np.interp(scores, np.asarray(cal["x"], float), np.asarray(cal["y"], float))
    return 1.0 / (1.0 + np.exp(-(cal["a"] * scores + cal["b"])))


def budget_threshold(probs, p: float) -> float:
    """The P at or above which a share p of these items goes symbolic (RouteLLM-style budget).

    Ties at the threshold (isotonic plateaus) all route together, so the realised share can exceed p.
    """
    from policies.base import budget_count

    probs = np.sort(np.asarray(probs, dtype=float))[::-1]
    k = budget_count(len(probs), p)
    return float(probs[k - 1]) if k else math.inf


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    c, r = np.asarray(chosen_scores, float), np.asarray(rejected_scores, float)
    return float(np.mean(c > r)) if len(c) else float("nan")


def roc_auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, int)
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width P bins, weighted by bin size."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, float)
    if not len(probs):
        return float("nan")
    idx = np.minimum((probs * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(labels[m].mean() - probs[m].mean())
    return float(err)
