"""The Batch API scale path (rewriter.batch) against the loopback server: same results as the live round, the
shared reply cache, failed lines, failed/expired/overdue batches, the file format, vLLM output, offline replay."""

import json
import os

import pytest

from fake_openai import PREFIX
from rewriter.batch import (
    BatchError,
    messages_for,
    output_paths,
    read_results,
    rewrite_batch,
    run_offline,
    submit,
    write_requests,
)
from rewriter.budget import Budget
from rewriter.cache import CachedEngine
from rewriter.engines import OpenAIEngine, reset_breakers
from rewriter.guard import GuardConfig
from rewriter.pool import rewrite_many
from rewriter.strategies import RewriteContext
from nslora.tasks.base import Sample

KEY = "sk-batch-test-SECRET-0123456789"
FAST_GUARD = GuardConfig(similarity=False)  # the symbolic checks only: no embedding model to load


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    reset_breakers()
    monkeypatch.setenv("NSLORA_BATCH_TEST_KEY", KEY)


def engine(srv, **kw):
    return OpenAIEngine(base_url=srv.base_url, model="fake", api_key_env="NSLORA_BATCH_TEST_KEY", max_retries=0,
                        timeout=5, **kw)


def jobs_for(eng, n):
    out = []
    for i in range(n):
        q = f"Tom has {i} apples and buys 4 more. How many apples does Tom have now?"
        out.append((Sample(f"s{i}", "Answer.", q, str(i + 4), str(i + 4)),
                    RewriteContext(eng, "Answer.", q, str(i + 4), "1", guard=FAST_GUARD)))
    return out


FIELDS = ("new_question", "new_system", "verdict", "reason", "candidate", "calls", "tokens", "prompt_tokens",
          "completion_tokens", "cache_hits", "scores")


def view(results):
    return [{f: getattr(r, f) for f in FIELDS} for r in results]


def test_batch_round_equals_live_round(fake_openai, tmp_path):
    eng = engine(fake_openai)
    jobs = jobs_for(eng, 6)
    live = rewrite_many(jobs, "direct", concurrency=4)
    live_messages = sorted(json.dumps(r["messages"]) for r in fake_openai.chat_requests())
    assert len(live_messages) == 6

    fake_openai.batch_polls = 3
    batch = rewrite_batch(jobs, eng, tmp_path / "b", poll_seconds=0.01)
    assert view(batch) == view(live)
    assert [r.new_question for r in batch] == [PREFIX + ctx.question for _, ctx in jobs]
    assert all(r.verdict == "accepted" and r.calls == 1 and r.prompt_tokens > 0 for r in batch)
    # the batch sent exactly the live path's messages, and made no live chat call
    assert sorted(json.dumps(b["messages"]) for b in fake_openai.batch_requests) == live_messages
    assert len(fake_openai.chat_requests()) == 6
    (batch_obj,) = fake_openai.batches.values()
    assert batch_obj["_polls"] == 3 and batch_obj["status"] == "completed"
    assert batch_obj["endpoint"] == "/v1/chat/completions" and batch_obj["completion_window"] == "24h"
    assert fake_openai.uploads[0]["purpose"] == "batch"


def test_second_round_is_all_cache_hits_shared_with_the_live_path(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "cache.sqlite")
    jobs = jobs_for(cached, 5)
    first = rewrite_batch(jobs, cached, tmp_path / "b", poll_seconds=0.01)
    assert [r.verdict for r in first] == ["accepted"] * 5 and len(fake_openai.uploads) == 1
    second = rewrite_batch(jobs, cached, tmp_path / "b", poll_seconds=0.01)
    assert len(fake_openai.uploads) == 1 and len(fake_openai.batches) == 1  # no upload, no batch
    assert [(r.calls, r.tokens, r.cache_hits) for r in second] == [(0, 0, 1)] * 5
    assert [r.new_question for r in second] == [r.new_question for r in first]
    # the live path reads the same cache: zero HTTP calls
    live = rewrite_many(jobs, "direct", concurrency=2)
    assert fake_openai.chat_requests() == [] and [r.cache_hits for r in live] == [1] * 5
    assert [r.new_question for r in live] == [r.new_question for r in first]


def test_live_replies_are_batch_cache_hits_and_duplicates_are_sent_once(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "cache.sqlite")
    jobs = jobs_for(cached, 3)
    rewrite_many(jobs[:1], "direct")
    dup = (Sample("s2", "Answer.", jobs[2][0].question, "6", "6"), jobs[2][1])
    results = rewrite_batch(jobs + [dup], cached, tmp_path / "b", poll_seconds=0.01)
    assert [r.verdict for r in results] == ["accepted"] * 4
    assert [(r.calls, r.cache_hits) for r in results] == [(0, 1), (1, 0), (1, 0), (0, 1)]
    assert [line["custom_id"] for line in fake_openai.uploads[0]["lines"]] == ["s1", "s2"]


def test_a_failed_line_is_an_error_and_is_not_cached(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "cache.sqlite")
    jobs = jobs_for(cached, 3)
    fake_openai.batch_fail = {"s1"}
    results = rewrite_batch(jobs, cached, tmp_path / "b", poll_seconds=0.01)
    assert [r.verdict for r in results] == ["accepted", "error", "accepted"]
    assert results[1].reason.startswith("BatchError: HTTP 400") and "scripted batch line failure" in results[1].reason
    assert results[1].calls == 0 and results[1].new_question is None
    fake_openai.batch_fail = set()
    again = rewrite_batch(jobs, cached, tmp_path / "b", poll_seconds=0.01)
    assert [line["custom_id"] for line in fake_openai.uploads[-1]["lines"]] == ["s1"]
    assert [r.verdict for r in again] == ["accepted"] * 3 and [r.cache_hits for r in again] == [1, 0, 1]


@pytest.mark.parametrize("outcome", ["expired", "failed"])
def test_a_batch_that_does_not_complete_is_a_one_line_error(fake_openai, tmp_path, outcome):
    eng = engine(fake_openai)
    jobs = jobs_for(eng, 3)
    fake_openai.batch_outcome = outcome
    path = tmp_path / "x.requests.jsonl"
    write_requests(jobs, eng, path)
    with pytest.raises(BatchError) as info:
        submit(eng, path, poll_seconds=0.01, timeout=5)
    message = str(info.value)
    assert "\n" not in message and KEY not in message and f"batch_fake_1 {outcome}" in message
    results = rewrite_batch(jobs, eng, tmp_path / "b", poll_seconds=0.01)
    assert [r.verdict for r in results] == ["error"] * 3
    assert all("\n" not in r.reason and KEY not in r.reason for r in results)
    if outcome == "expired":  # each line comes back in the error file
        assert all("batch_expired" in r.reason for r in results)
    else:
        assert all("batch_fake_2 failed; invalid_request: scripted batch failure" in r.reason for r in results)


def test_an_overdue_batch_is_cancelled(fake_openai, tmp_path):
    eng = engine(fake_openai)
    fake_openai.batch_polls = 10_000
    path = tmp_path / "x.requests.jsonl"
    write_requests(jobs_for(eng, 2), eng, path)
    with pytest.raises(BatchError, match=r"not finished after 0.1 s .*cancelled it"):
        submit(eng, path, poll_seconds=0.02, timeout=0.1)
    assert [b["status"] for b in fake_openai.batches.values()] == ["cancelled"]


def test_an_unreachable_server_is_a_one_line_error(tmp_path):
    from fake_openai import FakeOpenAI

    with FakeOpenAI() as srv:
        eng = engine(srv)
    path = tmp_path / "x.requests.jsonl"
    write_requests(jobs_for(eng, 1), eng, path)
    with pytest.raises(BatchError, match="batch submission failed: connection failed") as info:
        submit(eng, path, poll_seconds=0.01, timeout=1)
    assert "\n" not in str(info.value) and KEY not in str(info.value)


def test_requests_file_is_batch_api_format_without_the_key(fake_openai, tmp_path):
    eng = engine(fake_openai, temperature=0.3, max_tokens=99)
    jobs = jobs_for(eng, 3)
    path = tmp_path / "r.requests.jsonl"
    assert write_requests(jobs, eng, path) == ["s0", "s1", "s2"]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 3
    for line, (_, ctx) in zip(lines, jobs):
        assert set(line) == {"custom_id", "method", "url", "body"}
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"] == {"model": "fake", "messages": messages_for(ctx), "temperature": 0.3, "max_tokens": 99}
    # the live direct strategy sends the same body
    rewrite_many(jobs[:1], "direct")
    (sent,) = fake_openai.chat_requests()
    assert sent == lines[0]["body"]
    # no file of a whole round holds the key
    rewrite_batch(jobs, eng, tmp_path / "round", poll_seconds=0.01)
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert len(files) >= 3
    for f in files:
        assert KEY not in open(f, encoding="utf-8", errors="replace").read(), f
    assert KEY not in json.dumps(fake_openai.uploads)


def test_read_results_parses_vllm_run_batch_output(tmp_path):
    ok = {"id": "vllm-1a", "custom_id": "s0", "response": {"status_code": 200, "request_id": "vllm-batch-1b", "body": {
        "id": "chatcmpl-1c", "object": "chat.completion", "created": 1, "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Read carefully. Q?", "tool_calls": [],
                                             "reasoning_content": None},
                     "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 40, "total_tokens": 45, "completion_tokens": 5, "prompt_tokens_details": None},
        "prompt_logprobs": None}}, "error": None}
    bad = {"id": "vllm-2a", "custom_id": "s1", "response": {"status_code": 400, "request_id": "vllm-batch-2b"},
           "error": "The model `nope` does not exist."}
    bad2 = {"id": "vllm-3a", "custom_id": "s2", "response": {"status_code": 404, "request_id": "vllm-batch-3b"},
            "error": {"object": "error", "message": "not found", "type": "NotFoundError", "param": None, "code": 404}}
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in (ok, bad, bad2)))
    got = read_results(path)
    assert got["s0"].ok and got["s0"].text == "Read carefully. Q?"
    assert (got["s0"].prompt_tokens, got["s0"].completion_tokens) == (40, 5)
    assert not got["s1"].ok and got["s1"].error == "The model `nope` does not exist."
    assert got["s2"].error == "404: not found"
    path.write_text('{"not": "a batch line"}\n')
    with pytest.raises(BatchError, match="line 1 has no custom_id"):
        read_results(path)


def test_run_offline_replays_and_read_results_reads_it(fake_openai, tmp_path):
    eng = engine(fake_openai)
    jobs = jobs_for(eng, 4)
    req = tmp_path / "o.requests.jsonl"
    write_requests(jobs, eng, req)
    out, _ = output_paths(req)
    assert out.endswith("o.output.jsonl")
    fake_openai.script = ["ok", "ok", 400]  # the third line is refused
    run_offline(req, out, eng)
    got = read_results(out)
    assert list(got) == ["s0", "s1", "s2", "s3"]
    assert [got[f"s{i}"].text for i in (0, 1, 3)] == [PREFIX + jobs[i][1].question for i in (0, 1, 3)]
    assert not got["s2"].ok and "HTTP 400" in got["s2"].error and KEY not in got["s2"].error
    assert len(fake_openai.chat_requests()) == 4
    # a whole round in replay mode: same results as the live path
    live = rewrite_many(jobs, "direct", concurrency=2)
    replay = rewrite_batch(jobs, eng, tmp_path / "b", mode="replay")
    assert view(replay) == view(live) and fake_openai.batches == {}


def test_budget_admits_requests_and_is_charged(fake_openai, tmp_path):
    eng = engine(fake_openai)
    budget = Budget(max_calls=2)
    results = rewrite_batch(jobs_for(eng, 4), eng, tmp_path / "b", poll_seconds=0.01, budget=budget)
    assert [r.verdict for r in results] == ["accepted", "accepted", "skipped", "skipped"]
    assert results[2].reason == "budget exhausted: calls 2/2"
    assert budget.calls == 2 and budget.prompt_tokens == sum(r.prompt_tokens for r in results) > 0
    assert len(fake_openai.uploads[0]["lines"]) == 2
