"""`nslora policy show` as a page: a saved reward policy's calibration and, given runs or pairs, its score
histogram and reliability diagram, in the same self-contained style as the run report.

    from nslora.report.policy import write_policy_report
    write_policy_report("policies/mine", run_dirs=["runs/a", "runs/b"])   # -> policies/mine/report.html

Without runs or pairs it reads JSON only (no model load): the summary and the calibration map score -> P.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from nslora.report import plots
from nslora.report.html import _kpis, _page, _table, write_atomic


def score_items(policy_dir: str | Path, pairs_split) -> dict[str, Any]:
    """Raw scores, calibrated P(symbolic) and labels (1: the chosen side of a pair) of a pairs split's texts."""
    from policies.reward.calibration import apply_calibration
    from policies.reward.folder import load_folder
    from policies.reward.policy import RewardPolicy
    from policies.reward.train import _unique_items

    meta, cal, _ = load_folder(policy_dir)
    texts, labels = _unique_items(pairs_split)
    scores = np.asarray(RewardPolicy(str(policy_dir), p=meta["p"]).score_texts(texts), dtype=float)
    return {"scores": scores, "probs": apply_calibration(cal, scores), "labels": np.asarray(labels, dtype=int)}


def reliability(probs, labels, bins: int = 10) -> list[dict[str, float]]:
    """Per probability bin: mean predicted P, observed share of label 1, count (empty bins left out)."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "predicted": float(probs[m].mean()),
                        "observed": float(labels[m].mean()), "n": int(m.sum())})
    return out


def _figures(cal: dict, meta: dict, scored: dict | None) -> str:
    from policies.reward.calibration import apply_calibration

    plt = plots._plt()
    n = 3 if scored else 1
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.5))
    axes = np.atleast_1d(axes)
    thr, band = float(meta["threshold"]), float(meta["band"])
    if scored:
        lo, hi = float(scored["scores"].min()), float(scored["scores"].max())
    elif cal["method"] == "isotonic" and cal.get("x"):
        lo, hi = min(cal["x"]), max(cal["x"])
    else:
        lo, hi = -5.0, 5.0
    pad = (hi - lo) * 0.1 or 1.0
    xs = np.linspace(lo - pad, hi + pad, 200)
    ax = axes[0]
    ax.plot(xs, apply_calibration(cal, xs), color=plots.PALETTE["loss"], lw=2, label=f"{cal['method']} calibration")
    ax.axhline(thr, color=plots.PALETTE["sat"], ls="--", lw=1.5, label=f"threshold {thr:.2f}")
    ax.axhspan(thr - band, thr + band, color=plots.PALETTE["sat"], alpha=0.12, label=f"uncertainty band ±{band:.2f}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("reward score")
    ax.set_ylabel("P(symbolic)")
    ax.set_title("Calibration map")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    if scored:
        ax = axes[1]
        s, y = scored["scores"], scored["labels"]
        bins = np.linspace(lo, hi, 21) if hi > lo else 10
        ax.hist(s[y == 0], bins=bins, alpha=0.65, color=plots.PALETTE["numerical"], label="rejected side (numerical)")
        ax.hist(s[y == 1], bins=bins, alpha=0.65, color=plots.PALETTE["symbolic"], label="chosen side (symbolic)")
        ax.set_xlabel("reward score")
        ax.set_ylabel("items")
        ax.set_title("Score histogram")
        ax.legend(frameon=False, fontsize=8)
        ax = axes[2]
        rel = reliability(scored["probs"], y)
        ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=1.2, label="perfectly calibrated")
        ax.plot([r["predicted"] for r in rel], [r["observed"] for r in rel], "o-", color=plots.PALETTE["acc"], lw=2,
                label="this policy")
        for r in rel:
            ax.annotate(str(r["n"]), (r["predicted"], r["observed"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("predicted P(symbolic)")
        ax.set_ylabel("observed share symbolic")
        ax.set_title("Reliability (calibration curve)")
        ax.legend(frameon=False, fontsize=8, loc="upper left")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    fig.tight_layout()
    return plots.to_svg(fig)


def render_policy(policy_dir: str | Path, scored: dict | None = None) -> str:
    from policies.reward.evaluate import describe_policy
    from policies.reward.folder import load_folder

    meta, cal, _ = load_folder(policy_dir)
    d = describe_policy(policy_dir)
    m = d.get("metrics") or {}

    def num(k):
        v = m.get(k)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "—"

    items = [("pairwise accuracy", num("pairwise_accuracy")), ("ROC-AUC", num("roc_auc")), ("ECE", num("ece")),
             ("threshold ± band", f"{d['threshold']:.2f} ± {d['band']:.2f}")]
    rows = [[escape(k), escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))]
            for k, v in d.items() if k not in ("metrics", "model_files")]
    rows += [[escape(f"metrics.{k}"), escape(str(v))] for k, v in sorted(m.items())]
    note = ("Scored on the given runs' or pairs' items: the histogram shows how far apart the two sides score; the "
            "reliability curve, whether P(symbolic) means what it says (on the diagonal is calibrated)."
            if scored else "Pass runs (or pairs) to add the score histogram and the reliability curve; this page "
            "reads the policy's JSON only.")
    body = (f'<section id="policy">{_kpis(items)}<h2>Calibration</h2><p class="note">{escape(note)} Inside the '
            f'shaded band the policy defers to its fallback ({escape(str(d["fallback"]))}).</p>'
            f'<div class="card">{_figures(cal, meta, scored)}</div><h2>Summary</h2>'
            f'{_table(["key", "value"], rows)}</section>')
    return _page(f"ns-lora reward policy · {Path(policy_dir).name}", str(Path(policy_dir).resolve()), body)


def write_policy_report(policy_dir: str | Path, run_dirs=None, out: str | Path | None = None, pairs=None,
                        criterion: str | None = None) -> Path:
    """Write the page (default POLICY_DIR/report.html). `pairs`: a pairs split (rows with chosen / rejected);
    or `run_dirs`: pairs are built from those runs with the criterion the policy was trained on."""
    scored = None
    if pairs is None and run_dirs:
        from policies.reward.folder import load_folder
        from policies.reward.pairs import build_pairs

        meta, _, _ = load_folder(policy_dir)
        prov = meta.get("provenance", {})
        built = build_pairs(run_dirs, criterion or prov.get("criterion", "c1"), high_share=prov.get("high_share", 0.5))
        pairs = list(built["train"]) + list(built["test"])
    if pairs is not None:
        scored = score_items(policy_dir, pairs)
    return write_atomic(out or Path(policy_dir) / "report.html", render_policy(policy_dir, scored))
