"""The strategy contract: what every rewrite strategy takes and returns, and a conformance check for your own.

A strategy is a small class (`__init__` only stores settings, from `rewriter.strategy_params`):

    class MyStrategy(Strategy):
        name = "mine"
        calls_model = True                       # False: no engine is built and no student answers are generated
        def rewrite(self, sample, ctx) -> RewriteResult            # one sample's question (and P, if ctx.optimize_system)
        def update_system(self, examples, ctx) -> RewriteResult    # optional: the one P shared by every sample
        def request(self, ctx) -> (prompt, system); parse(reply) -> str   # optional: one-call strategies, which
                                                                  # the Batch API path (rewriter.batch) can send

Name it in config as `rewriter.strategy=my_pkg.module:MyStrategy`; `check_strategy` runs on it before the run.
An engine fault (`engine_fault`: EngineError, network errors, out of memory) fails one rewrite, verdict "error";
any other exception a strategy raises is a bug and stops the round (RoundStopped) with its traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from rewriter import guard
from rewriter.engine import EngineError, cache_hits_of, failure_kind, usage_detail_of

# skipped: not attempted (budget exhausted before the rewrite started); the sample stays numerical.
Verdict = Literal["accepted", "rejected", "error", "skipped"]


@dataclass
class RewriteResult:
    new_question: str | None
    new_system: str | None
    calls: int
    tokens: int
    verdict: Verdict
    reason: str
    candidate: str | None = None  # what the engine proposed, kept for inspection even when the guard rejected it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0  # engine calls answered by the reply cache (not in `calls`)
    scores: dict[str, Any] = field(default_factory=dict)  # the meaning guard's measurements of the candidate
    seconds: float | None = 0.0  # wall time of this rewrite (set by rewriter.pool; None in a batch: see the round's)
    failure: str | None = None  # why an "error" failed: a rewriter.engine.FAILURE_KINDS entry


@dataclass
class RewriteContext:
    engine: Any  # rewriter.engines contract: name, generate(), counters
    system: str  # the current system prompt P
    question: str  # the current question Q (perhaps already rewritten before)
    gold: str
    student_answer: str  # what the trained model answers now; computed by the caller, never regenerated here
    optimize_system: bool = False
    guard: Any = None  # rewriter.guard.GuardConfig; None: the defaults (embedding similarity on)
    task: str | None = None  # "babi", "gsm8k", "clinifact": for task-aware strategies (rules); None: guessed
    student_correct: bool | None = None  # the student's answer is right by the task's scorer (None: not known)
    loss: float | None = None  # the sample's training loss on its target: high while not yet learned


class Meter:
    """Calls, tokens and cache hits spent between construction and `spent()`, on the engine in this thread."""

    def __init__(self, engine):
        self.engine = engine
        self.start = self._now()

    def _now(self) -> tuple[int, int, int, int]:
        if self.engine is None:
            return 0, 0, 0, 0
        return (*usage_detail_of(self.engine), cache_hits_of(self.engine))

    def detail(self) -> tuple[int, int, int, int]:
        """(calls, prompt tokens, completion tokens, cache hits)."""
        now = self._now()
        return tuple(b - a for a, b in zip(self.start, now))  # type: ignore[return-value]

    def spent(self) -> tuple[int, int]:
        calls, prompt, completion, _ = self.detail()
        return calls, prompt + completion

    def result(self, new_question, new_system, verdict, reason, **kw) -> "RewriteResult":
        calls, prompt, completion, hits = self.detail()
        return RewriteResult(new_question, new_system, calls, prompt + completion, verdict, reason,
                             prompt_tokens=prompt, completion_tokens=completion, cache_hits=hits, **kw)


REASON_CHARS = 400  # long enough for an engine label, the cause and what the breaker did about it


def failure_reason(e: BaseException) -> str:
    """One line for the run store; engine errors already come without secrets."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3] + "..."
    return f"{type(e).__name__}: {text}"


class RoundStopped(Exception):
    """A component of the symbolic branch failed with an internal error (a bug, a missing model), not an engine or
    network fault: the round stops here with the cause's traceback, rather than turning every rewrite into an
    error verdict and finishing a run that rewrote nothing. Raised `from` the cause."""


# (module, class) of the libraries' own call failures; looked up only once the module is imported, since an
# exception of a library that was never imported cannot occur.
_LIBRARY_FAULTS = (("openai", "OpenAIError"), ("httpx", "HTTPError"), ("torch", "OutOfMemoryError"))


def engine_fault(e: BaseException) -> bool:
    """Whether an exception met while rewriting is the engine's, the network's or the server's fault, which fails
    one rewrite (verdict "error", the sample stays numerical), rather than a bug that fails them all: the engine
    contract's EngineError (HTTP, timeouts, malformed replies, the budget, an open circuit), OS-level network errors
    (ConnectionError, TimeoutError, requests'), running out of memory, and the HTTP libraries' own errors."""
    if isinstance(e, (EngineError, OSError, MemoryError)):
        return True
    for module, name in _LIBRARY_FAULTS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return True
    return False


def stopped(what: str, e: BaseException) -> RoundStopped:
    """The RoundStopped for an internal error `e` met in `what` (raise it `from e`: the traceback is the cause's)."""
    return RoundStopped(f"{what} failed with an internal error, not an engine fault ({failure_reason(e)}); the round "
                        "stopped before recording any rewrite")


def judge(ctx: RewriteContext, meter: Meter, new_question: str | None, new_system: str | None) -> RewriteResult:
    """Run the guard on what a strategy produced and package the result (with the guard's scores)."""
    scores: dict[str, Any] = {}
    if new_question is not None:
        verdict = guard.assess(ctx.question, new_question, ctx.gold, ctx.guard)
        scores = verdict.scores
        if not verdict.accepted:
            return meter.result(None, None, "rejected", verdict.reason, candidate=new_question, scores=scores)
    reason = "ok"
    if new_system is not None:
        ok, why = guard.check_system(ctx.system, new_system)
        if not ok and new_question is None:
            return meter.result(None, None, "rejected", why, candidate=new_system, scores=scores)
        if not ok:
            # A good question rewrite is worth keeping even when the shared prompt's rewrite is not.
            new_system, reason = None, f"ok; system prompt rejected: {why}"
    return meter.result(new_question, new_system, "accepted", reason, scores=scores)


def error(meter: Meter, e: BaseException | str, kind: str = "other") -> RewriteResult:
    """A failed rewrite: an engine fault (its kind read from it) or a reason with its kind. Any other exception is
    raised again: a bug caught by a strategy's `except Exception` must not pass for one failed rewrite."""
    if isinstance(e, str):
        return meter.result(None, None, "error", e, failure=kind)
    if not engine_fault(e):
        raise e
    return meter.result(None, None, "error", failure_reason(e), failure=failure_kind(e))


class Strategy:
    """Base class of rewrite strategies; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    calls_model: ClassVar[bool] = True
    system_method: ClassVar[str] = ""  # what update_system runs, as recorded in the rewrites table (default: name)

    def rewrite(self, sample, ctx: RewriteContext) -> RewriteResult:
        raise NotImplementedError

    def update_system(self, examples: list[tuple[str, str, str]], ctx: RewriteContext) -> RewriteResult:
        """One update of the shared system prompt `ctx.system` from (question, student answer, gold) examples."""
        return error(Meter(ctx.engine), f"strategy {self.name or type(self).__name__} does not update a shared system prompt")

    @property
    def batchable(self) -> bool:
        """Whether a round can go through the Batch API: one independent call per sample (`request` + `parse`)."""
        return callable(getattr(self, "request", None)) and callable(getattr(self, "parse", None))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class _EchoEngine:
    """The conformance check's engine: replies with the question it was sent, inside textgrad's tags."""

    name = "check:echo"

    def generate(self, prompt, system=None, **params) -> str:
        text = prompt if isinstance(prompt, str) else str(prompt[-1].get("content", ""))
        return f"<IMPROVED_VARIABLE>{text[-200:]}</IMPROVED_VARIABLE>"


def _check_result(res, where: str) -> None:
    assert isinstance(res, RewriteResult), f"{where} must return a RewriteResult, got {type(res).__name__}"
    assert res.verdict in get_args(Verdict), f"{where}: verdict must be one of {get_args(Verdict)}, got {res.verdict!r}"
    assert isinstance(res.reason, str) and res.reason.strip(), f"{where}: the result needs a reason"
    assert isinstance(res.calls, int) and res.calls >= 0, f"{where}: calls must be an int >= 0, got {res.calls!r}"
    for field_name in ("new_question", "new_system"):
        value = getattr(res, field_name)
        assert value is None or isinstance(value, str), f"{where}: {field_name} must be a str or None"
    if res.verdict == "accepted":
        assert res.new_question is not None or res.new_system is not None, f"{where}: an accepted rewrite needs new text"


def check_strategy(strategy, sample=None, system: bool = True) -> None:
    """Conformance check for any strategy (built-in or yours). Raises AssertionError naming the broken rule.
    Runs `rewrite` (and with `system`, `update_system`) once on an example, against a scripted engine: no network."""
    kind = type(strategy).__name__
    assert isinstance(getattr(strategy, "calls_model", None), bool), f"{kind}.calls_model must be a bool class attribute"
    assert callable(getattr(strategy, "rewrite", None)), f"{kind} needs a method rewrite(sample, ctx) -> RewriteResult"
    assert callable(getattr(strategy, "request", None)) == callable(getattr(strategy, "parse", None)), \
        f"{kind}: a one-call strategy defines both request(ctx) and parse(reply), or neither"
    question = "Mary moved to the bathroom. John went to the hallway. Where is Mary?"
    if sample is None:
        from nslora.tasks.base import Sample

        sample = Sample("check-0", "Answer with one word.", question, "bathroom", "bathroom")
    engine = _EchoEngine() if strategy.calls_model else None
    ctx = RewriteContext(engine=engine, system="Answer with one word.", question=question, gold="bathroom",
                         student_answer="hallway", guard=guard.GuardConfig(similarity=False))
    _check_result(strategy.rewrite(sample, ctx), f"{kind}.rewrite")
    if system and callable(getattr(strategy, "update_system", None)):
        _check_result(strategy.update_system([(question, "hallway", "bathroom")], ctx), f"{kind}.update_system")
