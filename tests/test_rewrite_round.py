"""The symbolic branch inside a run: reply cache across runs, budget, revert of unhelpful rewrites, dry run,
cost accounting, and the API key kept out of every file."""

import json

from fake_openai import FakeOpenAI
from nslora.commands.cli import main
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)


def test_rerun_of_the_same_config_makes_no_http_call(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url)
        assert main(["run", str(cfg)]) == 0
        first = len(srv.chat_requests())
        assert main(["run", str(cfg), "--set", "run.name=again"]) == 0
        assert first > 0 and len(srv.chat_requests()) == first  # the probe is a GET, not a chat request
    m1, m2 = (json.loads((tmp_path / "runs" / n / "metrics.json").read_text())["llm"] for n in ("r", "again"))
    assert m2["calls"] == 0 and m2["cache_hits"] == m1["calls"] == first
    same = lambda n: [(r["sample_id"], r["new_question"]) for r in rows(tmp_path / "runs" / n, "SELECT * FROM rewrites ORDER BY epoch, sample_id")]
    assert same("r") == same("again")
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_budget_keeps_the_remaining_samples_numerical(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        # textgrad costs 4 calls a question: 10 calls pay for 2 questions, the third stops mid-way.
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"max_calls": 10, "concurrency": 1})
        assert main(["run", str(cfg)]) == 0
        assert len(srv.chat_requests()) == 10
    out = capsys.readouterr().out
    verdicts = [r["verdict"] for r in rows(tmp_path / "runs" / "r", "SELECT * FROM rewrites ORDER BY epoch, sample_id")]
    assert verdicts.count("accepted") == 2 and verdicts.count("skipped") == 3 and verdicts.count("error") == 1
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert metrics["counts"]["rewrites_skipped"] == 3 and metrics["llm"]["budget"]["calls"] == 10
    assert "budget reached: 3 symbolic samples stayed numerical" in out


def test_unhelpful_rewrites_are_reverted_and_recorded(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, train={"epochs": 4, "lr": 1.0e-6},
                           rewriter={"revert_after": 1, "strategy": "direct"})
        assert main(["run", str(cfg)]) == 0
    run_dir = tmp_path / "runs" / "r"
    accepted = rows(run_dir, "SELECT * FROM rewrites WHERE verdict='accepted' ORDER BY epoch, sample_id")
    reverts = {(r["epoch"], r["sample_id"]) for r in rows(run_dir, "SELECT * FROM decisions WHERE path='revert'")}
    loss = {(r["epoch"], r["sample_id"]): r for r in rows(run_dir, "SELECT * FROM signals")}
    checked = 0
    for r in accepted:
        e, i = r["epoch"], r["sample_id"]
        if (e + 1, i) not in loss:
            continue  # rewritten after the last epoch
        should = loss[(e + 1, i)]["loss"] >= loss[(e, i)]["loss"]
        assert ((e + 1, i) in reverts) == should, (e, i)
        checked += 1
        if should and (e + 2, i) in loss:
            assert loss[(e + 2, i)]["prompt_version"] == r["version"] - 1  # trained on the previous prompt again
    assert checked >= 3 and reverts
    assert json.loads((run_dir / "metrics.json").read_text())["counts"]["reverts"] == len(reverts)


def test_dry_run_estimates_and_writes_nothing(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"max_cost": 1.0})
        assert main(["run", str(cfg), "--dry-run"]) == 0
        assert srv.chat_requests() == []
    out = capsys.readouterr().out
    # 12 samples, p = 0.25 → 3 a round, epochs 3 from min_epoch 2 → 2 rounds; textgrad: 4 calls a question.
    assert "up to 2 routing rounds x 3 symbolic samples" in out and "~24 LLM calls" in out and "rewriter.max_cost=1.0" in out
    assert not (tmp_path / "runs").exists()


def test_batch_api_round_gives_the_live_rounds_rewrites(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    results = {}
    for mode in ("off", "api"):
        (tmp_path / mode).mkdir()
        with FakeOpenAI() as srv:
            srv.batch_polls = 1
            cfg = write_config(tmp_path / mode, tiny_dir, srv.base_url,
                               rewriter={"strategy": "direct", "batch": mode, "batch_poll_seconds": 0.01})
            assert main(["run", str(cfg)]) == 0
            results[mode] = (rows(tmp_path / mode / "runs" / "r", "SELECT sample_id, new_question, verdict FROM rewrites ORDER BY epoch, sample_id"),
                             len(srv.batches))
    assert results["api"][0] == results["off"][0] and results["off"][1] == 0 and results["api"][1] == 2  # one batch a round
    assert list((tmp_path / "api" / "runs" / "r" / "batches").glob("epoch-*/*requests*.jsonl"))


def test_batch_needs_the_direct_strategy(tmp_path, capsys):
    assert main(["run", "--set", "rewriter.batch=api", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "rewriter.batch='api' needs rewriter.engine=openai" in capsys.readouterr().err


def test_a_rewrite_is_judged_on_its_best_epoch_in_the_window_and_only_once():
    from router.nodes import revert_unhelpful

    def prompt(since, loss_at, version=1):
        return {"version": version, "since": since, "loss_at": loss_at, "prev_since": None}

    prompts = {"helped-once": prompt(2, 1.0), "never": prompt(2, 1.0), "open": prompt(3, 1.0), "original": prompt(2, 1.0, 0)}
    history = {3: {"helped-once": 0.3, "never": 1.2, "open": 2.0, "original": 5.0},
               4: {"helped-once": 1.8, "never": 1.0, "open": 2.0, "original": 5.0}}
    back, decisions = revert_unhelpful(prompts, history, 4, 2)
    # A spike at epoch 4 does not undo a rewrite that helped at epoch 3; equal to the old loss is no help.
    assert back == {"never": None} and [d["sample_id"] for d in decisions] == ["never"]
    assert "1.0000 at best in the 2 epoch(s) since the rewrite at epoch 2" in decisions[0]["reason"]
    # The window of a rewrite closes once: later epochs do not judge it again.
    history[5] = {"helped-once": 3.0, "never": 3.0, "open": 0.5, "original": 5.0}
    back, _ = revert_unhelpful(prompts, history, 5, 2)
    assert back == {}
    assert revert_unhelpful(prompts, history, 4, 0) == ({}, [])
