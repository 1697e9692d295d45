"""Matplotlib figures (Agg backend) rendered to inline SVG strings: nothing is fetched when the page opens."""

from __future__ import annotations

import io
import math
import re
from typing import Any

from nslora.report import data as D

PALETTE = {"loss": "#1f5fa8", "acc": "#c2571a", "sat": "#d62728", "symbolic": "#c2571a", "numerical": "#1f5fa8",
           "wrong": "#c2571a", "right": "#2a9d55", "grid": "#e3e6ea"}
PATH_COLOURS = ["#1f5fa8", "#c2571a", "#2a9d55", "#7b4fb0", "#b08a1f", "#1fa3a8", "#a81f5f", "#666666"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "none", "svg.hashsalt": "ns-lora", "font.size": 10, "axes.titlesize": 11,
        "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.color": PALETTE["grid"], "grid.linewidth": 0.8, "axes.axisbelow": True,
        "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"],
    })
    return plt


_counter = [0]


def to_svg(fig) -> str:
    """The figure as an <svg> element (no XML prologue, no metadata links), then closed."""
    import matplotlib.pyplot as plt

    _counter[0] += 1
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # Several figures share one page: give each figure's ids a prefix so clip paths never collide.
    prefix = f"f{_counter[0]}-"
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    svg = re.sub(r'((?:xlink:)?href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}{m.group(2)}"', svg)
    # Scale with the page instead of a fixed size in points.
    # Scale with the page, but never above the figure's own size (fonts stay the size they were drawn at).
    svg = re.sub(r'<svg([^>]*?) width="([^"]+)" height="[^"]+"',
                 lambda m: f'<svg{m.group(1)} class="plot" style="max-width:{m.group(2)}" preserveAspectRatio="xMidYMid meet"',
                 svg, count=1)
    return svg


def training_curves(run: D.Run) -> str | None:
    epochs = D.epoch_table(run)
    acc = D.heldout_accuracy(run)
    if not epochs and not acc:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = [e["epoch"] for e in epochs]
    sat = [e["epoch"] for e in epochs if e["saturated"]]
    ax1.plot(xs, [e["train_loss"] for e in epochs], "o-", color=PALETTE["loss"], lw=2, label="mean training loss")
    ax1.set_title("Training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax2.plot(sorted(acc), [acc[e] for e in sorted(acc)], "o-", color=PALETTE["acc"], lw=2, label="held-out accuracy")
    if epochs:
        ax2.plot(xs, [e["train_correct"] for e in epochs], "s--", color=PALETTE["loss"], lw=1.2, alpha=0.7,
                 label="training samples correct")
    ax2.set_title("Accuracy")
    ax2.set_xlabel("epoch (0 = before training)")
    ax2.set_ylabel("share correct")
    ax2.set_ylim(-0.03, 1.03)
    for ax in (ax1, ax2):
        for i, e in enumerate(sat):
            ax.axvline(e, color=PALETTE["sat"], ls=":", lw=1.5, label="saturated → routing" if i == 0 else None)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.margins(x=0.06, y=0.08)
    for e in sat:
        y = next(x["train_loss"] for x in epochs if x["epoch"] == e)
        ax1.plot([e], [y], marker="*", ms=14, color=PALETTE["sat"], zorder=5)
    ax1.legend(loc="upper right", frameon=False, fontsize=9)
    ax2.legend(loc="lower right", frameon=False, fontsize=9)
    fig.tight_layout()
    return to_svg(fig)


MAX_POINTS = 300  # dots per epoch in a strip plot


def _strip(ax, groups: dict[int, list[float]], wrong: dict[int, list[float]] | None = None):
    import random

    rng = random.Random(0)
    es = sorted(groups)
    data = [groups[e] for e in es]
    if data:
        ax.boxplot(data, positions=es, widths=0.5, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#eef2f7", "edgecolor": "#8a96a3"}, medianprops={"color": "#333"},
                   whiskerprops={"color": "#8a96a3"}, capprops={"color": "#8a96a3"})
    for e in es:
        points = groups_with_flags(groups[e], (wrong or {}).get(e))
        if len(points) > MAX_POINTS:  # the box covers every sample; the dots, a fixed sample of them
            points = rng.sample(points, MAX_POINTS)
        for flag, colour in ((False, PALETTE["right"]), (True, PALETTE["wrong"])):
            ys = [v for v, is_wrong in points if is_wrong == flag]
            if ys:  # one artist per epoch and colour, not one per sample
                ax.scatter([e + rng.uniform(-0.18, 0.18) for _ in ys], ys, s=10, alpha=0.7, color=colour, zorder=3)
    ax.set_xticks(es)
    ax.set_xlabel("epoch")


def groups_with_flags(values, flags):
    if flags is None:
        return [(v, False) for v in values]
    return list(zip(values, flags))


def _saturation_panel(ax, run: D.Run) -> None:
    """Median |C1| of the misclassified samples per epoch against k, saturated epochs starred."""
    med = D.median_abs_c1(run)
    k = D.saturation_k(run)
    if med:
        es = sorted(med)
        ax.plot(es, [med[e] for e in es], "o-", color=PALETTE["loss"], lw=2, label="median |C1| of misclassified")
        sat = [e["epoch"] for e in run.epochs if e.get("saturated")]
        if any(e in med for e in sat):
            ax.plot([e for e in sat if e in med], [med[e] for e in sat if e in med], "*", ms=14, color=PALETTE["sat"],
                    label="saturated", zorder=5)
        ax.set_xticks(es)
        top = max(med.values())
        if k is not None and k <= 20 * max(top, 1e-9):
            ax.axhline(k, color=PALETTE["sat"], ls="--", lw=1.5, label=f"k = {k:g}")
        elif k is not None:
            ax.text(0.02, 0.03, f"k = {k:g}: off the scale (saturated from min_epoch on)", transform=ax.transAxes,
                    fontsize=8, va="bottom", color=PALETTE["sat"])
        ax.legend(frameon=False, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no misclassified samples with C1", ha="center", va="center", transform=ax.transAxes)
    ax.margins(x=0.12, y=0.1)
    ax.set_title("Saturation rule: median |C1| vs k")
    ax.set_xlabel("epoch")


def signal_distributions(run: D.Run) -> str | None:
    by_epoch: dict[str, dict[int, list]] = {"c1": {}, "c2": {}}
    flags: dict[str, dict[int, list]] = {"c1": {}, "c2": {}}
    for r in run.signals:
        for key in ("c1", "c2"):
            v = r.get(key)
            if v is None or not math.isfinite(v):
                continue
            by_epoch[key].setdefault(r["epoch"], []).append(v)
            flags[key].setdefault(r["epoch"], []).append(not r["correct"])
    if not by_epoch["c1"] and not by_epoch["c2"]:
        return None
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    thr = D.thresholds(run)
    _strip(axes[0], by_epoch["c1"], flags["c1"])
    axes[0].axhline(0, color="#999", lw=0.8)
    axes[0].set_title("C1: loss-change ratio per sample")
    axes[0].set_ylabel("(L_t − L_t−1) / L_t−1")
    _strip(axes[1], by_epoch["c2"], flags["c2"])
    axes[1].set_title("C2: LoRA gradient norm per sample")
    axes[1].set_ylabel("‖∇L_i‖")
    if by_epoch["c2"] and min(min(v) for v in by_epoch["c2"].values()) > 0:
        axes[1].set_yscale("log")
    for ax, key in ((axes[0], "c1"), (axes[1], "c2")):
        first = True
        for e, t in thr.items():
            if key in t and math.isfinite(t[key]):
                ax.plot([e - 0.35, e + 0.35], [t[key], t[key]], color=PALETTE["sat"], lw=2.2, zorder=4,
                        label="policy threshold" if first else None)
                first = False
    handles = [Line2D([], [], marker="o", ls="", color=PALETTE["wrong"], label="misclassified"),
               Line2D([], [], marker="o", ls="", color=PALETTE["right"], label="correct")]
    if any("c1" in t for t in thr.values()) or any("c2" in t for t in thr.values()):
        handles.append(Line2D([], [], color=PALETTE["sat"], lw=2.2, label="policy threshold"))
    axes[0].legend(handles=handles, frameon=False, fontsize=8, loc="best")

    _saturation_panel(axes[2], run)
    fig.tight_layout()
    return to_svg(fig)


def route_counts(run: D.Run) -> str | None:
    routes = D.routes_by_epoch(run)
    if not routes:
        return None
    plt = _plt()
    keys = sorted({(p, r) for paths in routes.values() for p, c in paths.items() for r in c})
    es = sorted(routes)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bottom = [0] * len(es)
    paths = sorted({p for p, _ in keys})
    for p, r in keys:
        vals = [routes[e].get(p, {}).get(r, 0) for e in es]
        colour = PATH_COLOURS[paths.index(p) % len(PATH_COLOURS)]
        ax.bar(es, vals, bottom=bottom, width=0.6, color=colour, alpha=1.0 if r == "symbolic" else 0.35,
               edgecolor="white", hatch=None if r == "symbolic" else "//", label=f"{p}: {r}")
        for x, b, v in zip(es, bottom, vals):
            if v:
                ax.text(x, b + v / 2, str(v), ha="center", va="center", fontsize=8,
                        color="white" if r == "symbolic" else "#222")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(es)
    ax.set_xlabel("epoch")
    ax.set_ylabel("decisions")
    ax.set_title("Routing decisions per epoch, by path and route")
    ax.legend(frameon=False, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return to_svg(fig)


def sample_curve(traj: dict[str, Any]) -> str | None:
    sig = traj["signals"]
    if not sig:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.8))
    xs = [s["epoch"] for s in sig]
    ax.plot(xs, [s["loss"] for s in sig], "-", color=PALETTE["loss"], lw=2)
    for s in sig:
        ax.plot(s["epoch"], s["loss"], "o", ms=7, color=PALETTE["right"] if s["correct"] else PALETTE["wrong"], zorder=3)
    for r in traj["rewrites"]:
        ax.axvline(r["epoch"] + 0.5, color=PALETTE["sat"] if r["verdict"] == "accepted" else "#999", ls=":", lw=1.5)
        ax.text(r["epoch"] + 0.52, ax.get_ylim()[1], f"rewrite {r['verdict']}", fontsize=8, va="top", rotation=90,
                color=PALETTE["sat"] if r["verdict"] == "accepted" else "#777")
    ax.set_xticks(xs)
    ax.set_xlabel("epoch (dot: green correct, orange wrong)")
    ax.set_ylabel("loss")
    ax.set_title(f"Sample {traj['sample']['id']}: loss per epoch")
    fig.tight_layout()
    return to_svg(fig)


def compare_accuracy(runs: list[D.Run]) -> str | None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.5, 1]})
    for i, run in enumerate(runs):
        acc = D.heldout_accuracy(run)
        es = sorted(acc)
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        ax1.plot(es, [acc[e] for e in es], "o-", lw=2, color=colour, label=f"{run.name} ({run.policy})")
        for e in (x["epoch"] for x in run.epochs if x.get("saturated")):
            if e in acc:
                ax1.plot([e], [acc[e]], "*", ms=13, color=colour, zorder=5)
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_xlabel("epoch (0 = before training; ★ saturated)")
    ax1.set_ylabel("held-out accuracy")
    ax1.set_title("Held-out accuracy per epoch")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(frameon=False, fontsize=8, loc="lower right")
    names = [r.name for r in runs]
    secs = [D.training_seconds(r) or 0 for r in runs]
    calls = [D.usage(r)["calls"] for r in runs]
    ys = list(range(len(runs)))
    ax2.barh(ys, secs, color=[PATH_COLOURS[i % len(PATH_COLOURS)] for i in ys], height=0.55)
    for y, s, c in zip(ys, secs, calls):
        ax2.text(s, y, f" {s:.1f} s" if s < 10 else f" {s:.0f} s", va="center", fontsize=8)
        ax2.text(s, y + 0.18, f" {c} LLM calls", va="center", fontsize=8, color="#555")
    ax2.set_yticks(ys)
    ax2.set_yticklabels(names)
    ax2.invert_yaxis()
    ax2.set_xlabel("training seconds")
    ax2.set_title("Time and LLM calls")
    ax2.set_xlim(0, max(secs + [1]) * 1.6)
    fig.tight_layout()
    return to_svg(fig)
