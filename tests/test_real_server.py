"""The symbolic branch as a real server sees it (issue 15): no identical request after a malformed reply, failures
that would repeat remembered across reruns, every failure's cause kept and grouped, the rewriter told whether the
model's answer was right, rounds timed as rounds, a serial server detected, no price shown as no price."""

import json
import threading
import time
from collections import Counter

from fake_openai import FakeOpenAI, smart_reply
from rewriter.strategies import RewriteContext
from rewriter.strategies.direct import DirectStrategy
from nslora.commands.cli import main
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)


def always_right(reply, sample):  # a scorer for task.scorer: every generated answer counts as right
    return True


def tagless(messages):
    """A greedy server that never keeps textgrad's tags on its updates (the 135M model's habit)."""
    text = smart_reply(messages)
    return "I would rephrase the question more plainly." if "<IMPROVED_VARIABLE>" in text else text


def _signature(body):
    return json.dumps({k: body.get(k) for k in ("messages", "temperature", "max_tokens")}, sort_keys=True)


def test_same_malformed_reply_is_never_asked_twice_and_a_rerun_does_not_pay_again(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI(reply=tagless) as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"max_retries": 2, "backoff_base": 0.01, "concurrency": 1})
        assert main(["run", str(cfg)]) == 0
        first = srv.chat_requests()
        sent = Counter(_signature(b) for b in first)
        assert first and max(sent.values()) == 1  # 3 attempts per update, each one a changed request
        failed = rows(tmp_path / "runs" / "r", "SELECT * FROM rewrites WHERE verdict='error'")
        assert failed and all(r["failure"] == "malformed" and "no <IMPROVED_VARIABLE> (after 3 attempts)" in r["reason"] for r in failed)
        capsys.readouterr()
        # The same config again: successful replies come from the cache, the failures that would repeat are not sent.
        assert main(["run", str(cfg), "--set", "run.name=again"]) == 0
        assert len(srv.chat_requests()) == len(first)
        again = json.loads((tmp_path / "runs" / "again" / "metrics.json").read_text())
        assert again["counts"]["failed_known-failure"] == len(failed) and again["llm"]["calls"] == 0
        assert f"{len(failed)} rewrites not sent: their requests failed before" in capsys.readouterr().out
        # Unless told to retry them.
        assert main(["run", str(cfg), "--set", "run.name=retry", "--set", "rewriter.retry_failures=true"]) == 0
        assert len(srv.chat_requests()) == len(first) + 3 * len(failed)


def test_a_server_killed_mid_round_leaves_the_cause_in_every_reason(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        srv.kill_after = 5  # the first rewrite's four calls and one more, then nothing answers
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, saturation={"k": 1.0e9, "p": 0.5, "min_epoch": 2},
                           rewriter={"concurrency": 1, "breaker_failures": 2, "breaker_cooldown": 60})
        assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    failed = rows(run, "SELECT * FROM rewrites WHERE verdict='error'")
    kinds = Counter(r["failure"] for r in failed)
    assert kinds["connection"] >= 1 and kinds["circuit-open"] >= 1 and set(kinds) == {"connection", "circuit-open"}
    assert all("connection failed" in r["reason"] and "@127.0.0.1:" in r["reason"] for r in failed), failed
    assert all(len(r["reason"]) < 400 and "/v1" not in r["reason"].split(":", 3)[-1][:20] for r in failed)
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "Failed rewrites by kind" in shown and "circuit-open" in shown and "connection" in shown


def test_the_rewriter_is_told_whether_the_answer_was_right(tiny_dir, tmp_path, monkeypatch):
    ctx = RewriteContext(engine=None, system="P", question="Where is Mary?", gold="garden", student_answer="garden",
                         student_correct=True, loss=0.71)
    prompt, _ = DirectStrategy().request(ctx)
    assert "That answer is right, but the model has not learned it yet" in prompt and "0.71" in prompt and "wrong" not in prompt
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    told = {}
    for name, scorer in (("right", "test_real_server:always_right"), ("wrong", None)):
        with FakeOpenAI() as srv:
            cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"strategy": "direct"},
                               task={"scorer": scorer}, run={"name": name})
            assert main(["run", str(cfg)]) == 0
            told[name] = [b["messages"][-1]["content"] for b in srv.chat_requests()]
    assert told["right"] and all("That answer is right" in t and "is wrong" not in t for t in told["right"])
    assert told["wrong"] and all("That answer is wrong" in t for t in told["wrong"])  # the tiny model is wrong on all


def test_rounds_are_timed_as_rounds_and_a_serial_server_is_found(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    slot = threading.Lock()

    def one_at_a_time(messages):  # llama.cpp's server with one slot: requests queue
        with slot:
            time.sleep(0.05)
            return smart_reply(messages)

    for name, reply in (("parallel", None), ("serial", one_at_a_time)):
        with FakeOpenAI(**({"reply": reply} if reply else {}), latency=0.0 if reply else 0.1) as srv:
            cfg = write_config(tmp_path, tiny_dir, srv.base_url, saturation={"k": 1.0e9, "p": 0.5, "min_epoch": 2},
                               train={"epochs": 4}, rewriter={"strategy": "direct", "concurrency": 6}, run={"name": name})
            started = time.perf_counter()
            assert main(["run", str(cfg)]) == 0
            wall = time.perf_counter() - started
    capsys.readouterr()
    par = json.loads((tmp_path / "runs" / "parallel" / "metrics.json").read_text())["llm"]
    ser = json.loads((tmp_path / "runs" / "serial" / "metrics.json").read_text())["llm"]
    for llm in (par, ser):
        assert llm["cost"] is None  # fake-model has no price: unknown, not $0
    # Each round's wall time is at most the run's, and the rewrites of a parallel round overlap.
    epochs = rows(tmp_path / "runs" / "parallel", "SELECT * FROM epochs WHERE round_seconds IS NOT NULL")
    assert epochs and all(e["round_seconds"] <= wall for e in epochs)
    # Measured once, on the first round: 2 rewrites alone, 4 side by side.
    # Well above a serial server's ~1 even when the guard's CPU work makes a busy machine serialise part of it.
    assert par["concurrency_speedup"]["speedup"] > 1.8 and "serial_server" not in par
    assert [r["concurrency"] for r in par["rounds"]] == [6, 6, 6]
    assert ser["serial_server"]["concurrency"] == 6 and ser["serial_server"]["speedup"] < 1.3
    assert [r["concurrency"] for r in ser["rounds"]] == [6, 1, 1]
    assert main(["inspect", str(tmp_path / "runs" / "parallel")]) == 0
    assert "no price" in capsys.readouterr().out


def test_dry_run_refuses_an_endpoint_that_does_not_answer_and_says_one_that_does(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    cfg = write_config(tmp_path, tiny_dir, "http://127.0.0.1:9/v1")
    # An endpoint that does not answer is refused by the dry run as by the run: the same line, exit 2.
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "rewriter endpoint http://127.0.0.1:9/v1 is unreachable" in err and err.count("\n") == 1
    assert main(["run", str(cfg)]) == 2 and capsys.readouterr().err == err
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url)
        assert main(["run", str(cfg), "--dry-run"]) == 0
        assert srv.chat_requests() == []  # the probe lists models; no chat request is paid for
    out = capsys.readouterr().out
    assert "endpoint: openai:fake-model@127.0.0.1:" in out and "no price known for rewriter.model=fake-model" in out
    assert not (tmp_path / "runs").exists()
