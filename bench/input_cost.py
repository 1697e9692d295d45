"""What the base-model input signals cost against one training epoch: `Trainer.input_signals` (adapter off, one
no-grad forward per prompt, adapters/inputs.py) against `Trainer.train_epoch` (LoRA steps with C2 and the dynamics)
over the same samples, with the run's defaults (train.batch_size 8, train.eval_batch_size 16).

    python bench/input_cost.py                          # SmolLM2-135M, 64 bAbI task-1 samples, 2 rounds
    python bench/input_cost.py --model tiny --samples 16 --rounds 2
    python bench/input_cost.py --top-layers 8           # LoRA on the top 8 layers only (the policy bench's setting)

All are timed in one process, alternating; one JSON line with the median ratios: today's pass (the shared opening
run once and cached, the vocabulary head only where a token is scored), without the cache (`no_prefix`), and the
first design (`full_head`: the head at every position, nothing cached).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model name nslora run accepts, or tiny")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--top-layers", type=int, default=None, help="lora.top_layers (default: all layers)")
    args = ap.parse_args()

    import torch

    from adapters.config import LoraConfig, TrainConfig
    from adapters.lora import wrap
    from adapters.train import Item, Trainer
    from nslora.tasks.babi import DEFAULT_SYSTEM, generate_babi, parse_babi

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from bench_models import load

    model, tok = load(args.model)
    model = wrap(model, LoraConfig(top_layers=args.top_layers), seed=0)
    cfg = TrainConfig()
    trainer = Trainer(model, tok, lr=cfg.lr)
    samples = parse_babi(generate_babi(1, 200, seed=0), 1)[: args.samples]
    items = [Item(s.id, DEFAULT_SYSTEM, s.question, s.answer) for s in samples]
    prompts = [(s.id, DEFAULT_SYSTEM, s.question, s.answer) for s in samples]
    from adapters import inputs

    # Today's pass, then without the shared opening cached, then the first design (the vocabulary head at every
    # position, nothing cached), each timed right after an epoch.
    designs = {"inputs": {}, "no_prefix": {"_prefix": lambda model, rows, layer=None: None},
               "full_head": {"_prefix": lambda model, rows, layer=None: None, "_scored_only": lambda model: None}}
    epoch_s, times = [], {d: [] for d in designs}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        trainer.train_epoch(items, cfg.batch_size, seed=r)
        epoch_s.append(time.perf_counter() - t0)
        for name, patch in designs.items():
            saved = {k: getattr(inputs, k) for k in patch}
            for k, v in patch.items():
                setattr(inputs, k, v)
            try:
                t1 = time.perf_counter()
                trainer.input_signals(prompts, cfg.eval_batch_size)
                times[name].append(time.perf_counter() - t1)
            finally:
                for k, v in saved.items():
                    setattr(inputs, k, v)
    share = lambda name: round(statistics.median([b / a for a, b in zip(epoch_s, times[name])]), 4)
    print(json.dumps({"bench": "input_cost", "model": args.model, "samples": len(items), "rounds": args.rounds,
                      "top_layers": args.top_layers, "epoch_s": [round(x, 2) for x in epoch_s],
                      **{f"{name}_s": [round(x, 2) for x in t] for name, t in times.items()},
                      **{f"{name}_share_of_epoch_median": share(name) for name in times}, "goal": 0.10}))

if __name__ == "__main__":
    main()
