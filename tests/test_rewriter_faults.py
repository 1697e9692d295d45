"""Fault handling of OpenAIEngine on the loopback server: retries, Retry-After, timeouts, malformed replies,
the circuit breaker, and a server that dies mid-round. After each, the outcome counts are exact."""

import time

import pytest

from fake_openai import PREFIX, FakeOpenAI
from rewriter.cache import CachedEngine
from rewriter.engines import CircuitBreaker, EngineError, OpenAIEngine, reset_breakers
from rewriter.pool import rewrite_many
from rewriter.strategies import STRATEGIES, RewriteContext
from nslora.tasks.base import Sample

KEY_ENV = "NSLORA_TEST_FAULT_KEY"
KEY = "sk-test-FAULTS-DO-NOT-LEAK-0987654321"
GSM_Q = "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    reset_breakers()
    yield
    reset_breakers()


def make(srv, sleeps=None, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff_base", 0.001)
    sleep = sleeps.append if sleeps is not None else time.sleep
    return OpenAIEngine(base_url=srv.base_url, model="fake", api_key_env=KEY_ENV, sleep=sleep, **kw)


def test_429_honours_retry_after(fake_openai):
    fake_openai.script = [429, 429]
    fake_openai.retry_after = "1.5"
    sleeps = []
    eng = make(fake_openai, sleeps)
    assert eng.generate("hello").startswith("The answer is wrong")
    assert sleeps and all(s >= 1.5 for s in sleeps) and len(sleeps) == 2
    assert dict(eng.outcomes) == {"rate_limited": 2, "retries": 2, "ok": 1}
    assert len(fake_openai.chat_requests()) == 3 and eng.calls == 1


def test_429_really_waits(fake_openai):
    fake_openai.script = [429]
    fake_openai.retry_after = "0.3"
    eng = make(fake_openai)
    start = time.perf_counter()
    eng.generate("hello")
    assert time.perf_counter() - start >= 0.3


def test_retry_after_beyond_the_cap_gives_up_at_once(fake_openai):
    fake_openai.script = [429]
    fake_openai.retry_after = "3600"
    eng = make(fake_openai, [], retry_after_max=60)
    with pytest.raises(EngineError, match="asks to wait 3600 s"):
        eng.generate("hello")
    assert len(fake_openai.chat_requests()) == 1 and eng.outcomes["gave_up"] == 1


def test_5xx_are_retried_with_growing_backoff(fake_openai):
    fake_openai.script = [500, 502, 503]
    sleeps = []
    eng = make(fake_openai, sleeps, backoff_base=0.1, backoff_max=10)
    eng.generate("hello")
    assert dict(eng.outcomes) == {"server_error": 3, "retries": 3, "ok": 1}
    # exponential with jitter in [0.5, 1]: 0.05-0.1, 0.1-0.2, 0.2-0.4
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.2 <= sleeps[2] <= 0.4


def test_5xx_beyond_the_retries_fail_with_one_line_and_no_key(fake_openai):
    fake_openai.script = [500, 500, 500]
    eng = make(fake_openai, [], max_retries=2)
    with pytest.raises(EngineError) as info:
        eng.generate("hello")
    message = str(info.value)
    assert "HTTP 500" in message and "after 3 attempts" in message and KEY not in message and "\n" not in message
    assert dict(eng.outcomes) == {"server_error": 3, "retries": 2, "gave_up": 1}
    assert eng.calls == 0


def test_client_errors_are_not_retried(fake_openai):
    fake_openai.script = [400]
    eng = make(fake_openai, [])
    with pytest.raises(EngineError, match="HTTP 400"):
        eng.generate("hello")
    assert dict(eng.outcomes) == {"client_error": 1} and len(fake_openai.chat_requests()) == 1


def test_replies_slower_than_the_timeout_are_retried(fake_openai):
    fake_openai.script = ["slow"]
    fake_openai.slow_seconds = 1.0
    eng = make(fake_openai, [], timeout=0.3)
    assert eng.generate("hello")
    assert dict(eng.outcomes) == {"timeout": 1, "retries": 1, "ok": 1}


def test_malformed_replies_are_retried_and_paid_for(fake_openai):
    fake_openai.script = ["empty", "long"]
    eng = make(fake_openai, [])
    assert eng.generate("hello").startswith("The answer is wrong")
    assert dict(eng.outcomes) == {"malformed": 2, "retries": 2, "retries_changed": 2, "ok": 1}
    assert eng.calls == 3  # the malformed replies came back with usage: they count against the budget
    # Each retry after a malformed reply is a changed request: a reminder, then a raised temperature as well.
    sent = fake_openai.chat_requests()
    assert sent[1]["messages"][-1]["content"].startswith("hello\n\n(Your previous reply was empty.")
    assert "too long" in sent[2]["messages"][-1]["content"] and sent[2]["temperature"] == 0.3
    fake_openai.script = ["empty"] * 4
    with pytest.raises(EngineError, match="malformed reply: empty"):
        eng.generate("hello")


def test_textgrad_reply_without_tags_is_retried(fake_openai):
    from fake_openai import smart_reply

    seen = {"tagless": 0}

    def first_update_without_tags(messages):
        text = smart_reply(messages)
        if "<IMPROVED_VARIABLE>" in text and seen["tagless"] == 0:
            seen["tagless"] += 1
            return "I would rephrase it, but here is my opinion instead."
        return text

    fake_openai.reply = first_update_without_tags
    eng = make(fake_openai, [])
    s = Sample("s", "Answer.", GSM_Q, "7", "7")
    res = STRATEGIES["textgrad"]().rewrite(s, RewriteContext(eng, "Answer.", GSM_Q, "7", "12"))
    assert res.verdict == "accepted", res.reason
    assert res.new_question == PREFIX + GSM_Q
    assert res.calls == 5 and eng.outcomes["malformed"] == 1


def test_circuit_breaker_states():
    now = [0.0]
    b = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0])
    for _ in range(2):
        b.failure()
    assert b.allow()
    b.failure()
    assert not b.allow() and b.is_open and b.times_opened == 1
    now[0] = 10.0
    assert b.allow()  # the one trial call
    assert not b.allow()  # others still fail fast
    b.failure()  # the trial failed: open again
    assert not b.allow() and b.times_opened == 2
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.allow() and b.allow() and not b.is_open


def test_circuit_breaker_fails_fast_per_endpoint(fake_openai):
    fake_openai.script = [500] * 10
    eng = make(fake_openai, [], max_retries=0, breaker_failures=3, breaker_cooldown=60)
    for _ in range(3):
        with pytest.raises(EngineError, match="HTTP 500"):
            eng.generate("hello")
    twin = make(fake_openai, [], max_retries=0, breaker_failures=3, breaker_cooldown=60)  # same endpoint
    for e in (eng, twin):
        with pytest.raises(EngineError, match="circuit open after 3 consecutive failures"):
            e.generate("hello")
    assert len(fake_openai.chat_requests()) == 3
    assert eng.outcomes["circuit_open"] == 1 and twin.outcomes["circuit_open"] == 1
    with FakeOpenAI() as other:  # another endpoint is not affected
        assert make(other, []).generate("hello")


def test_server_killed_mid_round_loses_no_finished_rewrite(tmp_path):
    questions = [f"Tom has {i} apples and buys 4 more. How many apples does Tom have now?" for i in range(12)]
    with FakeOpenAI(latency=0.02) as srv:
        srv.kill_after = 5
        eng = CachedEngine(make(srv, [], max_retries=1, breaker_failures=3, breaker_cooldown=0.2), tmp_path / "c.sqlite")
        jobs = [(Sample(f"s{i}", "Answer.", q, str(i + 4), str(i + 4)),
                 RewriteContext(eng, "Answer.", q, str(i + 4), "1")) for i, q in enumerate(questions)]
        results = rewrite_many(jobs, "direct", concurrency=4)
        verdicts = [r.verdict for r in results]
        assert verdicts.count("accepted") == 5 and verdicts.count("error") == 7
        assert all(r.new_question == PREFIX + q for r, q in zip(results, questions) if r.verdict == "accepted")
        assert all(("connection failed" in r.reason or "circuit open" in r.reason) for r in results if r.verdict == "error")
        inner = eng.engine
        assert inner.outcomes["ok"] == 5 and inner.outcomes["connection_error"] == srv.served["drop"]
        failed_jobs = inner.outcomes["gave_up"] + inner.outcomes["circuit_open"]
        assert failed_jobs == 7 and len(eng.cache) == 5
        assert sum(r.calls for r in results) == 5 == inner.calls

        # The server comes back; the rerun pays only for what was lost.
        srv.kill_after = None
        time.sleep(0.25)  # the breaker's cool-down
        before = len(srv.chat_requests())
        again = rewrite_many(jobs, "direct", concurrency=1)
        assert [r.verdict for r in again] == ["accepted"] * 12
        assert len(srv.chat_requests()) - before == 7
        assert sum(r.cache_hits for r in again) == 5 and sum(r.calls for r in again) == 7
        assert [r.new_question for r, ok in zip(again, verdicts) if ok == "accepted"] == \
            [r.new_question for r in results if r.verdict == "accepted"]
