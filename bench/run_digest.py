"""Digest of what a run decided and learned, to show two runs (e.g. old and new code, same seed) are identical.

    python bench/run_digest.py runs/a runs/b

Prints one JSON line: per run, a sha256 of each table of run.sqlite (signals, decisions, rewrites, evals, epochs)
and of metrics.json, with wall-clock fields (seconds, wall_seconds, round times), the run's path and the code stamp left out, and whether all runs agree.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

TABLES = {"signals": "epoch, sample_id", "decisions": "epoch, sample_id, path", "rewrites": "epoch, sample_id",
          "evals": "epoch, sample_id", "epochs": "epoch"}
# Wall-clock fields, the run folder's own path and the code stamp (commit, date: nslora/core/provenance.py) differ between
# any two runs; the digest compares what the runs decided and measured.
CLOCK = {"seconds", "wall_seconds", "processes", "round_seconds", "round_busy_seconds", "busy_seconds", "node_seconds",
         "run_dir", "code"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in CLOCK}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def digest(run_dir: Path) -> dict[str, str]:
    out = {}
    db = sqlite3.connect(run_dir / "run.sqlite")
    for table, order in TABLES.items():
        cur = db.execute(f"SELECT * FROM {table} ORDER BY {order}")
        cols = [c[0] for c in cur.description]
        rows = [{c: v for c, v in zip(cols, r) if c not in CLOCK} for r in cur.fetchall()]
        out[table] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    metrics = _strip(json.loads((run_dir / "metrics.json").read_text()))
    out["metrics.json"] = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()[:16]
    return out


if __name__ == "__main__":
    runs = {d: digest(Path(d)) for d in sys.argv[1:]}
    print(json.dumps({"runs": runs, "identical": len({json.dumps(v, sort_keys=True) for v in runs.values()}) == 1}))
