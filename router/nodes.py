"""The graph's nodes. Each takes the state (or a Send payload) and returns a partial update; the heavy objects
(trainer, store, policy, rewriter engine) come from the RunContext they close over."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from adapters.signals import is_saturated, loss_change_ratio
from adapters.train import Item, Trainer
from policies.base import Decision, Policy, SampleView
from router.config import Config
from router.store import Store
from tasks.base import Sample, Task


@dataclass
class RunContext:
    cfg: Config
    task: Task
    train: list[Sample]
    heldout: list[Sample]
    trainer: Trainer
    store: Store
    policy: Policy
    engine: Any  # rewriter engine; None when the policy never routes symbolic, and on every process but the main one
    rewrites_enabled: bool = True  # the same on every process, unlike `engine`
    budget: Any = None  # rewriter.budget.Budget when a limit is set
    checkpoint: Any = None  # checkpoint(epoch): saves the trainer's state after an epoch (None: no checkpoints)
    tensorboard: Any = None  # report.tensorboard.TensorBoardLogger when run.tensorboard is on (main process only)
    bar: Any = None  # a tqdm factory, or None for no progress bars

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


def make_nodes(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    by_id = {s.id: s for s in ctx.train}

    def system_for(state, prompt: dict[str, Any]) -> str:
        return state.get("shared_system") or prompt["system"]

    def evaluate(state):
        epoch = state.get("epoch", 0)
        every = cfg.train.eval_every
        if 0 < epoch < cfg.train.epochs and (every == 0 or epoch % every):
            return {}
        system = state.get("shared_system")
        prompts = [(system or s.system, s.question) for s in ctx.heldout]
        bar = ctx.progress(len(prompts), f"evaluate epoch {epoch}")
        replies = ctx.trainer.generate(prompts, cfg.train.max_new_tokens, cfg.train.eval_batch_size, bar)
        _close(bar)
        rows = []
        for s, reply in zip(ctx.heldout, replies):
            rows.append({"epoch": epoch, "sample_id": s.id, "reply": reply, "prediction": ctx.task.extract(reply),
                         "correct": int(ctx.task.score(reply, s))})
        ctx.store.add_evals(rows)
        acc = sum(r["correct"] for r in rows) / len(rows)
        with ctx.store.db:
            ctx.store.db.execute("INSERT OR IGNORE INTO epochs (epoch) VALUES (?)", (epoch,))
            ctx.store.db.execute("UPDATE epochs SET heldout_accuracy=? WHERE epoch=?", (acc, epoch))
        if ctx.tensorboard is not None:
            from report.tensorboard import scalars_from_store

            ctx.tensorboard.log_epoch(epoch, scalars_from_store(ctx.store, epoch))
        return {"accuracy": {**state.get("accuracy", {}), str(epoch): acc}}

    def train_epoch(state):
        epoch = state.get("epoch", 0) + 1
        started = time.perf_counter()
        prompts = state["prompts"]
        items = [Item(s.id, system_for(state, prompts[s.id]), prompts[s.id]["question"], s.target) for s in ctx.train]
        bar = ctx.progress(len(items), f"train epoch {epoch}")
        signals = ctx.trainer.train_epoch(items, cfg.train.batch_size, seed=cfg.train.seed * 1000 + epoch, progress=bar)
        _close(bar)
        before = {r["sample_id"]: r["loss"] for r in ctx.store.query("SELECT sample_id, loss FROM signals WHERE epoch=?", (epoch - 1,))}
        rows = []
        for s in ctx.train:
            sig = signals[s.id]
            rows.append({"epoch": epoch, "sample_id": s.id, "prompt_version": prompts[s.id]["version"], "loss": sig.loss,
                         "c1": loss_change_ratio(sig.loss, before.get(s.id)), "c2": sig.grad_norm, "correct": int(sig.correct)})
        ctx.store.add_signals(rows)
        n = len(rows)
        ctx.store.add_epoch({"epoch": epoch, "train_loss": sum(r["loss"] for r in rows) / n,
                             "train_correct": sum(r["correct"] for r in rows) / n, "heldout_accuracy": None,
                             "saturated": 0, "saturation_median": None, "symbolic": 0, "accepted": 0,
                             "seconds": round(time.perf_counter() - started, 3), "skipped_steps": ctx.trainer.skipped_steps,
                             "oom_halvings": ctx.trainer.oom_halvings, "micro_batch": ctx.trainer.micro_batch})
        if ctx.checkpoint is not None:
            ctx.checkpoint(epoch)
        update = {"epoch": epoch, "decisions": None, "candidates": [], "saturated": False, "reverted": []}
        reverted, reverts = revert_unhelpful(prompts, {r["sample_id"]: r["loss"] for r in rows}, epoch)
        if reverts:
            ctx.store.add_decisions(reverts)
            update.update({"prompts": reverted, "reverted": [d["sample_id"] for d in reverts]})
        return update

    def revert_unhelpful(prompts, losses, epoch):
        """Rewrites whose loss has not fallen below the loss at the rewrite after `revert_after` epochs go back."""
        after = cfg.rewriter.revert_after
        out, decisions = dict(prompts), []
        for i, p in prompts.items():
            if not after or p["version"] == 0 or p.get("loss_at") is None or epoch - p["since"] < after:
                continue
            if losses[i] < p["loss_at"]:
                continue
            out[i] = p["prev"]
            decisions.append({"epoch": epoch, "sample_id": i, "policy": "revert", "route": "numerical", "confidence": 1.0,
                              "reason": f"loss {losses[i]:.4f} is not below {p['loss_at']:.4f}, its loss when rewritten at "
                                        f"epoch {p['since']}; back to prompt version {p['prev']['version']}",
                              "path": "revert"})
        return out, decisions

    def monitor(state):
        epoch = state["epoch"]
        rows = ctx.store.query("SELECT * FROM signals WHERE epoch > ? ORDER BY epoch", (max(0, epoch - cfg.saturation.window),))
        now = {r["sample_id"]: r for r in rows if r["epoch"] == epoch}
        misclassified = {i for i, r in now.items() if not r["correct"]}
        c1_by_epoch = []
        for e in range(max(1, epoch - cfg.saturation.window + 1), epoch + 1):
            c1_by_epoch.append({r["sample_id"]: r["c1"] for r in rows if r["epoch"] == e})
        if not ctx.policy.needs_saturation:
            saturated, median = bool(misclassified), None
        elif epoch < cfg.saturation.min_epoch:
            saturated, median = False, None
        else:
            saturated, median = is_saturated(c1_by_epoch, misclassified, cfg.saturation.k, cfg.saturation.window)
        with ctx.store.db:
            ctx.store.db.execute("UPDATE epochs SET saturated=?, saturation_median=? WHERE epoch=?", (int(saturated), median, epoch))
        if not saturated:
            return {"saturated": False, "candidates": []}
        candidates = sorted(misclassified - set(state.get("reverted", [])))
        ctx.policy.calibrate(views(state, candidates))
        return {"saturated": True, "candidates": candidates}

    def views(state, sample_ids: list[str]) -> list[SampleView]:
        """What the policy sees of each sample in this epoch's routing round (two queries for all of them)."""
        epoch = state["epoch"]
        rows = {r["sample_id"]: r for r in ctx.store.query("SELECT * FROM signals WHERE epoch=?", (epoch,))}
        history = ctx.store.loss_histories(sample_ids)
        out = []
        for i in sample_ids:
            row, p = rows[i], state["prompts"][i]
            out.append(SampleView(id=i, epoch=epoch, loss=row["loss"], c1=row["c1"], c2=row["c2"], correct=bool(row["correct"]),
                                  losses=tuple(history.get(i, ())), system=system_for(state, p), question=p["question"],
                                  rewrites=p["version"]))
        return out

    def decide(payload):
        v = SampleView(**{**payload["view"], "losses": tuple(payload["view"]["losses"])})
        d: Decision = ctx.policy.decide(v)
        return {"decisions": [{"epoch": v.epoch, "sample_id": v.id, "policy": cfg.policy.name, **d.to_dict()}]}

    def rewrite(state):
        epoch = state["epoch"]
        decisions = sorted(state.get("decisions", []), key=lambda d: d["sample_id"])
        ctx.store.add_decisions(decisions)
        symbolic = [d["sample_id"] for d in decisions if d["route"] == "symbolic"]
        if not symbolic or not ctx.rewrites_enabled:
            return {}
        prompts = state["prompts"]
        current = [(system_for(state, prompts[i]), prompts[i]["question"]) for i in symbolic]
        # Every process joins the generation; only the main process calls the rewriter, then shares the result.
        if cfg.rewriter.calls_model:
            answers = ctx.trainer.generate(current, cfg.train.max_new_tokens, cfg.train.eval_batch_size)
        else:
            answers = [""] * len(current)
        rows, update = rewrite_round(state, epoch, symbolic, current, answers) if ctx.trainer.is_main else ([], {})
        rows, update = ctx.broadcast((rows, update))
        ctx.store.add_rewrites(rows)
        accepted = sum(r["verdict"] == "accepted" for r in rows)
        with ctx.store.db:
            ctx.store.db.execute("UPDATE epochs SET symbolic=?, accepted=? WHERE epoch=?", (len(symbolic), accepted, epoch))
        return update

    def rewrite_round(state, epoch, symbolic, current, answers):
        from rewriter.strategies import RewriteContext, optimize_system_prompt

        update: dict[str, Any] = {}
        rows = []
        if ctx.policy.optimizes_shared_system:
            system = state.get("shared_system") or ctx.train[0].system
            examples = [(q, a, by_id[i].answer) for i, (_, q), a in zip(symbolic, current, answers)][:8]
            if cfg.rewriter.calls_model:
                res, label = optimize_system_prompt(system, examples, ctx.engine), "textgrad-system"
            else:
                from rewriter.strategies.rules import shared_system

                res, label = shared_system(system, cfg.task.name), "rules-system"
            if res.verdict == "accepted" and res.new_system:
                update["shared_system"] = res.new_system
            rows.append(rewrite_row(epoch, "*system*", epoch, system, "", "\n".join(answers[:8]), label, res, None))
            return rows, update
        from rewriter.budget import cost_of
        from rewriter.pool import rewrite_many
        from rewriter.settings import guard_config

        prompts = dict(state["prompts"])
        guard = guard_config(cfg.rewriter)
        losses = {r["sample_id"]: r["loss"] for r in ctx.store.query("SELECT sample_id, loss FROM signals WHERE epoch=?", (epoch,))}
        jobs = [(by_id[i], RewriteContext(engine=ctx.engine, system=system, question=question, gold=by_id[i].answer,
                                          student_answer=answer, optimize_system=cfg.rewriter.optimize_system,
                                          guard=guard, task=cfg.task.name))
                for i, (system, question), answer in zip(symbolic, current, answers)]
        bar = ctx.progress(len(jobs), f"rewrite epoch {epoch}")
        if cfg.rewriter.batch != "off":
            from rewriter.batch import rewrite_batch

            results = rewrite_batch(jobs, ctx.engine, ctx.store.path.parent / "batches" / f"epoch-{epoch}", mode=cfg.rewriter.batch,
                                    poll_seconds=cfg.rewriter.batch_poll_seconds, timeout=cfg.rewriter.batch_timeout,
                                    budget=ctx.budget)
            if bar is not None:
                bar.update(len(jobs))
        else:
            results = rewrite_many(jobs, cfg.rewriter.strategy, concurrency=cfg.rewriter.concurrency, budget=ctx.budget, progress=bar)
        _close(bar)
        kind = "local" if cfg.rewriter.engine == "local" else "openai"
        prices = {k: tuple(v) for k, v in cfg.rewriter.prices.items()}
        for i, (system, question), answer, res in zip(symbolic, current, answers, results):
            if res.verdict == "accepted":
                p = prompts[i]
                # Keep the previous version and the loss it had, so a rewrite that does not help can be reverted.
                prompts[i] = {"system": res.new_system or p["system"], "question": res.new_question or p["question"],
                              "version": p["version"] + 1, "since": epoch, "loss_at": losses.get(i), "prev": p}
            cost = cost_of(cfg.rewriter.model, res.prompt_tokens, res.completion_tokens, prices, kind)
            rows.append(rewrite_row(epoch, i, prompts[i]["version"], system, question, answer, cfg.rewriter.strategy, res, cost))
        update["prompts"] = prompts
        return rows, update

    def rewrite_row(epoch, sample_id, version, system, question, student_answer, strategy, res, cost) -> dict[str, Any]:
        """One row of the rewrites table: the prompt before, the result, and what it cost."""
        return {"epoch": epoch, "sample_id": sample_id, "version": version, "original_system": system,
                "original_question": question, "new_system": res.new_system, "new_question": res.new_question,
                "candidate": res.candidate, "student_answer": student_answer,
                "engine": getattr(ctx.engine, "name", None) or ("none" if ctx.engine is None else type(ctx.engine).__name__),
                "strategy": strategy,
                "verdict": res.verdict, "reason": res.reason, "calls": res.calls, "tokens": res.tokens,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "cache_hits": res.cache_hits, "cost": cost, "scores": json.dumps(res.scores, sort_keys=True),
                "seconds": round(res.seconds, 3)}

    return {"evaluate": evaluate, "train_epoch": train_epoch, "monitor": monitor, "decide": decide, "rewrite": rewrite,
            "views": views}


def view_payload(v: SampleView) -> dict[str, Any]:
    return {"view": dataclasses.asdict(v)}
