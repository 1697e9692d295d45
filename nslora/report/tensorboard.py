"""TensorBoard scalars for a run, so `tensorboard --logdir RUN_DIR/tensorboard` works as TRL users expect.

    from nslora.report.tensorboard import TensorBoardLogger
    tb = TensorBoardLogger(run_dir)                   # RUN_DIR/tensorboard/, created on first use
    tb.log_epoch(epoch, {"train/loss": 0.41, "heldout/accuracy": 0.75, "routes/symbolic": 3, "llm/cost": 0.01})
    tb.close()

`log_epoch` takes any flat dict of numbers (None and non-numbers are skipped); nested dicts are flattened with
"/" (`{"routes": {"signal": 3}}` -> "routes/signal"). `scalars_from_store(ctx.store, epoch)` (or a run folder)
builds the standard set (loss, accuracy, routes, rewrites, cost) of an epoch from the run store, e.g. at the end
of the evaluate node:

    tb.log_epoch(epoch, scalars_from_store(ctx.store, epoch))
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any


def _flatten(scalars: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in scalars.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, numbers.Real) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


class TensorBoardLogger:
    """Writes scalars with torch.utils.tensorboard.SummaryWriter into RUN_DIR/tensorboard/ (or `log_dir`)."""

    def __init__(self, run_dir: str | Path, log_dir: str | Path | None = None):
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"TensorBoard logging needs the tensorboard package: pip install tensorboard ({e})") from None
        self.log_dir = Path(log_dir) if log_dir else Path(run_dir) / "tensorboard"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, epoch: int, scalars: dict[str, Any]) -> None:
        for tag, value in _flatten(scalars).items():
            self._writer.add_scalar(tag, value, global_step=int(epoch))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scalars_from_store(store, epoch: int) -> dict[str, float]:
    """The standard scalars of one epoch from the run store: train/loss, train/correct, heldout/accuracy,
    saturation/saturated, saturation/median_abs_c1, routes/<path>/<route>, rewrites/<verdict> (this epoch), and
    llm/calls, llm/tokens, llm/cost (cumulative up to this epoch). `store` is a router.store.Store (anything with
    `.query(sql, params)`), or a run folder whose run.sqlite is opened read-only. Each query touches one epoch."""
    import sqlite3

    db = None
    if not hasattr(store, "query"):
        db = sqlite3.connect(f"file:{Path(store) / 'run.sqlite'}?mode=ro", uri=True)

        def query(sql, params=()):
            cur = db.execute(sql, params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
    else:
        query = store.query
    try:
        out: dict[str, Any] = {}
        for e in query("SELECT * FROM epochs WHERE epoch=?", (epoch,)):
            out.update({"train/loss": e["train_loss"], "train/correct": e["train_correct"],
                        "saturation/median_abs_c1": e["saturation_median"]})
            if e["saturated"] is not None:
                out["saturation/saturated"] = bool(e["saturated"])
        acc = query("SELECT AVG(correct) AS a, COUNT(*) AS n FROM evals WHERE epoch=?", (epoch,))
        if acc and acc[0]["n"]:
            out["heldout/accuracy"] = acc[0]["a"]
        for r in query("SELECT path, route, COUNT(*) AS n FROM decisions WHERE epoch=? GROUP BY path, route", (epoch,)):
            out[f"routes/{r['path']}/{r['route']}"] = r["n"]
        for r in query("SELECT verdict, COUNT(*) AS n FROM rewrites WHERE epoch=? GROUP BY verdict", (epoch,)):
            out[f"rewrites/{r['verdict']}"] = r["n"]
        u = query("SELECT COALESCE(SUM(calls), 0) AS calls, COALESCE(SUM(tokens), 0) AS tokens, "
                  "COALESCE(SUM(cost), 0) AS cost FROM rewrites WHERE epoch<=?", (epoch,))[0]
        out.update({"llm/calls": u["calls"], "llm/tokens": u["tokens"], "llm/cost": u["cost"]})
        return _flatten(out)
    finally:
        if db is not None:
            db.close()
