"""Kill -9 a run at random points, resume it each time, and get what an uninterrupted run gets — without paying
for a finished rewrite twice."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fake_openai import FakeOpenAI, smart_reply
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
KILLS = 10


def _cli(*args, cwd, path=(), **env_vars):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, path)]), "NSLORA_TEST_KEY": KEY,
           "OMP_NUM_THREADS": "1", **env_vars}
    return subprocess.Popen([sys.executable, "-m", "nslora.commands.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _config(tmp, tiny_dir, base_url):
    # LoRA on the top layer only: the frozen bottom layer's cache is on, and must not change what a resume gives.
    return write_config(tmp, tiny_dir, base_url, train={"epochs": 4}, rewriter={"concurrency": 2}, lora={"top_layers": 1})


class Recorder:
    """The server's replies, with the time each was sent, to tell finished requests from ones cut off by a kill."""

    def __init__(self):
        self.sent = []
        self.lock = threading.Lock()

    def __call__(self, messages):
        reply = smart_reply(messages)
        with self.lock:
            self.sent.append((time.monotonic(), json.dumps(messages, sort_keys=True)))
        return reply


def _tables(run_dir):
    out = {}
    for table, order in (("decisions", "epoch, sample_id, path"), ("rewrites", "epoch, sample_id"),
                         ("signals", "epoch, sample_id"), ("evals", "epoch, sample_id"),
                         ("inputs", "sample_id, since"), ("planted", "sample_id, family")):
        out[table] = [{k: v for k, v in r.items() if k not in ("seconds", "engine", "cache_hits", "calls", "tokens",
                                                                 "prompt_tokens", "completion_tokens", "cost")}
                      for r in rows(run_dir, f"SELECT * FROM {table} ORDER BY {order}")]
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    # The reference: one uninterrupted run.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    with FakeOpenAI(latency=0.05) as srv:
        cfg = _config(ref_dir, tiny_dir, srv.base_url)
        started = time.monotonic()
        proc = _cli("run", str(cfg), cwd=ref_dir)
        out, err = proc.communicate(timeout=300)
        total = time.monotonic() - started
        assert proc.returncode == 0, err[-2000:]

    work = tmp_path / "killed"
    work.mkdir()
    recorder = Recorder()
    rng = random.Random(7)
    kills, finished = [], False
    with FakeOpenAI(latency=0.05, reply=recorder) as srv:
        cfg = _config(work, tiny_dir, srv.base_url)
        run_dir = work / "runs" / "r"
        for attempt in range(KILLS + 1):
            resumable = (run_dir / "checkpoints" / "graph.sqlite").is_file()
            proc = _cli("resume", str(run_dir), cwd=work) if resumable else _cli("run", str(cfg), "--set", "run.overwrite=true", cwd=work)
            if attempt == KILLS:
                out, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err[-2000:]
                finished = True
                break
            try:
                # Each attempt resumes where the last kill left it, so it needs less time than the whole run:
                # kill within 15-60% of it, so that most kills land (runs got faster; 25-90% let one finish
                # after four kills on a busy machine).
                out, err = proc.communicate(timeout=rng.uniform(0.15, 0.6) * total)
                assert proc.returncode == 0, err[-2000:]
                finished = True
                break  # it finished before the kill came
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
                kills.append(time.monotonic())
        requests = [json.dumps(r["messages"], sort_keys=True) for r in srv.chat_requests()]
    assert finished and len(kills) >= 5, f"only {len(kills)} kills landed"

    assert _tables(run_dir) == _tables(ref_dir / "runs" / "r")
    m_ref, m_run = (json.loads((d / "runs" / "r" / "metrics.json").read_text()) for d in (ref_dir, work))
    assert m_run["heldout_accuracy"] == m_ref["heldout_accuracy"]
    drop = ("llm_calls", "cache_hits")
    assert {k: v for k, v in m_run["counts"].items() if k not in drop} == {k: v for k, v in m_ref["counts"].items() if k not in drop}
    from safetensors.torch import load_file

    a = load_file(ref_dir / "runs" / "r" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)

    # A request is only ever repeated if its reply was still in flight when a kill came (sent < 1 s before it).
    first_sent = {}
    for t, key in recorder.sent:
        first_sent.setdefault(key, t)
    repeated = {k for k in set(requests) if requests.count(k) > 1}
    for key in repeated:
        assert any(0 <= kill - first_sent[key] < 1.0 for kill in kills), "a finished rewrite request was sent again"
    assert len(set(requests)) >= len(requests) - len(kills)


KILLER = """
import os, signal
from pathlib import Path

from policies.signal import LossRatioPolicy


class KillInRound(LossRatioPolicy):
    \"\"\"Loss-ratio routing that kill -9s its own process at its first decision of each round, once per epoch.\"\"\"

    def decide(self, view):
        mark = Path(os.environ["KILL_MARKS"]) / f"epoch-{view.epoch}"
        if not mark.exists() and not view.id.startswith("ex"):  # ex*: the conformance check's made-up samples
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().decide(view)
"""


def _latest_checkpoint(run_dir):
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    saver = SqliteSaver(sqlite3.connect(run_dir / "checkpoints" / "graph.sqlite"))
    try:
        return saver.get_tuple({"configurable": {"thread_id": "run"}})
    finally:
        saver.conn.close()


def test_kill_inside_a_routing_round_resumes_inside_it_with_the_same_decisions(tiny_dir, tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    ref_marks, marks = tmp_path / "ref-marks", tmp_path / "marks"
    ref_marks.mkdir(), marks.mkdir()
    for e in range(1, 10):
        (ref_marks / f"epoch-{e}").touch()  # the reference run is never killed
    results = {}
    with FakeOpenAI() as srv:
        for name, where in (("ref", ref_marks), ("killed", marks)):
            work = tmp_path / name
            work.mkdir()
            cfg = write_config(work, tiny_dir, srv.base_url, policy={"name": "killer:KillInRound"}, train={"epochs": 4})
            run_dir = work / "runs" / "r"
            proc = _cli("run", str(cfg), cwd=work, path=[tmp_path], KILL_MARKS=str(where))
            kills = 0
            while True:
                _, err = proc.communicate(timeout=300)
                if proc.returncode == 0:
                    break
                assert proc.returncode == -signal.SIGKILL, err[-2000:]
                kills += 1
                # Killed in a decide branch: the newest checkpoint is the step that started the round, so the
                # resume decides this round again rather than training the epoch again.
                latest = _latest_checkpoint(run_dir)
                assert latest.checkpoint["channel_values"]["saturated"] is True
                assert latest.checkpoint["channel_values"]["candidates"] > 0
                epoch = latest.checkpoint["channel_values"]["epoch"]
                assert not rows(run_dir, f"SELECT * FROM decisions WHERE epoch={epoch} AND path != 'revert'")
                proc = _cli("resume", str(run_dir), cwd=work, path=[tmp_path], KILL_MARKS=str(where))
            results[name] = (run_dir, kills)
    assert results["ref"][1] == 0 and results["killed"][1] == 3  # rounds at epochs 2, 3 and 4
    assert _tables(results["killed"][0]) == _tables(results["ref"][0])
    assert len(rows(results["ref"][0], "SELECT * FROM decisions WHERE route='symbolic'")) >= 3
    _checkpoints_hold_what_changed(results["killed"][0])


def _checkpoints_hold_what_changed(run_dir):
    """Only the newest two checkpoints are kept, and the state names the rewritten samples and the epoch of their
    current prompt, whose text is in run.sqlite: the prompts the run ended with."""
    import sqlite3

    db = sqlite3.connect(run_dir / "checkpoints" / "graph.sqlite")
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(DISTINCT checkpoint_id) FROM writes").fetchone()[0] <= 2
    db.close()
    state = _latest_checkpoint(run_dir).checkpoint["channel_values"]
    accepted = {r["sample_id"] for r in rows(run_dir, "SELECT sample_id FROM rewrites WHERE verdict='accepted'")}
    assert "prompts" not in state and state["prompt_epochs"] and set(state["prompt_epochs"]) <= accepted
    assert not state.get("decisions")
    final = {r["id"]: r for r in map(json.loads, (run_dir / "augmented.jsonl").read_text().splitlines())}
    for i, since in state["prompt_epochs"].items():
        row = rows(run_dir, f"SELECT * FROM prompts WHERE sample_id='{i}' AND since={since}")[0]
        assert final[i]["question"] == row["question"] and final[i]["version"] == row["version"] >= 1
    assert all(final[i]["version"] == 0 for i in final if i not in state["prompt_epochs"])




def test_sigterm_finishes_the_step_prints_the_resume_command_and_resume_completes(tiny_dir, tmp_path):
    with FakeOpenAI() as srv:
        cfg = _config(tmp_path, tiny_dir, srv.base_url)
        proc = _cli("run", str(cfg), cwd=tmp_path)
        run_dir = tmp_path / "runs" / "r"
        deadline = time.monotonic() + 120
        while not list((run_dir / "checkpoints").glob("trainer-0001.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until training is under way
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            pytest.skip("the run finished before SIGTERM arrived")
        assert proc.returncode == 130 and f"resume with: nslora resume {run_dir}" in err and "Traceback" not in err
        assert not (run_dir / "metrics.json").exists()
        proc = _cli("resume", str(run_dir), cwd=tmp_path)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "held-out accuracy" in out and (run_dir / "metrics.json").exists()
        # Wall time covers both processes, as node_seconds does (it used to restart with the resume).
        metrics = json.loads((run_dir / "metrics.json").read_text())
        first = rows(run_dir, "SELECT seconds FROM processes ORDER BY id")[0]["seconds"]
        assert metrics["processes"] == 2 and first > 0
        assert metrics["wall_seconds"] >= max(first, sum(metrics["node_seconds"].values()))
        proc = _cli("resume", str(run_dir), cwd=tmp_path)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "has already finished" in out


def test_resume_of_a_finished_graph_without_its_outputs_exports_again(tiny_dir, tmp_path):
    """A kill after the graph's last checkpoint but before its outputs were all on disk must not leave a
    finished run without metrics.json: resume exports again, from the final trainer checkpoint."""
    with FakeOpenAI() as srv:
        cfg = _config(tmp_path, tiny_dir, srv.base_url)
        proc = _cli("run", str(cfg), cwd=tmp_path)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        run_dir = tmp_path / "runs" / "r"
        before = json.loads((run_dir / "metrics.json").read_text())
        adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
        (run_dir / "metrics.json").unlink()
        proc = _cli("resume", str(run_dir), cwd=tmp_path)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["heldout_accuracy"] == before["heldout_accuracy"] and after["counts"] == before["counts"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_a_run_folder_in_use_is_refused_and_left_alone(tiny_dir, tmp_path, capsys):
    from nslora.commands.cli import main
    from router.durable import hold_folder

    cfg = write_config(tmp_path, tiny_dir, None, policy={"name": "lora-only"}, train={"epochs": 1})
    run_dir = tmp_path / "runs" / "r"
    lock = hold_folder(run_dir)  # as a run in another process would
    assert main(["run", str(cfg), "--set", "run.overwrite=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"run folder {run_dir} is in use by nslora process {os.getpid()}" in err and "\n" not in err
    assert not run_dir.exists()
    lock.close()  # the other process ended: the folder is free again
    assert main(["run", str(cfg)]) == 0
    (run_dir / "metrics.json").unlink()
    lock = hold_folder(run_dir)
    assert main(["resume", str(run_dir)]) == 2 and "in use by" in capsys.readouterr().err
    assert not (run_dir / "metrics.json").exists()
    lock.close()
