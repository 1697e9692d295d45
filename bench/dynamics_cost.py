"""What the training-dynamics statistics cost inside a LoRA step: `answer_token_stats` on the step's own logits
against the step (forward, per-sample loss, backward, optimizer update) on the same batch.

    python bench/dynamics_cost.py                       # SmolLM2-135M (LoRA q,k,v,o on all layers), bAbI task 1, batch 8
    python bench/dynamics_cost.py --model tiny --rounds 20

Both are timed in one process, interleaved, on the same batches; one JSON line with the median ratio.
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
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()

    import torch

    from adapters.config import LoraConfig
    from adapters.lora import wrap
    from adapters.signals import answer_token_stats, per_sample_loss
    from adapters.train import Item, collate, encode
    from nslora.tasks.babi import generate_babi, parse_babi

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from bench_models import load

    model, tok = load(args.model)
    model = wrap(model, LoraConfig(), seed=0)
    samples = parse_babi(generate_babi(1, 200, seed=0), 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_s, stats_s = [], []
    for r in range(args.rounds):
        chunk = samples[r * args.batch:(r + 1) * args.batch]
        enc = collate([encode(tok, Item(s.id, "", s.question, s.answer)) for s in chunk], tok.pad_token_id)
        model.train()
        t0 = time.perf_counter()
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        loss, _ = per_sample_loss(logits, enc["labels"])
        loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        answer_token_stats(logits.detach(), enc["labels"])
        t2 = time.perf_counter()
        step_s.append(t1 - t0)
        stats_s.append(t2 - t1)
    ratios = [b / a for a, b in zip(step_s[1:], stats_s[1:])]  # the first round warms up
    print(json.dumps({"bench": "dynamics_cost", "model": args.model, "batch": args.batch, "rounds": args.rounds,
                      "tokens_per_sample": int(enc["input_ids"].shape[1]), "step_ms_median": round(1e3 * statistics.median(step_s[1:]), 2),
                      "stats_ms_median": round(1e3 * statistics.median(stats_s[1:]), 3),
                      "stats_share_of_step_median": round(statistics.median(ratios), 5), "goal": 0.02}))


if __name__ == "__main__":
    main()
