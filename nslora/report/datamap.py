"""The data map (dataset cartography, Swayamdipta et al. 2020): every training sample at (variability, confidence) of
its gold answer's probability over the epochs, coloured by its route — on a controlled run by its ground-truth kind,
with the routed samples ringed — and each rewritten sample drawn with an arrow from where its original prompt put
it to where the rewrite moved it. Above DENSE samples a density (hexbin) of all of them is drawn under a capped,
fixed subsample of dots per group, so 100k samples stay readable and the figure stays small.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from adapters.signals import dynamics
from nslora.core.errors import UserError
from nslora.report import data as D

DENSE = 3000  # samples above which the map shows density instead of every dot
MAX_DOTS = 1200  # dots per group on a dense map
MAX_ARROWS = 150
KIND_COLOURS = {"clean": "#8a8f98", "knowledge": "#2a9d55", "numerical": "#1f5fa8", "routed symbolic": "#c2571a"}
PNG_MARK = "ns-lora data map"  # in the PNG's metadata: a later report may replace the file
FAMILY_COLOURS = ["#c2571a", "#7b4fb0", "#b08a1f", "#a81f5f", "#1fa3a8", "#d62728"]


def _position(rows: list[dict]) -> tuple[float, float] | None:
    d = dynamics(rows)
    return None if d["confidence"] is None else (d["variability"], d["confidence"])


def map_points(run: D.Run) -> dict[str, Any]:
    """Per training sample: its group, whether it was ever routed symbolic, its position on its original prompt and,
    when it trained on a rewrite, its position there (plain data, for the figure and for tests)."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for r in run.signals:
        if r["epoch"] > 0:
            rows[r["sample_id"]].append(r)
    routed = {d["sample_id"] for d in run.decisions if d["route"] == "symbolic" and d["path"] != "revert"}
    train = [s for s in run.samples if s["split"] == "train"]
    controlled = any(s.get("fault") or s.get("kind") for s in train)
    points = []
    for s in train:
        history = rows.get(s["id"], [])
        before = _position([r for r in history if not r["prompt_version"]])
        if before is None:
            continue
        last = max((r["prompt_version"] for r in history), default=0)
        after = _position([r for r in history if r["prompt_version"] == last]) if last else None
        if controlled:
            group = s.get("fault") or ("knowledge" if s.get("kind") == "knowledge" else "clean")
        else:
            group = "routed symbolic" if s["id"] in routed else "numerical"
        points.append({"id": s["id"], "group": group, "routed": s["id"] in routed, "at": before, "after": after})
    return {"points": points, "controlled": controlled}


def _keep(ids: list[str], k: int) -> set[str]:
    """A fixed subsample: the k ids with the smallest hash (the same on every render)."""
    return set(sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())[:k])


def _colours(groups: list[str]) -> dict[str, str]:
    families = [g for g in groups if g not in KIND_COLOURS]
    return {**KIND_COLOURS, **{g: FAMILY_COLOURS[i % len(FAMILY_COLOURS)] for i, g in enumerate(families)}}


def figure(run: D.Run, m: dict[str, Any] | None = None):
    """The data map as a matplotlib figure (None before any epoch recorded p(gold))."""
    from nslora.report.plots import _plt

    m = m or map_points(run)
    points = m["points"]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    dense = len(points) > DENSE
    if dense:
        hb = ax.hexbin([p["at"][0] for p in points], [p["at"][1] for p in points], gridsize=45, cmap="Greys", bins="log",
                       mincnt=1, linewidths=0)
        fig.colorbar(hb, ax=ax, label="samples per cell (log)", shrink=0.8)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        by_group[p["group"]].append(p)
    order = sorted(by_group, key=lambda g: (g in ("clean", "numerical"), g))  # the common group first, under the rest
    colours = _colours(order)
    for g in reversed(order):
        members = by_group[g]
        if dense:
            keep = _keep([q["id"] for q in members], MAX_DOTS)
            shown = [p for p in members if p["id"] in keep]
        else:
            shown = members
        size = 6 if dense else 14
        ax.scatter([p["at"][0] for p in shown], [p["at"][1] for p in shown], s=size, c=colours[g], linewidths=0,
                   alpha=0.85, label=f"{g} ({len(members)})", zorder=3)
        ringed = [p for p in shown if p["routed"]] if m["controlled"] else []
        if ringed:  # the routed samples of a controlled run: a dark ring on their kind's colour
            ax.scatter([p["at"][0] for p in ringed], [p["at"][1] for p in ringed], s=size * 2.2, facecolors="none",
                       edgecolors="#111111", linewidths=0.8, zorder=4)
    rewritten = [p for p in points if p["after"] is not None]
    keep = _keep([p["id"] for p in rewritten], MAX_ARROWS)
    moved = [p for p in rewritten if p["id"] in keep]
    if moved:
        ax.quiver([p["at"][0] for p in moved], [p["at"][1] for p in moved],
                  [p["after"][0] - p["at"][0] for p in moved], [p["after"][1] - p["at"][1] for p in moved],
                  angles="xy", scale_units="xy", scale=1, width=0.003, color="#111111", alpha=0.6, zorder=4,
                  label=f"rewrite: before → after ({len(rewritten)})")
    # The widest a std of probabilities can be is 0.5; a run that never gets near it is drawn to its own width.
    right = min(0.5, max(0.25, 1.15 * max(max(p["at"][0], (p["after"] or (0, 0))[0]) for p in points)))
    for x, y, text in ((0.02, 0.97, "easy to learn"), (0.02, 0.03, "hard to learn"), (0.72, 0.5, "ambiguous")):
        ax.text(x * right, y, text, fontsize=9, color="#555555", style="italic", va="top" if y > 0.5 else "bottom")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1)
    ax.set_xlabel("variability (std of p(gold) over epochs)")
    ax.set_ylabel("confidence (mean p(gold))")
    what = "kind (ringed: routed symbolic)" if m["controlled"] else "route"
    ax.set_title(f"Data map: {len(points)} training samples by {what}" + (", density below" if dense else ""))
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    return fig


def svg(run: D.Run, m: dict[str, Any] | None = None) -> str | None:
    from nslora.report.plots import to_svg

    fig = figure(run, m)
    return None if fig is None else to_svg(fig)


def png_bytes(run: D.Run, m: dict[str, Any] | None = None) -> bytes | None:
    """The map as PNG, marked as ns-lora's in its metadata (so a later report may replace it)."""
    import io

    import matplotlib.pyplot as plt

    fig = figure(run, m)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": PNG_MARK})
    plt.close(fig)
    return buf.getvalue()


def png_path(html: Path) -> Path:
    """Where the PNG goes: beside the report page, named after it."""
    return html.with_name(html.stem + "-datamap.png")


def check_png(html: Path, overwrite: bool = False) -> Path:
    """The map's PNG may replace an earlier one of ns-lora's; any other file there is refused unless `overwrite`."""
    path = png_path(Path(html))
    if path.is_dir() or (path.is_file() and not overwrite and PNG_MARK.encode() not in path.read_bytes()[:4096]):
        raise UserError(f"--out: {path} exists and is not an ns-lora data map; choose another --out or pass --overwrite")
    return path


def write_png(run: D.Run, html: Path, overwrite: bool = False) -> Path | None:
    from nslora.core.atomic import write_bytes

    data = png_bytes(run)
    return None if data is None else write_bytes(check_png(html, overwrite), data)


def section_html(run: D.Run) -> str:
    """The report's data-map section: SVG when every dot is drawn, the PNG inline when the map is dense (an SVG of
    thousands of dots would weigh megabytes)."""
    import base64
    from html import escape

    m = map_points(run)  # once: the figure below is drawn from it
    n = len(m["points"])
    if n == 0:
        body = "<p>No epoch has recorded p(gold) yet.</p>"
    elif n > DENSE:
        body = f'<img class="plot" alt="data map" src="data:image/png;base64,{base64.b64encode(png_bytes(run, m)).decode()}">'
    else:
        body = svg(run, m)
    note = ("Each training sample at the mean (confidence) and standard deviation (variability) over the epochs of the "
            "probability the model gives its gold answer. Easy-to-learn samples sit high, hard-to-learn ones low and "
            "steady, ambiguous ones to the right; the hard-to-learn region is where badly presented samples gather. "
            "Arrows: rewritten samples, from their original prompt to the rewrite.")
    return f'<section id="datamap"><h2>Data map</h2><p class="note">{escape(note)}</p><div class="card">{body}</div></section>'
