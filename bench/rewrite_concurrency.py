"""Concurrent, cached rewrites against textgrad's own sequential loop, on a loopback OpenAI-compatible server.

    python bench/rewrite_concurrency.py [--n 64] [--latency 0.2] [--concurrency 8]

Prints ONE JSON line: the wall time of a plain for loop over the samples calling the textgrad strategy
(textgrad's own sequential way), of rewrite_many at the given concurrency, their ratio, the ideal
concurrency-bound time (HTTP calls x latency / concurrency) and the efficiency (ideal / measured), then a second
identical run through the reply cache and the HTTP calls it made (goal: 0). Goals (issue 4): ratio >= 6 at
concurrency 8, efficiency >= 0.8. Stops by itself (an alarm at 150 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
_TMP = tempfile.mkdtemp(prefix="nslora-bench-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TEXTGRAD_LOG_DIR", os.path.join(_TMP, "textgrad-logs"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_TMP, "cache"))


def questions(n: int) -> list[tuple[str, str]]:
    """(question, gold): GSM8K's first questions when the shared data is here, else generated ones."""
    path = os.path.join(ROOT, "..", "shared", "data", "gsm8k", "train.jsonl")
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                out.append((rec["question"], rec["answer"].rpartition("####")[2].strip()))
                if len(out) == n:
                    return out
    names = ("Tom", "Ana", "Lee", "Priya", "Omar", "Mia", "Ken", "Sara")
    return [(f"{names[i % 8]} has {i + 3} apples and buys {i % 5 + 2} more. How many apples does "
             f"{names[i % 8]} have now?", str(i + 3 + i % 5 + 2)) for i in range(n)]


def _rounds(args, jobs):
    """(results, seconds, HTTP chat calls) of textgrad's own one-by-one loop, a concurrent round, and its cached rerun."""
    from fake_openai import FakeOpenAI

    from rewriter.cache import CachedEngine
    from rewriter.engines import OpenAIEngine
    from rewriter.pool import rewrite_many
    from rewriter.strategies import STRATEGIES

    with FakeOpenAI(latency=args.latency) as srv:
        def timed(run):
            """(results, seconds, HTTP chat calls) of one round."""
            before = len(srv.chat_requests())
            start = time.perf_counter()
            results = run()
            return results, time.perf_counter() - start, len(srv.chat_requests()) - before

        def engine():
            return OpenAIEngine(base_url=srv.base_url, model="fake", max_retries=0, timeout=30)

        textgrad = STRATEGIES["textgrad"]()
        # textgrad's own loop: one sample after another
        seq = timed(lambda: [textgrad.rewrite(s, ctx) for s, ctx in jobs(engine())])
        cache_path = os.path.join(_TMP, "rewrites.sqlite")
        par = timed(lambda: rewrite_many(jobs(CachedEngine(engine(), cache_path)), "textgrad",
                                          concurrency=args.concurrency))
        again = timed(lambda: rewrite_many(jobs(CachedEngine(engine(), cache_path)), "textgrad",
                                           concurrency=args.concurrency))
    return seq, par, again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    signal.alarm(150)  # never hang a CI job

    import torch

    torch.set_num_threads(1)
    from rewriter import guard
    from rewriter.engines import import_textgrad
    from rewriter.strategies import RewriteContext
    from nslora.tasks.base import Sample

    import_textgrad()
    guard.similarity("warm", "up")  # load the embedder before any clock starts

    system = "Solve the math word problem step by step if needed, and give the final answer as a number."
    data = questions(args.n)
    samples = [Sample(f"q{i}", system, q, a, a) for i, (q, a) in enumerate(data)]

    def jobs(engine):
        return [(s, RewriteContext(engine, system, s.question, s.answer, "12")) for s in samples]

    out: dict = {"n": args.n, "latency_s": args.latency, "concurrency": args.concurrency, "strategy": "textgrad"}
    (seq, t_seq, seq_calls), (par, t_par, par_calls), (again, t_again, again_calls) = _rounds(args, jobs)
    ideal = par_calls * args.latency / args.concurrency
    out.update({
        "sequential_s": round(t_seq, 2), "sequential_calls": seq_calls,
        "concurrent_s": round(t_par, 2), "concurrent_calls": par_calls,
        "speedup": round(t_seq / t_par, 2),
        "ideal_s": round(ideal, 2), "efficiency": round(ideal / t_par, 3),
        "accepted_sequential": sum(r.verdict == "accepted" for r in seq),
        "accepted_concurrent": sum(r.verdict == "accepted" for r in par),
        "same_rewrites": [r.new_question for r in seq] == [r.new_question for r in par] == [r.new_question for r in again],
        "cached_rerun_s": round(t_again, 2), "cached_rerun_http_calls": again_calls,
        "cached_rerun_hits": sum(r.cache_hits for r in again),
    })
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
