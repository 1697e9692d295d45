"""run.sqlite read for a report: every table of a run, whatever its age, or one line saying why it cannot be read.

Only a missing table or column means an older run (its rows are then empty); a store another process keeps locked
is waited for, then refused; any other SQLite error is refused too, never shown as empty tables.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any


class ReportError(Exception):
    """A run folder that cannot be inspected; the message says why in one line."""


# How long an inspection waits for a run that is writing its store (a commit holds the file for milliseconds; a
# longer lock is another process's transaction) before it says so.
LOCK_WAIT = 10.0


class _Locked(Exception):
    pass


def _rows(db: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    try:
        cur = db.execute(sql)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    except sqlite3.OperationalError as e:
        message = str(e)
        if message.startswith(("no such table", "no such column")):  # a table or column an older run did not have
            return []
        if "locked" in message or "busy" in message:
            raise _Locked(message) from None
        raise


TABLES = {
    "meta": "SELECT key, value FROM meta",
    "samples": "SELECT * FROM samples ORDER BY split DESC, id",
    "signals": "SELECT * FROM signals ORDER BY epoch, sample_id",
    "decisions": "SELECT * FROM decisions ORDER BY epoch, sample_id, path",
    "rewrites": "SELECT * FROM rewrites ORDER BY epoch, sample_id",
    "evals": "SELECT * FROM evals ORDER BY epoch, sample_id",
    "epochs": "SELECT * FROM epochs ORDER BY epoch",
    "timings": "SELECT * FROM timings ORDER BY epoch, node",
    "inputs": "SELECT * FROM inputs ORDER BY sample_id, since",
    "planted": "SELECT * FROM planted ORDER BY sample_id, family",
}


def read_tables(db_path: Path, wait: float) -> dict[str, list[dict[str, Any]]]:
    """Every table of run.sqlite, retried while another process holds it locked, for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            # Read-only, so inspecting a run that is still writing never locks it or creates a file.
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=min(1.0, wait))
            try:
                return {name: _rows(db, sql) for name, sql in TABLES.items()}
            finally:
                db.close()
        except _Locked:
            if time.monotonic() >= deadline:
                raise ReportError(f"{db_path} is locked by another process (waited {wait:g} s); try again once it "
                                  "has finished writing") from None
            time.sleep(0.1)
        except sqlite3.Error as e:  # anything else is not an older run: say so rather than show empty tables
            raise ReportError(f"{db_path} cannot be read: {type(e).__name__}: {' '.join(str(e).split())}") from None
