"""One routed fine-tuning run, top to bottom: validate → set up → run the graph → export → summary.

Everything that can be refused (config, data, model path, policy, endpoint) is checked before the run folder
exists, so bad input never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from router.config import Config, to_dict
from router.errors import UserError


def plan(cfg: Config):
    """Validate everything cheap to check; returns (task, train, heldout, policy)."""
    from adapters.model import resolve
    from policies import build
    from tasks import load_task

    task, train, heldout = load_task(cfg.task)
    resolve(cfg.model.name_or_path, cfg.model.gguf_file)
    params = dict(cfg.policy.params)
    if cfg.policy.path is not None:
        params.setdefault("path", cfg.policy.path)
    if cfg.policy.name == "reward":
        from policies.reward.folder import load_folder

        if "path" not in params:
            raise UserError("policy.name=reward needs policy.path: the folder written by `nslora policy train RUN_DIR... --out DIR`")
        load_folder(params["path"])  # refuses a missing or foreign folder before anything runs
    try:
        policy = build(cfg.policy.name, params, p=cfg.saturation.p, seed=cfg.train.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    return task, train, heldout, policy


def _routes_symbolic(cfg: Config) -> bool:
    return cfg.policy.name != "lora-only"


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
    task, train, heldout, policy = plan(cfg)
    symbolic = _routes_symbolic(cfg)

    import torch
    from accelerate import PartialState

    # Under torchrun / accelerate launch every process runs this function; the main one owns the run folder
    # and the rewriter, the others keep a scratch store and follow its decisions.
    dist = PartialState(cpu=not torch.cuda.is_available())
    main = dist.is_main_process
    engine = None
    wants_engine = symbolic and main and cfg.rewriter.calls_model
    if wants_engine and cfg.rewriter.engine == "openai":
        from rewriter.engines import build_engine

        engine = build_engine(cfg.rewriter)
    _agree(dist, lambda: _probe(engine) if engine is not None else None)
    if resume_dir is not None:
        path = resume_dir
    else:
        path = _run_dir(cfg) if main else None
        _check_disk(cfg)

    from adapters.lora import wrap
    from adapters.model import load_model
    from adapters.train import Trainer
    from router.graph import build_graph
    from router.nodes import RunContext
    from router.store import Store

    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model, tokenizer, source = load_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.cache_dir)
    _check_lengths(tokenizer, train + heldout, cfg)
    if wants_engine and cfg.rewriter.engine == "local":
        from rewriter.engines import build_engine

        # The local rewriter is a second copy of the base model: rewriting with the adapter being trained
        # would bias it toward the task's short answers.
        name = cfg.rewriter.local_model or cfg.model.name_or_path
        rmodel, rtok, _ = load_model(name, cfg.model.gguf_file if name == cfg.model.name_or_path else None, cfg.model.cache_dir)
        engine = build_engine(cfg.rewriter, local_model=rmodel, local_tokenizer=rtok)
    budget = None
    if engine is not None:
        from rewriter.settings import make_budget, prepare_engine

        # The reply cache sits beside the run folders, so a rerun of the same config pays for nothing twice.
        engine = prepare_engine(engine, cfg.rewriter, cfg.run.out_dir)
        budget = make_budget(cfg.rewriter)
    try:
        model = wrap(model, cfg.lora, seed=cfg.train.seed)
    except ValueError as e:
        raise UserError(str(e)) from None

    scratch = None
    if main:
        if resume_dir is None:
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            from router.export import _atomic_text

            _atomic_text(path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        store = Store(path / "run.sqlite")
    else:
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix=f"nslora-rank{dist.process_index}-")
        store = Store(Path(scratch.name) / "run.sqlite")
    store.put_meta(model_source=source, policy=repr(policy), started=datetime.now().isoformat(timespec="seconds"),
                   processes=dist.num_processes)
    store.add_samples([{"id": s.id, "split": split, "system": s.system, "question": s.question, "answer": s.answer,
                        "target": s.target} for split, group in (("train", train), ("heldout", heldout)) for s in group])

    trainer = Trainer(model, tokenizer, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, train_weights=policy.trains_weights,
                      grad_norm=cfg.train.grad_norm, max_nonfinite_steps=cfg.train.max_nonfinite_steps)
    bar = None
    if cfg.run.progress and main:
        from tqdm.auto import tqdm as bar
    ctx = RunContext(cfg=cfg, task=task, train=train, heldout=heldout, trainer=trainer, store=store, policy=policy,
                     engine=engine, rewrites_enabled=symbolic, budget=budget, bar=bar)

    def export(state):
        if main:
            from router.export import export_run

            export_run(path, ctx, state, started)
        return {}

    if cfg.run.tensorboard and main:
        from report.tensorboard import TensorBoardLogger

        ctx.tensorboard = TensorBoardLogger(path)
    from router import durable

    # Checkpoints make a run resumable; several processes run without them (resume is single-process).
    durable_run = main and dist.num_processes == 1
    saver = None
    if durable_run:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        (path / "checkpoints").mkdir(exist_ok=True)
        saver = SqliteSaver(sqlite3.connect(path / "checkpoints" / "graph.sqlite", check_same_thread=False))
        ctx.checkpoint = lambda epoch: durable.save_trainer(trainer, path, epoch)
    graph = build_graph(ctx, export, checkpointer=saver)
    config = {"recursion_limit": 20 + 8 * cfg.train.epochs, "max_concurrency": 8, "configurable": {"thread_id": "run"}}
    initial = {"epoch": 0, "prompts": {s.id: {"system": s.system, "question": s.question, "version": 0} for s in train},
               "shared_system": None, "decisions": None, "accuracy": {}}
    snapshot = graph.get_state(config) if saver is not None else None
    restore = durable.install_signal_handlers()
    try:
        if snapshot is not None and snapshot.values:
            if not snapshot.next:
                print(f"{path} has already finished")
            else:
                durable.load_trainer(trainer, path, snapshot.values["epoch"])
                graph.invoke(None, config)
        else:
            if durable_run:
                durable.save_trainer(trainer, path, 0)
            graph.invoke(initial, config)
    except durable.Interrupted:
        raise durable.Interrupted(f"stopped after its current step; resume with: nslora resume {path}") from None
    finally:
        restore()
        if saver is not None:
            saver.conn.close()
        if ctx.tensorboard is not None:
            ctx.tensorboard.close()
        store.close()
    dist.wait_for_everyone()
    if scratch is not None:
        scratch.cleanup()
        return {}
    return json.loads((path / "metrics.json").read_text()) | {"run_dir": str(path)}


def dry_run(cfg: Config) -> str:
    """What a run would spend on the rewriter at most, before anything is loaded or called."""
    from adapters.signals import budget_count
    from rewriter.budget import estimate

    task, train, heldout, policy = plan(cfg)
    if not _routes_symbolic(cfg):
        return f"policy {cfg.policy.name} never rewrites: 0 LLM calls, cost $0"
    if policy.needs_saturation:
        rounds = max(0, cfg.train.epochs - cfg.saturation.min_epoch + 1)
    else:
        rounds = cfg.train.epochs
    per_round = budget_count(len(train), cfg.saturation.p)
    strategy = cfg.rewriter.strategy
    if policy.optimizes_shared_system:
        per_round, strategy = min(8, len(train)), "textgrad"
    avg_tokens = round(sum(len(s.system) + len(s.question) for s in train) / len(train) / 4)
    kind = "local" if cfg.rewriter.engine == "local" else "openai"
    est = estimate(rounds * per_round, strategy, optimize_system=cfg.rewriter.optimize_system or policy.optimizes_shared_system,
                   avg_prompt_tokens=avg_tokens, model=cfg.rewriter.model, kind=kind,
                   prices={k: tuple(v) for k, v in cfg.rewriter.prices.items()})
    lines = [
        f"dry run: {len(train)} training samples, up to {rounds} routing rounds x {per_round} symbolic samples "
        f"({strategy} strategy, ~{avg_tokens} prompt tokens a sample)",
        f"at most ~{est['calls']} LLM calls, ~{est['prompt_tokens']}+{est['completion_tokens']} tokens, "
        f"~${est['cost']:.4f} on {cfg.rewriter.model if kind == 'openai' else 'the local engine'} (before cache hits)",
    ]
    limits = {k: getattr(cfg.rewriter, k) for k in ("max_calls", "max_total_tokens", "max_cost") if getattr(cfg.rewriter, k) is not None}
    if limits:
        lines.append("budget: " + ", ".join(f"rewriter.{k}={v}" for k, v in limits.items())
                     + "; when reached, the remaining symbolic samples stay numerical")
    return "\n".join(lines)


def _probe(engine) -> str | None:
    from rewriter.engines import probe

    try:
        probe(engine)
    except UserError as e:
        return str(e)
    return None


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


def _check_lengths(tokenizer, samples, cfg: Config) -> None:
    from adapters.train import Item, encode

    for s in samples:
        n = len(encode(tokenizer, Item(s.id, s.system, s.question, s.target))[0])
        if n > cfg.model.max_length:
            raise UserError(f"sample {s.id} is {n} tokens, over model.max_length={cfg.model.max_length}; raise model.max_length or use shorter samples")


def summary(metrics: dict[str, Any]) -> str:
    acc = metrics["heldout_accuracy"]
    c = metrics["counts"]
    lines = [
        f"run: {metrics['run_dir']}",
        f"held-out accuracy: before {acc['before']:.3f} → after {acc['final']:.3f} ({metrics['counts']['heldout']} samples)",
        f"routing rounds: {c.get('routing_rounds', 0)}, decisions: {c.get('decisions', 0)}, symbolic: {c.get('symbolic', 0)}, "
        f"rewrites accepted/rejected/failed: {c.get('rewrites_accepted', 0)}/{c.get('rewrites_rejected', 0)}/{c.get('rewrites_error', 0)}",
        f"LLM calls: {metrics['llm']['calls']} (+{metrics['llm']['cache_hits']} from cache), tokens: "
        f"{metrics['llm']['prompt_tokens']}+{metrics['llm']['completion_tokens']}, estimated cost: ${metrics['llm']['cost']:.4f}"
        + (f", reverted rewrites: {c['reverts']}" if c.get("reverts") else ""),
        f"wall time: {metrics['wall_seconds']:.1f} s",
    ]
    if c.get("rewrites_skipped"):
        lines.append(f"budget reached: {c['rewrites_skipped']} symbolic samples stayed numerical "
                     f"({metrics['llm'].get('budget', {}).get('exhausted') or 'see rewriter.max_*'})")
    if c.get("rewrites_error"):
        lines.append(f"warning: {c['rewrites_error']} rewrites failed (endpoint or engine errors, reasons in run.sqlite); "
                     "those samples stayed numerical")
    return "\n".join(lines)


def env_defaults() -> None:
    # textgrad imports litellm, which otherwise fetches its price map from the network at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
