"""The graph's nodes: plain functions `(state, ctx) -> partial update` that never mutate the state. The heavy
objects (trainer, store, policy, rewriter) live in the RunContext; router/graph.py binds it and wires the edges.
Every row goes to run.sqlite through Store methods."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from adapters.signals import TOKEN_STATS, is_saturated, loss_change_ratio
from adapters.train import Item, Trainer
from policies.base import Decision, Policy, SampleView
from rewriter.round import Rewriter, RoundJob
from rewriter.strategies.base import RoundStopped
from router.config import Config
from router.export import export_run
from router.state import current_prompts
from router.store import Store
from nslora.tasks.base import Sample, Task


@dataclass
class RunContext:
    cfg: Config
    task: Task
    score: Callable[[str, Sample], bool]  # the held-out scorer (task.scorer, else the task's own)
    train: list[Sample]
    heldout: list[Sample]
    trainer: Trainer
    store: Store
    policy: Policy
    rewriter: Rewriter  # its engine is None when no model is called, and on every process but the main one
    checkpoint: Any = None  # checkpoint(epoch): saves the trainer's state after an epoch (None: no checkpoints)
    tensorboard: Any = None  # report.tensorboard.TensorBoardLogger when run.tensorboard is on (main process only)
    bar: Any = None  # a tqdm factory, or None for no progress bars
    run_dir: Any = None  # the run folder (main process); export writes there
    started: float = 0.0  # perf_counter() when the run started, for metrics.json's wall time
    clock: Any = None  # router.timing.NodeClock: wall time per node into run.sqlite (None: untimed)
    round_views: dict[str, SampleView] = field(default_factory=dict)  # this routing round's candidates (calibrate_round)
    by_id: dict[str, Sample] = field(init=False, repr=False)
    _detector: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.by_id = {s.id: s for s in self.train}

    def detector(self):
        """The planted-copy presentation detector (policies/planted.py), fitted once from run.sqlite's rows (the
        same rows after a resume give the same fit); None when nothing was planted."""
        if self._detector is None and self.cfg.signals.planted_share:
            from policies.planted import fit_detector

            copies = self.store.planted_rows()
            if copies:
                self._detector = fit_detector(self.store.inputs_for({s.id: 0 for s in self.train}), copies) or {}
        return self._detector or None

    def progress(self, total: int, desc: str):
        if self.bar is None:
            return None
        return self.bar(total=total, desc=desc, leave=False)

    def broadcast(self, obj):
        """The main process's value of obj, on every process."""
        if self.trainer.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]


def _close(bar) -> None:
    if bar is not None:
        bar.close()


def system_for(state, prompt: dict[str, Any]) -> str:
    return state.get("shared_system") or prompt["system"]


def evaluate(state, ctx: RunContext):
    """Answer the held-out set (before training, every train.eval_every epochs, after the last)."""
    cfg = ctx.cfg
    epoch = state.get("epoch", 0)
    every = cfg.train.eval_every
    if 0 < epoch < cfg.train.epochs and (every == 0 or epoch % every):
        return {}
    system = state.get("shared_system")
    prompts = [(system or s.system, s.question) for s in ctx.heldout]
    bar = ctx.progress(len(prompts), f"evaluate epoch {epoch}")
    if epoch == 0:  # the untrained model: every run in this out_dir asking these prompts shares its replies
        from router.base_replies import replies as base_replies

        replies, _ = base_replies(ctx.trainer, prompts, cfg.train.max_new_tokens, cfg.train.eval_batch_size,
                                  cfg.run.shared_dir or cfg.run.out_dir, bar)
    else:
        replies = ctx.trainer.generate(prompts, cfg.train.max_new_tokens, cfg.train.eval_batch_size, bar)
    _close(bar)
    rows = [score_reply(ctx, epoch, s, reply) for s, reply in zip(ctx.heldout, replies)]
    ctx.store.add_evals(rows)
    acc = sum(r["correct"] for r in rows) / len(rows)
    ctx.store.set_heldout_accuracy(epoch, acc)
    if ctx.tensorboard is not None:
        from nslora.report.tensorboard import scalars_from_store

        ctx.tensorboard.log_epoch(epoch, scalars_from_store(ctx.store, epoch))
    return {"accuracy": {**state.get("accuracy", {}), str(epoch): acc}}


def score_reply(ctx: RunContext, epoch: int, sample, reply: str) -> dict[str, Any]:
    """One held-out reply scored both ways; `correct` is the one task.scoring makes the headline."""
    flexible = int(ctx.score(reply, sample))
    strict_of = getattr(ctx.task, "score_strict", None)  # a task class not built on nslora.tasks.Task may lack it
    strict = int(strict_of(reply, sample)) if strict_of is not None else None
    headline = strict if ctx.cfg.task.scoring == "strict" else flexible
    return {"epoch": epoch, "sample_id": sample.id, "reply": reply, "prediction": ctx.task.extract(reply),
            "correct": headline, "strict": strict, "flexible": flexible}


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def measure_inputs(state, ctx: RunContext):
    """Before an epoch trains: the base-model input signals of every current prompt not yet measured (the originals
    before the first epoch, then each accepted rewrite), into run.sqlite. A resumed run measures only what is
    missing, and the pass is deterministic, so the rows are the same either way."""
    sig = ctx.cfg.signals
    if not sig.inputs:
        return {}
    prompts = current_prompts(state, ctx)
    done = ctx.store.measured_inputs()
    todo = [s.id for s in ctx.train if (s.id, prompts[s.id]["since"] or 0) not in done]
    copies = []
    if sig.planted_share and not ctx.store.planted_rows():  # the calibration copies, once, beside the originals
        from policies.planted import planted_copies, resolve_families

        copies = planted_copies(ctx.train, sig.planted_share, resolve_families(sig.planted_families), ctx.cfg.train.seed)
    # The main process's store decides what is missing; every process joins the pass and stores the rows (the
    # others' stores are scratch copies kept in step).
    todo, copies = ctx.broadcast((todo, copies))
    if not todo and not copies:
        return {}
    jobs = [(i, system_for(state, prompts[i]), prompts[i]["question"], ctx.by_id[i].target) for i in todo]
    jobs += [(f"{i}\t{fam}", c.system, c.question, c.target) for i, fam, c in copies]
    measured = ctx.trainer.input_signals(jobs, ctx.cfg.train.eval_batch_size, trained=set(todo))
    ctx.store.add_measured([{"sample_id": i, "since": prompts[i]["since"] or 0, **measured[i]} for i in todo],
                           [{"sample_id": i, "family": fam, "question": c.question, **measured[f"{i}\t{fam}"]}
                            for i, fam, c in copies])
    return {}


def train_epoch(state, ctx: RunContext):
    """One pass of LoRA steps over the training samples on their current prompts; per-sample signals stored."""
    cfg = ctx.cfg
    epoch = state.get("epoch", 0) + 1
    started = time.perf_counter()
    prompts = current_prompts(state, ctx)
    items = [Item(s.id, system_for(state, prompts[s.id]), prompts[s.id]["question"], s.target) for s in ctx.train]
    bar = ctx.progress(len(items), f"train epoch {epoch}")
    signals = ctx.trainer.train_epoch(items, cfg.train.batch_size, seed=cfg.train.seed * 1000 + epoch, progress=bar)
    _close(bar)
    before = ctx.store.losses_at(epoch - 1)
    rows = []
    for s in ctx.train:
        sig = signals[s.id]
        rows.append({"epoch": epoch, "sample_id": s.id, "prompt_version": prompts[s.id]["version"], "loss": sig.loss,
                     "c1": loss_change_ratio(sig.loss, before.get(s.id)), "c2": sig.grad_norm, "correct": int(sig.correct),
                     **{k: _finite_or_none(sig.stats.get(k)) for k in TOKEN_STATS}})
    ctx.store.add_signals(rows)
    n = len(rows)
    ctx.store.add_epoch({"epoch": epoch, "train_loss": sum(r["loss"] for r in rows) / n,
                         "train_correct": sum(r["correct"] for r in rows) / n, "heldout_accuracy": None,
                         "saturated": 0, "saturation_median": None, "symbolic": 0, "accepted": 0,
                         "seconds": round(time.perf_counter() - started, 3), "skipped_steps": ctx.trainer.skipped_steps,
                         "oom_halvings": ctx.trainer.oom_halvings, "micro_batch": ctx.trainer.micro_batch})
    if ctx.checkpoint is not None:
        ctx.checkpoint(epoch)
    update = {"epoch": epoch, "decisions": None, "candidates": 0, "saturated": False}
    after = cfg.rewriter.revert_after
    judged = {p["since"] for p in prompts.values() if after and p["version"] and epoch - p["since"] == after}
    history = {e: ctx.store.losses_at(e) for e in range(min(judged) + 1, epoch)} if judged else {}
    history[epoch] = {r["sample_id"]: r["loss"] for r in rows}
    back, reverts = revert_unhelpful(prompts, history, epoch, after)
    if reverts:
        # Recorded as decisions: Store.candidates leaves a sample sent back this epoch out of this epoch's round.
        ctx.store.add_decisions(reverts)
        epochs = {**state.get("prompt_epochs", {}), **back}
        update["prompt_epochs"] = {i: e for i, e in epochs.items() if e is not None}
    return update


def revert_unhelpful(prompts, history: dict[int, dict[str, float]], epoch: int, after: int):
    """Rewrites whose loss fell below the loss at the rewrite in none of the `after` epochs since go back to the
    version before, judged once, when that window closes. One epoch's loss is noisy (a sample right in one epoch can
    be wrong in the next while the whole model moves), so a rewrite that helped once is kept.

    history: epoch -> (sample id -> loss) for the epochs after the rewrites judged now. Returns (sample id -> the
    epoch the restored version was written, None for the original; the revert decisions)."""
    back, decisions = {}, []
    for i, p in prompts.items():
        if not after or p["version"] == 0 or p.get("loss_at") is None or epoch - p["since"] != after:
            continue
        seen = [history[e][i] for e in range(p["since"] + 1, epoch + 1) if i in history.get(e, {})]
        if not seen or min(seen) < p["loss_at"]:
            continue
        back[i] = p["prev_since"]
        decisions.append({"epoch": epoch, "sample_id": i, "policy": "revert", "route": "numerical", "confidence": 1.0,
                          "reason": f"loss {min(seen):.4f} at best in the {after} epoch(s) since the rewrite at epoch "
                                    f"{p['since']}, not below {p['loss_at']:.4f} before it; back to prompt version "
                                    f"{p['version'] - 1}",
                          "path": "revert"})
    return back, decisions


def monitor(state, ctx: RunContext):
    """Is training saturated? Then the still-misclassified samples are this round's candidates."""
    sat = ctx.cfg.saturation
    epoch = state["epoch"]
    rows = ctx.store.signals_after(max(0, epoch - sat.window))
    now = {r["sample_id"]: r for r in rows if r["epoch"] == epoch}
    misclassified = {i for i, r in now.items() if not r["correct"]}
    c1_by_epoch = []
    for e in range(max(1, epoch - sat.window + 1), epoch + 1):
        c1_by_epoch.append({r["sample_id"]: r["c1"] for r in rows if r["epoch"] == e})
    if not ctx.policy.needs_saturation:
        saturated, median = bool(misclassified), None
    elif epoch < sat.min_epoch:
        saturated, median = False, None
    else:
        saturated, median = is_saturated(c1_by_epoch, misclassified, sat.k, sat.window)
    ctx.store.set_saturation(epoch, saturated, median)
    if not saturated:
        return {"saturated": False, "candidates": 0}
    return {"saturated": True, "candidates": len(calibrate_round(state, ctx))}


def calibrate_round(state, ctx: RunContext) -> list[SampleView]:
    """Fit the policy on this epoch's candidates and keep their views for the decide branches, which get ids only.
    Both live in memory, so a run resumed inside a routing round calls this again (from the same rows)."""
    candidates = views(state, ctx, ctx.store.candidates(state["epoch"]))
    ctx.policy.calibrate(candidates)
    ctx.round_views = {v.id: v for v in candidates}
    return candidates


def views(state, ctx: RunContext, sample_ids: list[str]) -> list[SampleView]:
    """What the policy sees of each sample in this epoch's routing round (a few queries for all of them)."""
    epoch = state["epoch"]
    rows = ctx.store.signals_at(epoch)
    history = ctx.store.loss_histories(sample_ids)
    dyn = ctx.store.dynamics(sample_ids, epoch)
    prompts = current_prompts(state, ctx, sample_ids)
    inputs = ctx.store.inputs_for({i: prompts[i]["since"] or 0 for i in sample_ids})
    from policies.planted import with_presentation

    inputs = with_presentation(ctx.detector(), inputs)
    out = []
    for i in sample_ids:
        row, p = rows[i], prompts[i]
        # The planted fault of the controlled benchmark goes to the oracle alone: it is the answer key. A sample
        # on a rewritten prompt no longer shows its planted fault.
        extra = {"fault": ctx.by_id[i].meta.get("fault") if p["version"] == 0 else None} if ctx.policy.needs_ground_truth else {}
        out.append(SampleView(id=i, epoch=epoch, loss=row["loss"], c1=row["c1"], c2=row["c2"], correct=bool(row["correct"]),
                              losses=tuple(history.get(i, ())), system=system_for(state, p), question=p["question"],
                              rewrites=p["version"], extra=extra, dynamics=dyn[i], inputs=inputs.get(i, {})))
    return out


def decide(payload, ctx: RunContext):
    """The routes of one chunk of candidates (a Send branch carrying their ids): each sample's decision, with its
    reason."""
    out = []
    for i in payload["ids"]:
        v = ctx.round_views[i]
        d: Decision = ctx.policy.decide(v)
        out.append({"epoch": v.epoch, "sample_id": v.id, "policy": ctx.cfg.policy.name, **d.to_dict()})
    return {"decisions": out}


def rewrite(state, ctx: RunContext):
    """Record the round's decisions (once, and then out of the state); the symbolic samples are rewritten (or the
    shared P updated) on the main process, and every process takes its result."""
    epoch = state["epoch"]
    decisions = sorted(state.get("decisions", []), key=lambda d: d["sample_id"])
    ctx.store.add_decisions(decisions)
    symbolic = [d["sample_id"] for d in decisions if d["route"] == "symbolic"]
    if not symbolic or not ctx.policy.routes_symbolic:
        return {"decisions": None}
    prompts = current_prompts(state, ctx, symbolic)
    current = [(system_for(state, prompts[i]), prompts[i]["question"]) for i in symbolic]
    # Every process joins the generation; only the main process calls the rewriter, then shares the result.
    if ctx.rewriter.calls_model:
        answers = ctx.trainer.generate(current, ctx.cfg.train.max_new_tokens, ctx.cfg.train.eval_batch_size)
    else:
        answers = [""] * len(current)
    # A candidate is one whose teacher-forced answer tokens are not all right, which a right generated answer
    # can still be: the rewriter is told which, and never that a right answer is wrong.
    losses = ctx.store.losses_at(epoch)
    jobs = [RoundJob(ctx.by_id[i], system, question, answer, bool(ctx.score(answer, ctx.by_id[i])) if ctx.rewriter.calls_model else None,
                     losses.get(i)) for i, (system, question), answer in zip(symbolic, current, answers)]
    if ctx.trainer.is_main:
        try:
            rows, update, versions = shared_round(state, ctx, jobs) if ctx.policy.optimizes_shared_system else sample_round(state, ctx, jobs, prompts)
        except RoundStopped as e:  # nothing of the round is stored: resuming runs it again, paid replies from the cache
            e.args = (f"{e}; the run is checkpointed before this round: fix the cause, then nslora resume {ctx.run_dir}",)
            raise
        timing = dict(ctx.rewriter.last_round) if not ctx.policy.optimizes_shared_system else {}
    else:
        rows, update, versions, timing = [], {}, [], {}
    rows, update, versions, timing = ctx.broadcast((rows, update, versions, timing))
    # The new prompt texts reach run.sqlite before the state that points to them is checkpointed.
    ctx.store.add_prompts(versions)
    ctx.store.add_rewrites(rows)
    ctx.store.set_round(epoch, len(symbolic), sum(r["verdict"] == "accepted" for r in rows), timing.get("seconds"),
                        timing.get("busy"), timing.get("concurrency"))
    return {**update, "decisions": None}


def shared_round(state, ctx: RunContext, jobs: list[RoundJob]):
    """The prompt-only arm: one update of the shared system prompt from up to 8 of the round's samples."""
    epoch = state["epoch"]
    system = state.get("shared_system") or ctx.train[0].system
    examples = [(j.question, j.student_answer, j.sample.answer) for j in jobs][:8]
    res = ctx.rewriter.update_system(system, examples)
    update = {"shared_system": res.new_system} if res.verdict == "accepted" and res.new_system else {}
    answers = "\n".join(j.student_answer for j in jobs[:8])
    return [rewrite_row(ctx, epoch, "*system*", epoch, RoundJob(None, system, "", answers), ctx.rewriter.system_label, res, None)], update, []


def sample_round(state, ctx: RunContext, jobs: list[RoundJob], prompts: dict[str, dict[str, Any]]):
    """Rewrite each symbolic sample; an accepted rewrite becomes the sample's next prompt version: (rewrites rows,
    the state update, the new prompts rows)."""
    epoch = state["epoch"]
    epochs, versions = dict(state.get("prompt_epochs", {})), []
    bar = ctx.progress(len(jobs), f"rewrite epoch {epoch}")
    results = ctx.rewriter.rewrite_round(jobs, ctx.store.path.parent / "batches" / f"epoch-{epoch}", bar)
    _close(bar)
    rows = []
    for job, res in zip(jobs, results):
        i = job.sample.id
        p = prompts[i]
        version = p["version"]
        if res.verdict == "accepted":
            # The loss it had and the version before it, so a rewrite that does not help can be reverted.
            version += 1
            versions.append({"sample_id": i, "since": epoch, "version": version, "system": res.new_system or p["system"],
                             "question": res.new_question or p["question"], "loss_at": job.loss, "prev_since": p["since"]})
            epochs[i] = epoch
        rows.append(rewrite_row(ctx, epoch, i, version, job, ctx.rewriter.cfg.strategy, res, ctx.rewriter.cost(res)))
    return rows, {"prompt_epochs": epochs}, versions


def rewrite_row(ctx: RunContext, epoch, sample_id, version, job: RoundJob, strategy, res, cost) -> dict[str, Any]:
    """One row of the rewrites table: the prompt before, the result, and what it cost."""
    return {"epoch": epoch, "sample_id": sample_id, "version": version, "original_system": job.system,
            "original_question": job.question, "new_system": res.new_system, "new_question": res.new_question,
            "candidate": res.candidate, "student_answer": job.student_answer, "engine": ctx.rewriter.engine_name,
            "strategy": strategy, "verdict": res.verdict, "reason": res.reason, "calls": res.calls, "tokens": res.tokens,
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "cache_hits": res.cache_hits, "cost": cost, "scores": json.dumps(res.scores, sort_keys=True),
            "seconds": None if res.seconds is None else round(res.seconds, 3), "failure": res.failure}


def export(state, ctx: RunContext):
    """Adapter, augmented data and metrics.json, on the main process."""
    if ctx.trainer.is_main:
        export_run(ctx.run_dir, ctx, state, ctx.started)
    return {}
