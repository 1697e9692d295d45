"""The meaning guard's cost per rewrite in a round: rules rewrites of N generated bAbI questions judged with the
embedding similarity check at rewriter.concurrency, each pair embedded alone behind the model's lock (the first
design) against today's batched embedder (concurrent callers share forwards).

    python bench/guard.py                    # N = 512, concurrency 8
    python bench/guard.py --n 2048 --concurrency 16

Prints one JSON line: ms per rewrite each way, forwards, the ratio, and whether verdicts and similarities agree.
Both designs run in this one process, alternating (best of --rounds), so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from rewriter import guard
    from rewriter.pool import rewrite_many
    from rewriter.strategies import RewriteContext, build_strategy
    from nslora.tasks import load_task
    from nslora.tasks.config import TaskConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)

    class Pairwise(guard.Embedder):
        def _batched(self, texts):
            return dict(zip(texts, self.encode(texts)))

    _, train, _ = load_task(TaskConfig(name="babi", babi_task=1, n_train=args.n, n_heldout=1, seed=0))
    strategy, cfg = build_strategy("rules"), guard.GuardConfig()
    jobs = [(s, RewriteContext(engine=None, system=s.system, question=s.question, gold=s.answer, student_answer="",
                               guard=cfg, task="babi")) for s in train]
    best: dict[str, float] = {}
    results, forwards = {}, {}
    for _ in range(args.rounds):
        for name, cls in (("pairwise", Pairwise), ("batched", guard.Embedder)):
            emb = cls()
            emb.encode(["warm up"])  # the load is not what is measured
            emb.forwards = 0
            guard._EMBEDDERS[None] = emb
            started = time.perf_counter()
            results[name] = rewrite_many(jobs, strategy, concurrency=args.concurrency)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
            forwards[name] = emb.forwards
    a, b = results["pairwise"], results["batched"]
    same_verdicts = all(x.verdict == y.verdict for x, y in zip(a, b))
    drift = max(abs(x.scores.get("similarity", 0) - y.scores.get("similarity", 0)) for x, y in zip(a, b))
    print(json.dumps({"bench": "guard", "rewrites": len(jobs), "concurrency": args.concurrency,
                      "pairwise_ms_per_rewrite": round(1000 * best["pairwise"] / len(jobs), 2),
                      "batched_ms_per_rewrite": round(1000 * best["batched"] / len(jobs), 2),
                      "speedup": round(best["pairwise"] / best["batched"], 2), "forwards": forwards,
                      "same_verdicts": same_verdicts, "max_similarity_difference": drift}))


if __name__ == "__main__":
    main()
