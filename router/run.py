"""One routed fine-tuning run, top to bottom: validate → set up → run the graph → export → summary.

Everything that can be refused (config, data, model path, policy, endpoint) is checked before the run folder
exists, so bad input never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from nslora.core.errors import UserError
from rewriter.engines import engine_kind
from router.config import Config, to_dict


class Plan(NamedTuple):
    """What a run is made of, all checked before anything heavy loads."""

    task: Any
    score: Any
    train: list
    heldout: list
    policy: Any
    rewriter: Any


def plan(cfg: Config) -> Plan:
    """Validate everything cheap to check (data, model path, policy, strategy, your plug-ins) before any folder exists."""
    from adapters.model import resolve
    from policies import REGISTRY, build
    from rewriter.round import Rewriter
    from nslora.tasks import load_task
    from nslora.tasks.scoring import build_scorer

    task, train, heldout = load_task(cfg.task)
    score = build_scorer(cfg.task.scorer, task, train + heldout)
    resolve(cfg.model.name_or_path, cfg.model.gguf_file)
    params = dict(cfg.policy.params)
    if cfg.policy.path is not None:
        params.setdefault("path", cfg.policy.path)
    if cfg.task.scoring == "strict" and not callable(getattr(task, "score_strict", None)):
        raise UserError(f"task.scoring=strict: task {cfg.task.name} has no score_strict; build it on nslora.tasks.Task (give it extract_strict) or use task.scoring=flexible")
    policy = build(cfg.policy.name, params, p=cfg.saturation.p, seed=cfg.train.seed)
    if callable(getattr(policy, "preflight", None)):  # a policy's own check of what it needs (reward: its folder)
        policy.preflight()
    if getattr(policy, "needs_planted", False) and not (cfg.signals.inputs and cfg.signals.planted_share > 0):
        raise UserError(f"policy.name={cfg.policy.name} routes by the planted-copy detector: set signals.inputs=true and "
                        f"signals.planted_share above 0 (now {cfg.signals.planted_share})")
    if cfg.signals.planted_share:
        from policies.planted import resolve_families

        resolve_families(cfg.signals.planted_families)  # a misspelt family is refused now, not after model loading
    if cfg.policy.name not in REGISTRY:  # your own class: checked on a fresh instance, the run's stays untouched
        from nslora.core import plugins
        from policies import check_policy

        plugins.conformance("policy.name", cfg.policy.name, lambda: check_policy(build(cfg.policy.name, params, p=cfg.saturation.p, seed=cfg.train.seed)))
    rewriter = Rewriter.plan(cfg.rewriter, task=getattr(task, "name", None) or None, score=score)
    return Plan(task, score, train, heldout, policy, rewriter)


def _run_dir(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.task.name}-{cfg.policy.name.replace(':', '.').replace('/', '.')}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.out_dir) / name
    if path.exists() and any(path.iterdir()):
        if not cfg.run.overwrite:
            raise UserError(f"run folder {path} already exists; choose another run.name or set run.overwrite=true")
    return path


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-load bars and deprecation notes are noise."""
    import warnings

    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def run(cfg: Config, resume_dir: Path | None = None) -> dict[str, Any]:
    """A new run, or with `resume_dir` the continuation of a stopped one from its last checkpoint."""
    started = time.perf_counter()
    _quiet_libraries()
    p = plan(cfg)
    dist = _processes()
    # Under torchrun / accelerate launch every process runs this function; the main one owns the run folder
    # and the rewriter, the others keep a scratch store and follow its decisions.
    wants_engine = p.policy.routes_symbolic and dist.is_main_process and p.rewriter.calls_model
    remote = wants_engine and engine_kind(cfg.rewriter.engine).endpoint
    # The guard's embedder, the strategy and the engine are each exercised once: refused before any folder exists.
    preflight = lambda: p.rewriter.preflight(remote, shared_system=p.policy.optimizes_shared_system)
    _agree(dist, lambda: _user_error(preflight) if p.policy.routes_symbolic and dist.is_main_process else None)
    path = resume_dir if resume_dir is not None else (_run_dir(cfg) if dist.is_main_process else None)
    if resume_dir is None:
        _check_disk(cfg)
    model, tokenizer, source = _load_model(cfg)
    p = _fit_lengths(p, tokenizer, cfg)
    if wants_engine and engine_kind(cfg.rewriter.engine).in_process:
        p.rewriter.open_local(*_local_rewriter_model(cfg))
    p.rewriter.ready(cfg.run.out_dir)  # the reply cache sits beside the run folders: a rerun pays nothing twice
    model = _wrap(model, cfg)
    if dist.is_main_process:  # after every refusal, so a refused run leaves nothing behind
        from router.durable import hold_folder

        lock = hold_folder(path)  # noqa: F841  (held until this process ends)
    store, scratch = _open_store(cfg, path, dist, resume_dir is None)
    store.put_meta(model_source=source, policy=repr(p.policy), started=datetime.now().isoformat(timespec="seconds"),
                   processes=dist.num_processes)
    store.add_samples([{"id": s.id, "split": split, "system": s.system, "question": s.question, "answer": s.answer,
                        "target": s.target, "fault": s.meta.get("fault"),
                        "kind": s.meta.get("kind")}
                       for split, group in (("train", p.train), ("heldout", p.heldout)) for s in group])
    from adapters.train import Trainer
    from router.nodes import RunContext

    trainer = Trainer(model, tokenizer, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                      train_weights=p.policy.trains_weights, grad_norm=cfg.train.grad_norm,
                      max_nonfinite_steps=cfg.train.max_nonfinite_steps, max_grad_norm=cfg.train.max_grad_norm,
                      frozen_cache_mb=cfg.train.frozen_cache_mb)
    ctx = RunContext(cfg=cfg, task=p.task, score=p.score, train=p.train, heldout=p.heldout, trainer=trainer, store=store,
                     policy=p.policy, rewriter=p.rewriter, run_dir=path, started=started, bar=_bar(cfg, dist))
    _execute(ctx, path, dist, durable=dist.is_main_process and dist.num_processes == 1)
    dist.wait_for_everyone()
    if scratch is not None:
        scratch.cleanup()
        return {}
    return json.loads((path / "metrics.json").read_text()) | {"run_dir": str(path)}


def _processes():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _user_error(step) -> str | None:
    """Run a step; its UserError as a message (to share with every process), else None."""
    try:
        step()
    except UserError as e:
        return str(e)
    return None


def _load_model(cfg: Config):
    """Seeds first (LoRA init and batching follow them), then the model."""
    import torch

    from adapters.model import load_model

    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    return load_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.cache_dir)


def _local_rewriter_model(cfg: Config):
    """The local rewriter is a second copy of the base model: rewriting with the adapter being trained would
    bias it toward the task's short answers."""
    from adapters.model import load_model

    name = cfg.rewriter.local_model or cfg.model.name_or_path
    model, tokenizer, _ = load_model(name, cfg.model.gguf_file if name == cfg.model.name_or_path else None, cfg.model.cache_dir)
    return model, tokenizer


def _wrap(model, cfg: Config):
    from adapters.lora import wrap

    try:
        return wrap(model, cfg.lora, seed=cfg.train.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def _open_store(cfg: Config, path: Path | None, dist, fresh: bool):
    """The run's store (a fresh folder with config.yaml for a new run); other processes keep a scratch one."""
    from nslora.core.atomic import write_text
    from router.store import Store

    if not dist.is_main_process:
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix=f"nslora-rank{dist.process_index}-")
        return Store(Path(scratch.name) / "run.sqlite"), scratch
    if fresh:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        write_text(path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return Store(path / "run.sqlite"), None


def _bar(cfg: Config, dist):
    if cfg.run.progress and dist.is_main_process:
        from tqdm.auto import tqdm

        return tqdm
    return None


def _execute(ctx, path: Path, dist, durable: bool) -> None:
    """Run (or continue) the graph; checkpoints make a run resumable (several processes run without them)."""
    from router import durable as dur
    from router import nodes
    from router.graph import build_graph

    if ctx.cfg.run.tensorboard and dist.is_main_process:
        from nslora.report.tensorboard import TensorBoardLogger

        ctx.tensorboard = TensorBoardLogger(path)
    from router.timing import NodeClock, timed_saver

    ctx.clock = NodeClock(ctx.store, started=ctx.started)
    saver = timed_saver(_checkpointer(ctx, path), ctx.clock) if durable else None
    graph = build_graph(ctx, checkpointer=saver)
    config = {"recursion_limit": 20 + 8 * ctx.cfg.train.epochs, "max_concurrency": 8, "configurable": {"thread_id": "run"}}
    initial = {"epoch": 0, "prompt_epochs": {}, "shared_system": None, "decisions": None, "accuracy": {}}
    snapshot = graph.get_state(config) if saver is not None else None
    # durability="sync": each step's checkpoint is on disk before the next step starts (LangGraph's default writes it
    # while the next step runs, so a kill inside a routing round could lose the step that started the round).
    sync = {"durability": "sync"} if saver is not None else {}
    restore = dur.install_signal_handlers()
    try:
        if snapshot is not None and snapshot.values:
            if not snapshot.next and (path / "metrics.json").is_file():
                print(f"{path} has already finished")
            elif not snapshot.next:  # the graph ended but its outputs are not all there: export again (idempotent)
                dur.load_trainer(ctx.trainer, path, snapshot.values["epoch"])
                nodes.export(snapshot.values, ctx)
            else:
                if "prompts" in snapshot.values:
                    raise UserError(f"{path} was started by an earlier ns-lora whose checkpoints hold every prompt; "
                                    "this version cannot resume it: start the run again")
                dur.load_trainer(ctx.trainer, path, snapshot.values["epoch"])
                if "decide" in snapshot.next:  # killed inside a routing round: the policy's fitted state was in memory
                    nodes.calibrate_round(snapshot.values, ctx)
                graph.invoke(None, config, **sync)
        else:
            if durable:
                dur.save_trainer(ctx.trainer, path, 0)
            graph.invoke(initial, config, **sync)
    except dur.Interrupted:
        raise dur.Interrupted(f"stopped after its current step; resume with: nslora resume {path}") from None
    finally:
        restore()
        if saver is not None:
            saver.conn.close()
        if ctx.tensorboard is not None:
            ctx.tensorboard.close()
        ctx.store.close()


def _checkpointer(ctx, path: Path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    from nslora.core.atomic import connect_durable
    from router import durable as dur

    (path / "checkpoints").mkdir(exist_ok=True)
    def checkpoint(epoch: int) -> None:
        with ctx.clock.measure("checkpoint"):
            dur.save_trainer(ctx.trainer, path, epoch)

    ctx.checkpoint = checkpoint
    return dur.pruned(SqliteSaver(connect_durable(path / "checkpoints" / "graph.sqlite")))


def dry_run(cfg: Config) -> str:
    """What a run would spend on the rewriter at most. Every refusal a run makes before its first epoch is made here
    too, with the same line: the plan, the rewriter's components and endpoint, the run folder, the disk, and the
    samples' lengths (the tokenizer is loaded, not the model). Nothing is written and no chat call is paid."""
    from adapters.model import load_tokenizer
    from policies.base import budget_count
    from rewriter.budget import estimate

    _quiet_libraries()  # the guard's embedder and the tokenizer load as in a run: no per-load progress bars
    p = plan(cfg)
    remote = p.policy.routes_symbolic and p.rewriter.calls_model and engine_kind(cfg.rewriter.engine).endpoint
    if p.policy.routes_symbolic:
        p.rewriter.preflight(remote, shared_system=p.policy.optimizes_shared_system)
    _run_dir(cfg)
    _check_disk(cfg)
    _fit_lengths(p, load_tokenizer(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.cache_dir), cfg)
    if not p.policy.routes_symbolic:
        return f"policy {cfg.policy.name} never rewrites: 0 LLM calls, cost $0"
    rounds = max(0, cfg.train.epochs - cfg.saturation.min_epoch + 1) if p.policy.needs_saturation else cfg.train.epochs
    per_round = budget_count(len(p.train), cfg.saturation.p)
    strategy = cfg.rewriter.strategy
    if p.policy.optimizes_shared_system:
        per_round, strategy = min(8, len(p.train)), p.rewriter.strategy.system_method or strategy
    avg_tokens = round(sum(len(s.system) + len(s.question) for s in p.train) / len(p.train) / 4)
    priced = engine_kind(cfg.rewriter.engine).priced
    kind = "openai" if priced else "local"  # the estimate's price list, or none
    try:
        est = estimate(rounds * per_round, strategy, optimize_system=cfg.rewriter.optimize_system or p.policy.optimizes_shared_system,
                       avg_prompt_tokens=avg_tokens, model=cfg.rewriter.model, kind=kind,
                       prices={k: tuple(v) for k, v in cfg.rewriter.prices.items()},
                       answer_check=cfg.rewriter.answer_check and not p.policy.optimizes_shared_system)
    except ValueError:  # your own strategy: its calls per rewrite are not known here
        return (f"dry run: {len(p.train)} training samples, up to {rounds} routing rounds x {per_round} symbolic samples; "
                f"strategy {strategy} is yours, so its calls per rewrite are unknown: set rewriter.max_calls / max_cost to cap them")
    lines = [
        f"dry run: {len(p.train)} training samples, up to {rounds} routing rounds x {per_round} symbolic samples "
        f"({strategy} strategy, ~{avg_tokens} prompt tokens a sample)",
        f"at most ~{est['calls']} LLM calls, ~{est['prompt_tokens']}+{est['completion_tokens']} tokens, "
        f"~${est['cost']:.4f} on {cfg.rewriter.model if priced else 'the local engine'} (before cache hits)",
    ]
    limits = {k: getattr(cfg.rewriter, k) for k in ("max_calls", "max_total_tokens", "max_cost") if getattr(cfg.rewriter, k) is not None}
    if limits:
        lines.append("budget: " + ", ".join(f"rewriter.{k}={v}" for k, v in limits.items())
                     + "; when reached, the remaining symbolic samples stay numerical")
    if priced and est["calls"] and not est["priced"]:
        lines.append(f"no price known for rewriter.model={cfg.rewriter.model}: the cost above is not an estimate; add it to rewriter.prices")
    if remote:  # preflight above refused an endpoint that does not answer
        lines.append(f"endpoint: {p.rewriter.engine_name} answered")
    return "\n".join(lines)


def _agree(dist, check) -> None:
    """Run a check on the main process and raise its error on every process, so none is left waiting."""
    message = check() if dist.is_main_process else None
    if dist.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [message]
        broadcast_object_list(box, from_process=0)
        message = box[0]
    if message:
        raise UserError(message)


def _check_disk(cfg: Config, need_bytes: int = 1 << 30) -> None:
    """Refuse to start a run that cannot write its checkpoints and adapter."""
    where = Path(cfg.run.out_dir).resolve()
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UserError(f"run.out_dir={cfg.run.out_dir} has {free / 2**20:.0f} MiB free, under the {need_bytes / 2**20:.0f} MiB a run needs; free space or choose another run.out_dir")


def resume(run_dir: str) -> dict[str, Any]:
    from router import config as config_mod

    path = Path(run_dir)
    if not (path / "config.yaml").is_file() or not (path / "run.sqlite").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml / run.sqlite); give the folder `nslora run` wrote")
    if not (path / "checkpoints" / "graph.sqlite").is_file():
        raise UserError(f"{run_dir} has no checkpoints/graph.sqlite (it stopped before its first step, or ran on several processes); start it again with nslora run")
    return run(config_mod.load(str(path / "config.yaml")), resume_dir=path)


def _fit_lengths(p: Plan, tokenizer, cfg: Config) -> Plan:
    """A sample over model.max_length (prompt + target) is refused, or with task.long=truncate loses story lines
    from the front of its question until it fits, the question line kept (meta["truncated"] marks it)."""
    import dataclasses

    from adapters.train import Item, encode

    def fitted(s):
        n = len(encode(tokenizer, Item(s.id, s.system, s.question, s.target))[0])
        if n <= cfg.model.max_length:
            return s
        if cfg.task.long != "truncate":
            raise UserError(f"sample {s.id} is {n} tokens, over model.max_length={cfg.model.max_length}; raise "
                            "model.max_length, use shorter samples, or set task.long=truncate")
        from router.prompts import fit

        room = cfg.model.max_length - (n - len(tokenizer(_prompt(tokenizer, s), add_special_tokens=False)["input_ids"]))
        question, _ = fit(tokenizer, s.system, s.question, room)
        return dataclasses.replace(s, question=question, meta={**s.meta, "truncated": True})

    return p._replace(train=[fitted(s) for s in p.train], heldout=[fitted(s) for s in p.heldout])


def _prompt(tokenizer, s) -> str:
    from adapters.train import prompt_text

    return prompt_text(tokenizer, s.system, s.question)
