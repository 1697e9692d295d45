"""Where a run's time went and why its rewrites failed, for `nslora inspect`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nslora.report.data import Run, reason_kind


def node_seconds(run: Run) -> list[dict[str, Any]]:
    """Seconds per graph node (and checkpoint) over the run, with each one's share, largest first."""
    totals: Counter = Counter()
    for t in run.timings:
        totals[t["node"]] += t["seconds"]
    whole = sum(totals.values()) or 1.0
    return [{"node": n, "seconds": round(sec, 3), "share": sec / whole} for n, sec in totals.most_common()]


def failures_by_kind(run: Run) -> list[dict[str, Any]]:
    """Failed rewrites grouped by failure kind (malformed, http, connection, circuit-open, ...), most frequent
    first, each with one stored reason as its example (older run folders: the reason's first words)."""
    c: Counter = Counter()
    example: dict[str, str] = {}
    for r in run.rewrites:
        if r["verdict"] == "error":
            kind = r.get("failure") or reason_kind(r["reason"])
            c[kind] += 1
            example.setdefault(kind, r["reason"])
    return [{"kind": k, "count": n, "example": example[k]} for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
