"""The symbolic branch of a run, built once from the `rewriter` config section: strategy, engine (reply cache in
front), budget and meaning guard; then, each routing round, the rewrites of its symbolic samples (a pool of
live calls, or one Batch API job) or one update of the shared system prompt.

    rw = Rewriter.plan(cfg.rewriter, task="babi")            # strategy resolved and checked; no engine yet
    rw.preflight(remote=True)                                 # guard embedder, strategy, then open_remote(): each exercised
                                                              # once before any folder exists (one line when one is broken)
    rw.open_local(model, tokenizer)                           # local engine: once the model is loaded
    rw.ready(cache_dir="runs")                                # reply cache and budget
    results = rw.rewrite_round(jobs, workdir, progress)       # jobs: RoundJob(sample, system, question, student_answer)
                                                              # a bug (not an engine fault) raises RoundStopped
    result = rw.update_system(system, examples)               # the prompt-only arm's shared P
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from nslora.core import plugins
from nslora.core.errors import UserError
from rewriter.config import RewriterConfig
from rewriter.guard import GuardConfig
from rewriter import guard
from rewriter.strategies import STRATEGIES, RewriteContext, RewriteResult, Strategy, build_strategy, check_strategy
from rewriter.strategies.base import Meter, engine_fault, error, failure_reason, stopped


# A speed-up from concurrency below this is a server answering one request at a time; CALIBRATION rewrites of the
# first concurrent round run alone to measure it.
SERIAL_SPEEDUP = 1.3
CALIBRATION = 2


def _exercise(name: str, check) -> None:
    """Run a strategy's check; a broken rule, or any exception it raises, is one line naming rewriter.strategy."""
    try:
        plugins.conformance("rewriter.strategy", name, check)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"rewriter.strategy={name!r} fails on an example rewrite before the run "
                        f"({failure_reason(e)}); fix it, then run again") from None


class RoundJob(NamedTuple):
    """One symbolic sample of a round: the sample, its current prompt, what the trained model answers now, whether
    that answer is right by the task's scorer, and its training loss (so the rewriter is told the truth)."""

    sample: Any
    system: str
    question: str
    student_answer: str
    student_correct: bool | None = None
    loss: float | None = None


def guard_config(rt: RewriterConfig) -> GuardConfig:
    return GuardConfig(enabled=rt.guard, similarity=rt.guard_similarity, min_similarity=rt.guard_min_similarity,
                       min_length_ratio=rt.guard_min_length_ratio, max_length_ratio=rt.guard_max_length_ratio)


def make_budget(rt: RewriterConfig):
    """A Budget when any limit is set (None otherwise: nothing to enforce, costs are still in RewriteResults)."""
    if rt.max_calls is None and rt.max_total_tokens is None and rt.max_cost is None:
        return None
    from rewriter.budget import Budget

    return Budget(max_calls=rt.max_calls, max_tokens=rt.max_total_tokens, max_cost=rt.max_cost,
                  prices={k: tuple(v) for k, v in rt.prices.items()})


def with_cache(engine, rt: RewriterConfig, run_dir: str | os.PathLike | None = None):
    """The engine with the reply cache in front when `rt.cache` (a path is needed: cache_path or run_dir)."""
    if not rt.cache or engine is None:
        return engine
    path = rt.cache_path or (os.path.join(os.fspath(run_dir), "rewrite-cache.sqlite") if run_dir is not None else None)
    if path is None:
        return engine
    from rewriter.cache import CachedEngine

    return CachedEngine(engine, path, retry_failures=rt.retry_failures)


@dataclass
class Rewriter:
    cfg: RewriterConfig
    strategy: Strategy
    task: str | None = None  # the task's name, for task-aware strategies (rules)
    engine: Any = None  # None: the strategy calls no model, the policy never routes symbolic, or not the main process
    budget: Any = None
    guard: GuardConfig = field(default_factory=GuardConfig)
    concurrency: int = 0  # what the next round runs at: rewriter.concurrency, or 1 once the server proved serial
    measured: dict | None = None  # the speed-up concurrency gave, measured once (see _calibrate)
    serial: dict | None = None  # set when that speed-up showed a server answering one request at a time
    last_round: dict = field(default_factory=dict)  # the latest round's wall seconds, summed rewrite seconds, concurrency

    def __post_init__(self):
        self.concurrency = self.concurrency or self.cfg.concurrency

    @classmethod
    def plan(cls, rt: RewriterConfig, task: str | None = None, score=None) -> "Rewriter":
        """Resolve the strategy (your own class is checked here) and refuse settings it cannot serve.
        `score(reply, sample)`: the task's scorer, which `rewriter.answer_check` needs."""
        strategy = build_strategy(rt.strategy, rt.strategy_params)
        if rt.strategy not in STRATEGIES:
            _exercise(rt.strategy, lambda: check_strategy(strategy))
        if rt.batch != "off" and not strategy.batchable:
            raise UserError(f"rewriter.batch={rt.batch!r} needs a one-call strategy (direct, or yours with request/parse), "
                            f"not rewriter.strategy={rt.strategy!r}; set rewriter.batch=off")
        if rt.answer_check:
            if score is None:
                raise UserError("rewriter.answer_check=true needs the task's scorer; set rewriter.answer_check=false")
            from rewriter.answer_check import AnswerChecked

            strategy = AnswerChecked(strategy, score)
        return cls(cfg=rt, strategy=strategy, task=task, guard=guard_config(rt))

    def preflight(self, remote: bool = False, shared_system: bool = False) -> None:
        """Before the first epoch, each component a round uses is built and exercised once, so that a broken one is
        one line (UserError) with nothing trained, rather than an error verdict on every rewrite of a run that then
        finishes normally: the meaning guard's embedder (its files), a built-in strategy on an example (yours ran its
        conformance check in `plan`) against a scripted engine, and with `remote` the engine (`open_remote`: the
        same cheap request the dry run makes, no chat call, so nothing is paid)."""
        if self.guard.enabled and self.guard.similarity:
            try:
                guard.embedder(self.guard.embedding_model).folder()  # loaded when a rewrite first needs it
            except Exception as e:
                raise UserError(f"rewriter.guard_similarity=true, but the meaning guard's embedder cannot run "
                                f"({failure_reason(e)}); make it available or set rewriter.guard_similarity=false") from None
        if self.cfg.strategy in STRATEGIES:
            _exercise(self.cfg.strategy, lambda: check_strategy(self.strategy, system=shared_system))
        if remote:
            self.open_remote()

    @property
    def calls_model(self) -> bool:
        return bool(self.strategy.calls_model)

    def open_remote(self) -> None:
        """Build a non-local engine and check it answers (one line, UserError, when it does not)."""
        from rewriter.engines import ENGINES, build_engine, check_engine, probe

        self.engine = build_engine(self.cfg)
        if self.cfg.engine in ENGINES:
            probe(self.engine)
        else:  # your engine: the contract, with one short call
            plugins.conformance("rewriter.engine", self.cfg.engine, lambda: check_engine(self.engine))

    def open_local(self, model, tokenizer) -> None:
        from rewriter.engines import build_engine

        self.engine = build_engine(self.cfg, local_model=model, local_tokenizer=tokenizer)

    def ready(self, cache_dir: str | os.PathLike | None) -> None:
        """Reply cache in front of the engine (beside the run folders: a rerun pays nothing twice) and the budget."""
        if self.engine is not None:
            self.engine = with_cache(self.engine, self.cfg, cache_dir)
            self.budget = make_budget(self.cfg)

    @property
    def engine_name(self) -> str:
        return getattr(self.engine, "name", None) or ("none" if self.engine is None else type(self.engine).__name__)

    def context(self, system: str, question: str, gold: str, student_answer: str, student_correct: bool | None = None,
                loss: float | None = None) -> RewriteContext:
        return RewriteContext(engine=self.engine, system=system, question=question, gold=gold,
                              student_answer=student_answer, optimize_system=self.cfg.optimize_system,
                              guard=self.guard, task=self.task, student_correct=student_correct, loss=loss)

    def rewrite_round(self, jobs: list[RoundJob], workdir: str | os.PathLike, progress=None) -> list[RewriteResult]:
        """Each job's RewriteResult, in order: live concurrent calls, or one Batch API job (`rewriter.batch`).
        The round is timed as a whole (`last_round`): its rewrites overlap, so their own times do not add up to it."""
        pairs = [(j.sample, self.context(j.system, j.question, j.sample.answer, j.student_answer, j.student_correct, j.loss))
                 for j in jobs]
        start = time.perf_counter()
        if self.cfg.batch != "off":
            from rewriter.batch import rewrite_batch

            try:
                results = rewrite_batch(pairs, self.engine, Path(workdir), mode=self.cfg.batch, strategy=self.strategy,
                                        poll_seconds=self.cfg.batch_poll_seconds, timeout=self.cfg.batch_timeout,
                                        budget=self.budget)
            except Exception as e:  # the replies are cached before they are parsed and judged: a rerun pays nothing
                if engine_fault(e):
                    raise
                raise stopped(f"the batch round with {type(self.strategy).__name__}", e) from e
            if progress is not None:
                progress.update(len(pairs))
            self.last_round = {"seconds": round(time.perf_counter() - start, 3), "busy": None, "concurrency": None}
            return results
        from rewriter.pool import rewrite_many

        concurrency = self.concurrency
        if self.measured is None and concurrency > 1 and len(pairs) >= 2 + CALIBRATION:
            results = self._calibrate(pairs, progress)
        else:
            results = rewrite_many(pairs, self.strategy, concurrency=concurrency, budget=self.budget, progress=progress)
        busy = sum(r.seconds or 0.0 for r in results)
        self.last_round = {"seconds": round(time.perf_counter() - start, 3), "busy": round(busy, 3), "concurrency": concurrency}
        return results

    def _calibrate(self, pairs, progress) -> list[RewriteResult]:
        """The first concurrent round: CALIBRATION rewrites one at a time give the time of a rewrite alone, then the
        rest run side by side. Their speed-up is (rewrites x time alone) / wall time: about the concurrency on a
        server that answers requests in parallel, about 1 on one that queues them (llama.cpp's and Ollama's
        defaults). Such a server gains nothing from concurrency and its queued requests run into their timeouts,
        so later rounds run one at a time. Rewrites answered from the cache tell nothing and are left out."""
        from rewriter.pool import rewrite_many

        head = rewrite_many(pairs[:CALIBRATION], self.strategy, concurrency=1, budget=self.budget, progress=progress)
        start = time.perf_counter()
        rest = rewrite_many(pairs[CALIBRATION:], self.strategy, concurrency=self.concurrency, budget=self.budget, progress=progress)
        wall = time.perf_counter() - start
        live = lambda rs: [r.seconds for r in rs if r.calls > 0 and not r.cache_hits and r.seconds]
        alone, side_by_side = live(head), live(rest)
        if len(alone) == CALIBRATION and len(side_by_side) >= 2 and wall > 0:
            speedup = len(side_by_side) * (sum(alone) / len(alone)) / wall
            self.measured = {"speedup": round(speedup, 2), "concurrency": self.concurrency, "rewrites": len(side_by_side)}
            if speedup < SERIAL_SPEEDUP:
                self.serial = dict(self.measured)
                self.concurrency = 1
        return head + rest

    def update_system(self, system: str, examples: list[tuple[str, str, str]]) -> RewriteResult:
        """One update of the shared system prompt from (question, student answer, gold) examples. An engine fault is
        an error verdict; any other exception stops the round (RoundStopped), as in `rewrite_round`."""
        ctx = self.context(system, "", "", "")
        try:
            return self.strategy.update_system(examples, ctx)
        except Exception as e:
            if not engine_fault(e):
                raise stopped(f"the shared system prompt's update with {type(self.strategy).__name__}", e) from e
            return error(Meter(ctx.engine), e)

    @property
    def system_label(self) -> str:
        """How a shared-P update is recorded in the rewrites table: by the method that made it."""
        return f"{self.strategy.system_method or self.cfg.strategy}-system"

    def cost(self, res: RewriteResult) -> float | None:
        """Estimated USD of a rewrite: only engines of kind "openai" are priced (by rewriter.model); None when
        it spent tokens on a model with no known price (shown as "no price", never as $0)."""
        from rewriter.budget import cost_of, price_of
        from rewriter.engine import engine_kind

        kind = self.cfg.engine if self.engine is None else engine_kind(self.engine)
        prices = {k: tuple(v) for k, v in self.cfg.prices.items()}
        if res.tokens and price_of(self.cfg.model, prices, kind) is None:
            return None
        return cost_of(self.cfg.model, res.prompt_tokens, res.completion_tokens, prices, kind)
