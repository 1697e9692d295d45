"""The symbolic branch of a run, built once from the `rewriter` config section: strategy, engine (reply cache in
front), budget and meaning guard; then, each routing round, the rewrites of its symbolic samples (a pool of
live calls, or one Batch API job) or one update of the shared system prompt.

    rw = Rewriter.plan(cfg.rewriter, task="babi")            # strategy resolved and checked; no engine yet
    rw.open_remote()                                          # openai / your engine: built and checked before any folder exists
    rw.open_local(model, tokenizer)                           # local engine: once the model is loaded
    rw.ready(cache_dir="runs")                                # reply cache and budget
    results = rw.rewrite_round(jobs, workdir, progress)       # jobs: RoundJob(sample, system, question, student_answer)
    result = rw.update_system(system, examples)               # the prompt-only arm's shared P
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from core import plugins
from core.errors import UserError
from rewriter.config import RewriterConfig
from rewriter.guard import GuardConfig
from rewriter.strategies import STRATEGIES, RewriteContext, RewriteResult, Strategy, build_strategy, check_strategy


class RoundJob(NamedTuple):
    """One symbolic sample of a round: the sample, its current prompt, and what the trained model answers now."""

    sample: Any
    system: str
    question: str
    student_answer: str


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

    return CachedEngine(engine, path)


@dataclass
class Rewriter:
    cfg: RewriterConfig
    strategy: Strategy
    task: str | None = None  # the task's name, for task-aware strategies (rules)
    engine: Any = None  # None: the strategy calls no model, the policy never routes symbolic, or not the main process
    budget: Any = None
    guard: GuardConfig = field(default_factory=GuardConfig)

    @classmethod
    def plan(cls, rt: RewriterConfig, task: str | None = None, score=None) -> "Rewriter":
        """Resolve the strategy (your own class is checked here) and refuse settings it cannot serve.
        `score(reply, sample)`: the task's scorer, which `rewriter.answer_check` needs."""
        strategy = build_strategy(rt.strategy, rt.strategy_params)
        if rt.strategy not in STRATEGIES:
            plugins.conformance("rewriter.strategy", rt.strategy, lambda: check_strategy(strategy))
        if rt.batch != "off" and not strategy.batchable:
            raise UserError(f"rewriter.batch={rt.batch!r} needs a one-call strategy (direct, or yours with request/parse), "
                            f"not rewriter.strategy={rt.strategy!r}; set rewriter.batch=off")
        if rt.answer_check:
            if score is None:
                raise UserError("rewriter.answer_check=true needs the task's scorer; set rewriter.answer_check=false")
            from rewriter.answer_check import AnswerChecked

            strategy = AnswerChecked(strategy, score)
        return cls(cfg=rt, strategy=strategy, task=task, guard=guard_config(rt))

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

    def context(self, system: str, question: str, gold: str, student_answer: str) -> RewriteContext:
        return RewriteContext(engine=self.engine, system=system, question=question, gold=gold,
                              student_answer=student_answer, optimize_system=self.cfg.optimize_system,
                              guard=self.guard, task=self.task)

    def rewrite_round(self, jobs: list[RoundJob], workdir: str | os.PathLike, progress=None) -> list[RewriteResult]:
        """Each job's RewriteResult, in order: live concurrent calls, or one Batch API job (`rewriter.batch`)."""
        pairs = [(j.sample, self.context(j.system, j.question, j.sample.answer, j.student_answer)) for j in jobs]
        if self.cfg.batch != "off":
            from rewriter.batch import rewrite_batch

            results = rewrite_batch(pairs, self.engine, Path(workdir), mode=self.cfg.batch, strategy=self.strategy,
                                    poll_seconds=self.cfg.batch_poll_seconds, timeout=self.cfg.batch_timeout,
                                    budget=self.budget)
            if progress is not None:
                progress.update(len(pairs))
            return results
        from rewriter.pool import rewrite_many

        return rewrite_many(pairs, self.strategy, concurrency=self.cfg.concurrency, budget=self.budget, progress=progress)

    def update_system(self, system: str, examples: list[tuple[str, str, str]]) -> RewriteResult:
        """One update of the shared system prompt from (question, student answer, gold) examples."""
        return self.strategy.update_system(examples, self.context(system, "", "", ""))

    @property
    def system_label(self) -> str:
        """How a shared-P update is recorded in the rewrites table: by the method that made it."""
        return f"{self.strategy.system_method or self.cfg.strategy}-system"

    def cost(self, res: RewriteResult) -> float:
        """Estimated USD of a rewrite: only engines of kind "openai" are priced (by rewriter.model)."""
        from rewriter.budget import cost_of
        from rewriter.engine import engine_kind

        kind = self.cfg.engine if self.engine is None else engine_kind(self.engine)
        prices = {k: tuple(v) for k, v in self.cfg.prices.items()}
        return cost_of(self.cfg.model, res.prompt_tokens, res.completion_tokens, prices, kind)
