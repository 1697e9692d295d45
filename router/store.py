"""run.sqlite: every per-sample signal, routing decision, rewrite and evaluation of a run, in one file.

Each node writes its rows in one transaction, so a crash leaves whole epochs, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from nslora.core.atomic import connect_durable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
  id TEXT PRIMARY KEY, split TEXT NOT NULL, system TEXT NOT NULL, question TEXT NOT NULL,
  answer TEXT NOT NULL, target TEXT NOT NULL, fault TEXT, kind TEXT
);
CREATE TABLE IF NOT EXISTS signals (
  epoch INTEGER NOT NULL, sample_id TEXT NOT NULL, prompt_version INTEGER NOT NULL,
  loss REAL, c1 REAL, c2 REAL, correct INTEGER NOT NULL, p_gold REAL, margin REAL, el2n REAL,
  PRIMARY KEY (epoch, sample_id)
);
CREATE TABLE IF NOT EXISTS inputs (
  sample_id TEXT NOT NULL, since INTEGER NOT NULL, q_nll REAL, q_top REAL, a_loss REAL, a_alone REAL, ifd REAL,
  PRIMARY KEY (sample_id, since)
);
CREATE TABLE IF NOT EXISTS planted (
  sample_id TEXT NOT NULL, family TEXT NOT NULL, question TEXT NOT NULL, q_nll REAL, q_top REAL, a_loss REAL,
  a_alone REAL, ifd REAL, PRIMARY KEY (sample_id, family)
);
CREATE TABLE IF NOT EXISTS decisions (
  epoch INTEGER NOT NULL, sample_id TEXT NOT NULL, policy TEXT NOT NULL, route TEXT NOT NULL,
  confidence REAL NOT NULL, reason TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (epoch, sample_id, path)
);
CREATE TABLE IF NOT EXISTS rewrites (
  epoch INTEGER NOT NULL, sample_id TEXT NOT NULL, version INTEGER NOT NULL,
  original_system TEXT NOT NULL, original_question TEXT NOT NULL,
  new_system TEXT, new_question TEXT, candidate TEXT, student_answer TEXT NOT NULL,
  engine TEXT NOT NULL, strategy TEXT NOT NULL, verdict TEXT NOT NULL, reason TEXT NOT NULL,
  calls INTEGER NOT NULL, tokens INTEGER NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER,
  cache_hits INTEGER, cost REAL, scores TEXT, seconds REAL, failure TEXT, PRIMARY KEY (epoch, sample_id)
);
CREATE TABLE IF NOT EXISTS prompts (
  sample_id TEXT NOT NULL, since INTEGER NOT NULL, version INTEGER NOT NULL, system TEXT NOT NULL,
  question TEXT NOT NULL, loss_at REAL, prev_since INTEGER, PRIMARY KEY (sample_id, since)
);
CREATE TABLE IF NOT EXISTS evals (
  epoch INTEGER NOT NULL, sample_id TEXT NOT NULL, reply TEXT NOT NULL, prediction TEXT NOT NULL,
  correct INTEGER NOT NULL, strict INTEGER, flexible INTEGER, PRIMARY KEY (epoch, sample_id)
);
CREATE TABLE IF NOT EXISTS timings (
  epoch INTEGER NOT NULL, node TEXT NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (epoch, node)
);
CREATE TABLE IF NOT EXISTS processes (
  id INTEGER PRIMARY KEY, started TEXT NOT NULL, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
  epoch INTEGER PRIMARY KEY, train_loss REAL, train_correct REAL, heldout_accuracy REAL,
  saturated INTEGER, saturation_median REAL, symbolic INTEGER, accepted INTEGER, seconds REAL, skipped_steps INTEGER, oom_halvings INTEGER, micro_batch INTEGER,
  round_seconds REAL, round_busy_seconds REAL, round_concurrency INTEGER
);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Send branches and the rewrite pool run in threads; one connection guarded by SQLite's own locking
        # is enough because only the graph's sequential nodes write.
        self.db = connect_durable(self.path)
        self.db.executescript(SCHEMA)
        # Run folders written before these columns existed (the controlled benchmark, both scorings, failure kinds,
        # round wall times) get them empty.
        for table, names in (("samples", {"fault": "TEXT", "kind": "TEXT"}), ("evals", {"strict": "INTEGER", "flexible": "INTEGER"}),
                             ("rewrites", {"failure": "TEXT"}),
                             ("signals", {"p_gold": "REAL", "margin": "REAL", "el2n": "REAL"}),
                             ("epochs", {"round_seconds": "REAL", "round_busy_seconds": "REAL", "round_concurrency": "INTEGER"})):
            columns = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, kind in names.items():
                if name not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def _insert(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        with self.db:
            self._insert_rows(table, rows)

    def _insert_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """INSERT OR REPLACE inside the caller's transaction."""
        rows = list(rows)
        if not rows:
            return
        cols = list(rows[0])
        sql = f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        self.db.executemany(sql, [tuple(r[c] for c in cols) for r in rows])

    def put_meta(self, **items: Any) -> None:
        self._insert("meta", [{"key": k, "value": json.dumps(v)} for k, v in items.items()])

    def add_samples(self, rows):
        self._insert("samples", rows)

    def add_signals(self, rows):
        self._insert("signals", rows)

    def inputs_for(self, keys: dict[str, int]) -> dict[str, dict[str, float | None]]:
        """Sample id -> the input signals of its prompt written at epoch keys[id] (0: the original); a prompt not
        measured (signals.inputs off, an older run) is absent."""
        from adapters.inputs import INPUT_SIGNALS

        if not keys:
            return {}
        return {r["sample_id"]: {k: r[k] for k in INPUT_SIGNALS} for r in self.query("SELECT * FROM inputs")
                if keys.get(r["sample_id"]) == r["since"]}

    def add_measured(self, inputs: list[dict[str, Any]], planted: list[dict[str, Any]]) -> None:
        """One measuring pass in one transaction: prompts' input signals, and the planted copies (policies/planted.py,
        never trained on) with theirs. A resumed run then measures all of it again or none of it, batched alike."""
        with self.db:
            self._insert_rows("inputs", inputs)
            self._insert_rows("planted", planted)

    def planted_rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM planted ORDER BY sample_id, family")

    def measured_inputs(self) -> set[tuple[str, int]]:
        return {(i, s) for i, s in self.db.execute("SELECT sample_id, since FROM inputs")}

    def add_decisions(self, rows):
        self._insert("decisions", rows)

    def add_rewrites(self, rows):
        self._insert("rewrites", rows)

    def add_prompts(self, rows):
        """Rewritten prompt versions, one row per (sample, epoch it was written); a redone round overwrites its own."""
        self._insert("prompts", rows)

    def prompt_rows(self, keys: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Sample id -> its prompt row written at epoch keys[id] (the graph state's `prompt_epochs`)."""
        if not keys:
            return {}
        return {r["sample_id"]: r for r in self.query("SELECT * FROM prompts") if keys.get(r["sample_id"]) == r["since"]}

    def candidates(self, epoch: int) -> list[str]:
        """The samples still misclassified at `epoch` that were not sent back to an earlier prompt in it, by id."""
        return [r[0] for r in self.db.execute(
            "SELECT sample_id FROM signals WHERE epoch=? AND correct=0 AND sample_id NOT IN "
            "(SELECT sample_id FROM decisions WHERE epoch=? AND path='revert') ORDER BY sample_id", (epoch, epoch))]

    def add_evals(self, rows):
        self._insert("evals", rows)

    def accuracy_by_epoch(self, column: str) -> dict[int, float]:
        """Held-out accuracy per evaluated epoch under one scoring column (strict or flexible; {} if unrecorded)."""
        assert column in ("correct", "strict", "flexible")
        rows = self.query(f"SELECT epoch, AVG({column}) AS acc FROM evals WHERE {column} IS NOT NULL GROUP BY epoch")
        return {r["epoch"]: r["acc"] for r in rows}

    def add_epoch(self, row):
        self._insert("epochs", [row])

    def set_heldout_accuracy(self, epoch: int, accuracy: float) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO epochs (epoch) VALUES (?)", (epoch,))
            self.db.execute("UPDATE epochs SET heldout_accuracy=? WHERE epoch=?", (accuracy, epoch))

    def set_saturation(self, epoch: int, saturated: bool, median: float | None) -> None:
        with self.db:
            self.db.execute("UPDATE epochs SET saturated=?, saturation_median=? WHERE epoch=?", (int(saturated), median, epoch))

    def set_round(self, epoch: int, symbolic: int, accepted: int, seconds: float | None = None, busy: float | None = None,
                  concurrency: int | None = None) -> None:
        """A routing round's counts, its wall time, the summed time of its rewrites, and the concurrency it ran at."""
        with self.db:
            self.db.execute("UPDATE epochs SET symbolic=?, accepted=?, round_seconds=?, round_busy_seconds=?, round_concurrency=? "
                            "WHERE epoch=?", (symbolic, accepted, seconds, busy, concurrency, epoch))

    def signals_at(self, epoch: int) -> dict[str, dict[str, Any]]:
        """Sample id -> its signals row of one epoch."""
        return {r["sample_id"]: r for r in self.query("SELECT * FROM signals WHERE epoch=?", (epoch,))}

    def signals_after(self, epoch: int) -> list[dict[str, Any]]:
        """Every signals row of the epochs after `epoch`, oldest first."""
        return self.query("SELECT * FROM signals WHERE epoch > ? ORDER BY epoch", (epoch,))

    def faults(self) -> dict[str, str | None]:
        """Training sample id -> its planted fault (None: clean, and for every sample of a task without ground
        truth). For scoring routing only: never part of what a policy sees."""
        return {r["id"]: r["fault"] for r in self.query("SELECT id, fault FROM samples WHERE split='train'")}

    def kinds(self) -> dict[str, str | None]:
        """Training sample id -> its ground-truth kind on the controlled benchmark: 'presentation', 'knowledge' (hard
        but clean) or None. Scoring only, like faults()."""
        return {r["id"]: r["kind"] for r in self.query("SELECT id, kind FROM samples WHERE split='train'")}

    def decisions(self) -> list[dict[str, Any]]:
        return self.query("SELECT epoch, sample_id, route, path FROM decisions ORDER BY epoch, sample_id")

    def signal_rows(self) -> list[dict[str, Any]]:
        """Every signals row (epoch, sample_id, prompt_version, loss, c1, c2, correct), in epoch order."""
        return self.query("SELECT * FROM signals ORDER BY epoch, sample_id")

    def losses_at(self, epoch: int) -> dict[str, float]:
        return {r["sample_id"]: r["loss"] for r in self.query("SELECT sample_id, loss FROM signals WHERE epoch=?", (epoch,))}

    def accepted_rewrites(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM rewrites WHERE verdict='accepted' ORDER BY epoch")

    def llm_totals(self) -> dict[str, Any]:
        """Calls, tokens, estimated cost and cache hits summed over the recorded rewrites."""
        return self.query("SELECT COALESCE(SUM(calls), 0) AS calls, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
                          "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(cost), 0) AS cost, "
                          "COALESCE(SUM(cache_hits), 0) AS cache_hits, "
                          "COALESCE(SUM(cost IS NULL AND tokens > 0), 0) AS unpriced FROM rewrites")[0]

    def add_timings(self, rows: dict[tuple[int, str], float]) -> None:
        """Add seconds to (epoch, node) totals (router.timing)."""
        with self.db:
            self.db.executemany("INSERT INTO timings (epoch, node, seconds) VALUES (?, ?, ?) ON CONFLICT (epoch, node) "
                                "DO UPDATE SET seconds = seconds + excluded.seconds",
                                [(e, n, s) for (e, n), s in rows.items()])

    def open_process(self) -> int:
        """A row for this process's wall time (a run and each of its resumes is one process)."""
        from datetime import datetime

        with self.db:
            cur = self.db.execute("INSERT INTO processes (started, seconds) VALUES (?, 0)",
                                  (datetime.now().isoformat(timespec="seconds"),))
        return int(cur.lastrowid)

    def process_seconds(self, process: int, seconds: float) -> None:
        with self.db:
            self.db.execute("UPDATE processes SET seconds = ? WHERE id = ?", (seconds, process))

    def wall_seconds(self, process: int, seconds: float) -> tuple[float, int]:
        """(wall seconds of the whole run: every earlier process up to its last finished step, plus this one's
        `seconds`; how many processes ran it)."""
        total, n = self.db.execute("SELECT COALESCE(SUM(seconds), 0), COUNT(*) FROM processes WHERE id != ?", (process,)).fetchone()
        return total + seconds, n + 1

    def timing_totals(self) -> dict[str, float]:
        """Seconds per node over the whole run, largest first."""
        return {n: round(s, 3) for n, s in self.db.execute(
            "SELECT node, SUM(seconds) AS s FROM timings GROUP BY node ORDER BY s DESC")}

    def round_times(self) -> list[dict[str, Any]]:
        """Each timed rewrite round: wall seconds, the summed seconds of its rewrites, the concurrency it ran at."""
        return self.query("SELECT epoch, round_seconds AS seconds, round_busy_seconds AS busy_seconds, round_concurrency AS "
                          "concurrency FROM epochs WHERE round_seconds IS NOT NULL ORDER BY epoch")

    def epoch_rows(self) -> list[dict[str, Any]]:
        """The epochs table after training started, in order."""
        return [dict(r) for r in self.query("SELECT * FROM epochs WHERE epoch > 0 ORDER BY epoch")]

    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """The run's counters, computed from its rows (so a resumed run counts what happened before the crash)."""
        one = lambda sql: self.db.execute(sql).fetchone()[0] or 0
        out = {
            "routing_rounds": one("SELECT COUNT(*) FROM epochs WHERE saturated=1"),
            "decisions": one("SELECT COUNT(*) FROM decisions WHERE path != 'revert'"),
            "symbolic": one("SELECT COUNT(*) FROM decisions WHERE path != 'revert' AND route='symbolic'"),
            "reverts": one("SELECT COUNT(*) FROM decisions WHERE path = 'revert'"),
            "llm_calls": one("SELECT SUM(calls) FROM rewrites"),
            "cache_hits": one("SELECT SUM(cache_hits) FROM rewrites"),
            "skipped_steps": one("SELECT MAX(skipped_steps) FROM epochs"),
            "oom_halvings": one("SELECT MAX(oom_halvings) FROM epochs"),
        }
        for path, n in self.db.execute("SELECT path, COUNT(*) FROM decisions GROUP BY path"):
            out[f"path_{path}"] = n
        for verdict, n in self.db.execute("SELECT verdict, COUNT(*) FROM rewrites GROUP BY verdict"):
            out[f"rewrites_{verdict}"] = n
        for kind, n in self.db.execute("SELECT failure, COUNT(*) FROM rewrites WHERE failure IS NOT NULL GROUP BY failure"):
            out[f"failed_{kind}"] = n
        return dict(sorted(out.items()))

    def dynamics(self, sample_ids: list[str], upto: int) -> dict[str, dict[str, float | None]]:
        """Each sample's training dynamics over epochs 1..upto (adapters.signals.dynamics), in one query."""
        from adapters.signals import dynamics

        wanted = set(sample_ids)
        rows: dict[str, list[dict]] = {i: [] for i in sample_ids}
        for r in self.query("SELECT sample_id, correct, p_gold, margin, el2n FROM signals WHERE epoch BETWEEN 1 AND ? "
                            "ORDER BY epoch", (upto,)):
            if r["sample_id"] in wanted:
                rows[r["sample_id"]].append(r)
        return {i: dynamics(h) for i, h in rows.items()}

    def loss_histories(self, sample_ids: list[str]) -> dict[str, list[float]]:
        """Each sample's loss per epoch, oldest first, in one query."""
        out: dict[str, list[float]] = {i: [] for i in sample_ids}
        for sid, loss in self.db.execute("SELECT sample_id, loss FROM signals ORDER BY epoch"):
            if sid in out:
                out[sid].append(loss)
        return out
