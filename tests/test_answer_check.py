"""rewriter.answer_check: a rewrite the guard accepted is kept only if the engine, asked the new question, reaches
the gold answer; the check's call is metered with the rewrite's own."""

import json

from fake_openai import FakeOpenAI
from rewriter.answer_check import AnswerChecked
from rewriter.engine import UsageCounter
from rewriter.guard import GuardConfig
from rewriter.strategies import RewriteContext, build_strategy
from nslora.commands.cli import main
from nslora.tasks.babi import BabiTask
from nslora.tasks.base import Sample
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)

STORY = "Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is Mary?"


class Answers(UsageCounter):
    """Answers every prompt with a fixed reply (or raises it), counting calls like a real engine."""

    name = "scripted"

    def __init__(self, reply):
        super().__init__()
        self.reply, self.prompts = reply, []

    def generate(self, prompt, system=None, **params):
        self.prompts.append((prompt, system, params))
        self.record_usage(10, 2)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _check(reply):
    engine = Answers(reply)
    task = BabiTask()
    strategy = AnswerChecked(build_strategy("rules"), task.score)
    sample = Sample("s0", "Answer with one word.", STORY, "bathroom", "bathroom")
    ctx = RewriteContext(engine=engine, system=sample.system, question=STORY, gold="bathroom", student_answer="hallway",
                         guard=GuardConfig(similarity=False), task="babi")
    return strategy.rewrite(sample, ctx), engine


def test_a_rewrite_answered_right_is_kept_and_its_check_is_metered():
    res, engine = _check("bathroom")
    assert res.verdict == "accepted" and res.new_question.startswith("Story:\n1. Mary moved")
    assert res.reason.endswith("answer check passed") and res.scores["answer_check"] == "bathroom"
    assert (res.calls, res.prompt_tokens, res.completion_tokens) == (1, 10, 2)
    prompt, system, _ = engine.prompts[0]
    assert prompt == res.new_question and system == "Answer with one word."  # asked the new question under P


def test_a_rewrite_answered_wrong_is_rejected_with_the_answer_named():
    res, _ = _check("The hallway.")
    assert res.verdict == "rejected" and res.new_question is None and res.candidate.startswith("Story:")
    assert "answered 'The hallway.'" in res.reason and "'bathroom'" in res.reason and res.calls == 1


def test_a_failed_check_keeps_the_sample_numerical():
    res, _ = _check(ConnectionError("connection refused"))
    assert res.verdict == "error" and res.new_question is None
    assert res.reason.startswith("answer check failed: ConnectionError: connection refused")


def test_rejected_by_the_guard_costs_no_check():
    engine = Answers("bathroom")

    class Leaky(type(build_strategy("rules"))):
        def rewrite(self, sample, ctx):
            from rewriter.strategies.base import Meter, judge
            return judge(ctx, Meter(ctx.engine), "Where is Mary?", None)  # drops John

    sample = Sample("s0", "P", STORY, "bathroom", "bathroom")
    ctx = RewriteContext(engine=engine, system="P", question=STORY, gold="bathroom", student_answer="x",
                         guard=GuardConfig(similarity=False))
    res = AnswerChecked(Leaky(), BabiTask().score).rewrite(sample, ctx)
    assert res.verdict == "rejected" and "answer check" not in res.reason and engine.prompts == []


def test_answer_check_in_a_run_with_the_rules_strategy(tiny_dir, tmp_path, monkeypatch):
    """rules calls no model, but the check needs one: the engine is built, asked once per rule rewrite, and only
    the rewrites it answers right are trained on."""
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI(reply=lambda messages: "kitchen") as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, saturation={"k": 1.0e9, "p": 0.5, "min_epoch": 2},
                           rewriter={"strategy": "rules", "answer_check": True, "guard_similarity": False})
        assert main(["run", str(cfg)]) == 0
        asked = [r["messages"][-1]["content"] for r in srv.chat_requests()]
    run_dir = tmp_path / "runs" / "r"
    rewrites = rows(run_dir, "SELECT r.*, s.answer FROM rewrites r JOIN samples s ON s.id = r.sample_id")
    # One check per rewrite; the same rewritten question asked again in a later round comes from the reply cache.
    assert rewrites and len(asked) == sum(r["calls"] for r in rewrites) and all(q.startswith("Story:\n1. ") for q in asked)
    for r in rewrites:
        assert r["calls"] + r["cache_hits"] == 1
        if r["answer"] == "kitchen":
            assert r["verdict"] == "accepted" and r["new_question"].startswith("Story:")
        else:
            assert r["verdict"] == "rejected" and "answered 'kitchen'" in r["reason"]
    assert {r["verdict"] for r in rewrites} == {"accepted", "rejected"}
    counts = json.loads((run_dir / "metrics.json").read_text())["counts"]
    assert counts["rewrites_accepted"] == sum(r["answer"] == "kitchen" for r in rewrites)


def test_answer_check_refuses_batch_mode(tmp_path, capsys):
    assert main(["run", "--set", "rewriter.answer_check=true", "--set", "rewriter.engine=openai",
                 "--set", "rewriter.batch=replay", "--dry-run"]) == 2
    assert "rewriter.answer_check=true needs live calls" in capsys.readouterr().err


def test_dry_run_counts_the_check_call(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"strategy": "direct", "answer_check": True})
        assert main(["run", str(cfg), "--dry-run"]) == 0
    # 12 samples, p = 0.25 -> 3 a round, 2 rounds; direct: 1 call + 1 check.
    assert "~12 LLM calls" in capsys.readouterr().out
