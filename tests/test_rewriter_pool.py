"""rewrite_many (concurrency, order, exact per-job counts) and the budget (limits, prices, dry-run estimate)."""

import time

import pytest

from fake_openai import PREFIX
from rewriter.budget import Budget, BudgetExhausted, cost_of, estimate, price_of
from rewriter.cache import CachedEngine
from rewriter.engines import OpenAIEngine, reset_breakers
from rewriter.pool import rewrite_many, summarize
from rewriter.strategies import RewriteContext
from nslora.tasks.base import Sample


@pytest.fixture(autouse=True)
def _fresh():
    reset_breakers()


def engine(srv, **kw):
    return OpenAIEngine(base_url=srv.base_url, model="fake", max_retries=0, timeout=5, **kw)


def jobs_for(eng, n, base="Tom has {i} apples and buys 4 more. How many apples does Tom have now?"):
    out = []
    for i in range(n):
        q = base.format(i=i)
        out.append((Sample(f"s{i}", "Answer.", q, str(i + 4), str(i + 4)),
                    RewriteContext(eng, "Answer.", q, str(i + 4), "1")))
    return out


def test_textgrad_concurrent_order_and_exact_counts(fake_openai):
    fake_openai.latency = 0.02
    eng = engine(fake_openai)
    jobs = jobs_for(eng, 12)
    ticks = []
    results = rewrite_many(jobs, "textgrad", concurrency=8, progress=lambda i, r: ticks.append(i))
    assert [r.verdict for r in results] == ["accepted"] * 12, [r.reason for r in results]
    assert [r.new_question for r in results] == [PREFIX + ctx.question for _, ctx in jobs]
    assert [r.calls for r in results] == [4] * 12
    assert sum(r.calls for r in results) == len(fake_openai.chat_requests()) == eng.calls
    assert sum(r.tokens for r in results) == eng.prompt_tokens + eng.completion_tokens
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 and r.seconds > 0 for r in results)
    assert sorted(ticks) == list(range(12))
    assert summarize(results)["rewrites_accepted"] == 12


def test_concurrency_overlaps_the_waits(fake_openai):
    fake_openai.latency = 0.25
    jobs = jobs_for(engine(fake_openai), 8)
    start = time.perf_counter()
    results = rewrite_many(jobs, "direct", concurrency=8)
    elapsed = time.perf_counter() - start
    assert all(r.verdict == "accepted" for r in results)
    assert elapsed < 1.2  # sequential: 8 x 0.25 = 2 s


def test_a_broken_strategy_stops_the_round_rather_than_fail_every_sample(fake_openai):
    from nslora.core.errors import UserError
    from rewriter.strategies import DirectStrategy
    from rewriter.strategies.base import RoundStopped

    class Broken(DirectStrategy):
        def rewrite(self, sample, ctx):
            if sample.id == "s1":
                raise RuntimeError("boom")
            return super().rewrite(sample, ctx)

    with pytest.raises(RoundStopped, match="RuntimeError: boom"):
        rewrite_many(jobs_for(engine(fake_openai), 3), Broken(), concurrency=2)
    with pytest.raises(UserError, match="rewriter.strategy='nope' is not a built-in"):
        rewrite_many([], "nope")


def test_rules_in_the_pool_need_no_engine():
    jobs = [(s, RewriteContext(None, "Answer.", s.question, s.answer, "", task="gsm8k")) for s, _ in jobs_for(None, 4)]
    results = rewrite_many(jobs, "rules", concurrency=4, budget=Budget(max_calls=0))
    # max_calls=0 is already exhausted: rules calls nothing, yet the budget refuses every rewrite up front
    assert [r.verdict for r in results] == ["skipped"] * 4
    results = rewrite_many(jobs, "rules", concurrency=4)
    assert [r.verdict for r in results] == ["accepted"] * 4 and sum(r.calls for r in results) == 0


# --- budget --------------------------------------------------------------------------------------------------


def test_call_limit_is_exact_under_concurrency(fake_openai):
    fake_openai.latency = 0.05
    budget = Budget(max_calls=5)
    results = rewrite_many(jobs_for(engine(fake_openai), 10), "direct", concurrency=4, budget=budget)
    verdicts = [r.verdict for r in results]
    assert len(fake_openai.chat_requests()) == 5 == budget.calls
    assert verdicts.count("accepted") == 5
    refused = [r for r in results if r.verdict != "accepted"]
    assert len(refused) == 5 and all(r.verdict in ("skipped", "error") for r in refused)
    assert all(r.reason.startswith("budget exhausted: calls 5/5") for r in refused)
    assert all(r.calls == 0 for r in refused)
    assert budget.refused == 5


def test_textgrad_stops_mid_sample_when_tokens_run_out(fake_openai):
    budget = Budget(max_tokens=1)
    results = rewrite_many(jobs_for(engine(fake_openai), 3), "textgrad", concurrency=1, budget=budget)
    assert results[0].verdict == "error" and results[0].reason.startswith("budget exhausted: tokens")
    assert results[0].calls == 1  # the first call was admitted, then the token limit was reached
    assert [r.verdict for r in results[1:]] == ["skipped", "skipped"]
    assert len(fake_openai.chat_requests()) == 1


def test_cache_hits_are_free_even_when_the_budget_is_spent(fake_openai, tmp_path):
    cached = CachedEngine(engine(fake_openai), tmp_path / "c.sqlite")
    jobs = jobs_for(cached, 3)
    rewrite_many(jobs, "direct", concurrency=3)
    budget = Budget(max_calls=0)
    budget_jobs = [(s, ctx) for s, ctx in jobs]
    # every sample is cached: the engine answers without the budget admitting a call
    from rewriter.strategies import STRATEGIES

    wrapped = budget.wrap(cached)
    res = STRATEGIES["direct"]().rewrite(budget_jobs[0][0], RewriteContext(wrapped, "Answer.", jobs[0][1].question, "4", "1"))
    assert res.verdict == "accepted" and res.cache_hits == 1 and res.calls == 0 and budget.refused == 0
    with pytest.raises(BudgetExhausted, match="budget exhausted: calls 0/0"):
        wrapped.generate("something new")


def test_cost_is_charged_by_model_price(fake_openai):
    budget = Budget(max_cost=1.0, prices={"fake": (1.0, 2.0)})
    eng = budget.wrap(engine(fake_openai))
    eng.generate("hello there")
    inner = eng.engine
    assert budget.cost == pytest.approx((inner.prompt_tokens * 1.0 + inner.completion_tokens * 2.0) / 1e6)
    snap = budget.snapshot()
    assert snap["calls"] == 1 and snap["tokens"] == inner.prompt_tokens + inner.completion_tokens
    unpriced = Budget()
    unpriced.wrap(engine(fake_openai)).generate("hello")
    assert unpriced.cost == 0 and unpriced.snapshot()["unpriced"] == ["fake"]


def test_prices():
    assert price_of("gpt-4o") == (2.5, 10.0)
    assert price_of("gpt-4o-mini") == (0.15, 0.6)
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.6)  # the longest priced prefix wins
    assert price_of("gpt-4o-2024-08-06") == (2.5, 10.0)
    assert price_of("gpt-4oops") is None and price_of("llama", kind="local") == (0.0, 0.0)
    assert cost_of("gpt-4o", 1_000_000, 100_000) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="max_calls=-1"):
        Budget(max_calls=-1)


def test_estimate_for_a_dry_run():
    tg = estimate(64, "textgrad", avg_prompt_tokens=120, model="gpt-4o")
    assert tg["calls"] == 256 and tg["tokens"] > 64 * 2000 and 0.5 < tg["cost"] < 5
    assert estimate(64, "textgrad", optimize_system=True)["calls"] == 384
    assert estimate(64, "direct")["calls"] == 64
    assert estimate(64, "rules") == {**estimate(64, "rules"), "calls": 0, "tokens": 0, "cost": 0.0}
    assert estimate(64, "textgrad", model="qwen", kind="local")["cost"] == 0
    assert estimate(64, "textgrad", cache_hit_rate=0.5)["calls"] == 128
    mini = estimate(64, "textgrad", model="gpt-4o-mini")["cost"]
    assert mini < tg["cost"] / 10
    with pytest.raises(ValueError, match="unknown strategy"):
        estimate(1, "magic")
