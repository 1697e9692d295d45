"""What routing costs over the LoRA fine-tuning people run today: a routed epoch against a plain TRL SFTTrainer +
peft epoch on the same model, data, batch size and step count.

    python bench/overhead.py                         # SmolLM2-135M, 64 bAbI samples, batch 8
    python bench/overhead.py --model tiny --rounds 5

Routed = the real graph (train_epoch with per-sample loss / correct / C2 → monitor → Send fan-out → policy →
rewrite node with nothing to rewrite), minus held-out evaluation, which TRL's epoch does not do either. The base
model's input pass (measure_inputs: one forward per prompt, once per run and again only for a rewritten prompt)
runs before the first epoch; it is timed on its own, and the ratios are given with and without it. TRL runs twice:
with its defaults and with its own batching option (`padding_free`). `--top-layers N` puts LoRA on the last N
layers in every arm (the embedded default's placement: the routed arm then reads the frozen layers from the cache
the input pass filled). The arms run interleaved in one process; one JSON line with the median ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def trl_epoch(base, tok, train, cfg, padding_free: bool = False) -> tuple[float, int]:
    import datasets
    import peft
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": [{"role": "system", "content": s.system}, {"role": "user", "content": s.question}],
             "completion": [{"role": "assistant", "content": s.target}]} for s in train]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=cfg.train.batch_size, num_train_epochs=1,
                         learning_rate=cfg.train.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                         logging_strategy="no", report_to="none", disable_tqdm=True,
                         max_length=None if padding_free else cfg.model.max_length,  # TRL: not enforced padding-free
                         seed=cfg.train.seed, dataset_num_proc=None, padding_free=padding_free)
        total = base.config.num_hidden_layers
        top = None if cfg.lora.top_layers is None else list(range(total - cfg.lora.top_layers, total))
        lora = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                               target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
                               layers_to_transform=top)
        dataset = datasets.Dataset.from_list(rows)
        trainer = SFTTrainer(model=copy.deepcopy(base), args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=lora)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started, len(trainer.get_train_dataloader())


def routed_epoch(base, tok, task, train, heldout, cfg) -> tuple[float, float, int]:
    """(seconds of the epoch: train → monitor → decide → rewrite, seconds of the input pass before it, decisions)."""
    from adapters.lora import wrap
    from adapters.train import Trainer
    from policies import build
    from rewriter.round import Rewriter
    from router import nodes
    from router.graph import build_graph
    from router.nodes import RunContext
    from router.store import Store

    measure, input_pass = nodes.measure_inputs, []

    def timed_measure(state, ctx):
        started = time.perf_counter()
        try:
            return measure(state, ctx)
        finally:
            input_pass.append(time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as out:
        store = Store(Path(out) / "run.sqlite")
        model = wrap(copy.deepcopy(base), cfg.lora, seed=cfg.train.seed)
        trainer = Trainer(model, tok, lr=cfg.train.lr, frozen_cache_mb=cfg.train.frozen_cache_mb,
                          max_grad_norm=cfg.train.max_grad_norm)  # clipped as TRL's arms are (max_grad_norm 1.0)
        policy = build(cfg.policy.name, {}, p=cfg.saturation.p, seed=0)
        ctx = RunContext(cfg=cfg, task=task, score=task.score, train=train, heldout=heldout, trainer=trainer,
                         store=store, policy=policy, rewriter=Rewriter.plan(cfg.rewriter, task=task.name))
        nodes.export = lambda state, ctx: {}  # the timed span is the epoch; writing the run's outputs is not in it
        nodes.measure_inputs = timed_measure
        try:
            graph = build_graph(ctx)
        finally:
            nodes.measure_inputs = measure
        # Start after the epoch-0 evaluation: the timed span is train_epoch → monitor → decide* → rewrite.
        state = {"epoch": 0, "prompt_epochs": {},
                 "shared_system": None, "decisions": None, "accuracy": {}}
        ctx.trainer.generate = lambda prompts, *a, **k: [""] * len(prompts)  # no held-out generation in either arm
        started = time.perf_counter()
        graph.invoke(state, {"recursion_limit": 50})
        seconds = time.perf_counter() - started
        decisions = store.counts()["decisions"]
        store.close()
        return seconds - sum(input_pass), sum(input_pass), decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top-layers", type=int, help="LoRA on the last N layers in every arm (default: all layers)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from nslora.core.provenance import stamp
    from router.config import load as load_config
    from nslora.tasks import load_task

    # One epoch, routing forced at it (min_epoch is 2, so epoch 1 is the probe: C1 needs an earlier epoch —
    # we route with a policy that needs no saturation and sends nothing to the rewriter).
    cfg = load_config(None, [f"task.n_train={args.samples}", "task.n_heldout=1", f"train.batch_size={args.batch}",
                             "train.epochs=1", "policy.name=lora-only", "run.progress=false",
                             f"lora.top_layers={args.top_layers or 'null'}"])  # the same layers in every arm
    task, train, heldout = load_task(cfg.task)
    from bench_models import load

    base, tok = load(args.model)
    from policies.baselines import LoraOnlyPolicy

    LoraOnlyPolicy.needs_saturation = False  # so the fan-out and policy run in the timed epoch

    trl_t, free_t, routed_t, input_t, steps, decisions = [], [], [], [], None, 0
    for _ in range(args.rounds):
        t, steps = trl_epoch(base, tok, train, cfg)
        trl_t.append(t)
        # TRL's own batching option: padding-free batches (one row of concatenated samples, positions restarting
        # per sample; transformers masks attention per sample from those positions).
        free_t.append(trl_epoch(base, tok, train, cfg, padding_free=True)[0])
        t, t_in, decisions = routed_epoch(base, tok, task, train, heldout, cfg)
        routed_t.append(t)
        input_t.append(t_in)

    def ratio(over, plus=None):
        return round(statistics.median((r + (p if plus else 0)) / t for r, p, t in zip(routed_t, input_t, over)), 3)

    print(json.dumps({"bench": "overhead", "model": args.model, "samples": args.samples, "batch": args.batch,
                      "lora_top_layers": args.top_layers, "frozen_cache": bool(args.top_layers),
                      "steps_per_epoch": steps, "rounds": args.rounds, "routed_decisions_per_epoch": decisions,
                      "trl_epoch_seconds": [round(t, 3) for t in trl_t],
                      "trl_padding_free_epoch_seconds": [round(t, 3) for t in free_t],
                      "routed_epoch_seconds": [round(t, 3) for t in routed_t],
                      "input_pass_seconds": [round(t, 3) for t in input_t],
                      "median_ratio_routed_over_trl": ratio(trl_t),
                      "median_ratio_routed_over_trl_padding_free": ratio(free_t),
                      "median_ratio_routed_with_input_pass_over_trl": ratio(trl_t, plus=True),
                      "median_ratio_routed_with_input_pass_over_trl_padding_free": ratio(free_t, plus=True),
                      "stamp": stamp(vars(args))}))


if __name__ == "__main__":
    main()
