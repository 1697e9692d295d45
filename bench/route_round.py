"""The routing round's fan-out alone: K candidates decided through LangGraph Sends of their ids with the SQLite checkpointer,
one Send per candidate (the first design) against one per chunk of router.graph.CHUNK (today's), both through the
real `nodes.decide`, the real state reducer and a calibrated loss-ratio policy; no model, no trainer.

    python bench/route_round.py                     # K = 500, 2000, 8000
    python bench/route_round.py --sizes 1000 16000

Prints one JSON line: per K, seconds for each design, ms per candidate, and the growth ratio per x4 in K. Both
designs run in this one process, alternating, so the ratios compare like with like on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import operator
import random
import sqlite3
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.state import round_decisions  # noqa: E402


class State(TypedDict, total=False):
    decisions: Annotated[list, round_decisions]
    done: Annotated[int, operator.add]


def _views(k: int):
    from policies.base import SampleView

    rng = random.Random(0)
    return [SampleView(id=f"s{i:06d}", epoch=3, loss=rng.random(), c1=rng.uniform(-1, 1), c2=rng.random(), correct=False,
                       losses=(1.0, 0.8, 0.5), system="P", question=f"question {i}", rewrites=0, extra={}) for i in range(k)]


def _graph(ctx, per_chunk: int, saver):
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    from router import nodes

    def fan_out(state):
        ids = list(ctx.round_views)
        return [Send("decide", {"ids": ids[i:i + per_chunk]}) for i in range(0, len(ids), per_chunk)]

    g = StateGraph(State)
    g.add_node("start", lambda state: {})
    g.add_node("decide", partial(nodes.decide, ctx=ctx))
    g.add_node("collect", lambda state: {"done": len(state["decisions"])})
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out, ["decide"])
    g.add_edge("decide", "collect")
    g.add_edge("collect", END)
    return g.compile(checkpointer=saver)


def one_round(k: int, per_chunk: int) -> float:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from policies import build

    views = _views(k)
    policy = build("loss-ratio", {}, p=0.1, seed=0).calibrate(views)
    ctx = SimpleNamespace(policy=policy, cfg=SimpleNamespace(policy=SimpleNamespace(name="loss-ratio")),
                          round_views={v.id: v for v in views})
    with tempfile.TemporaryDirectory() as tmp:
        saver = SqliteSaver(sqlite3.connect(Path(tmp) / "graph.sqlite", check_same_thread=False))
        graph = _graph(ctx, per_chunk, saver)
        started = time.perf_counter()
        out = graph.invoke({"decisions": None}, {"configurable": {"thread_id": "bench"}, "recursion_limit": 10**6})
        seconds = time.perf_counter() - started
    assert out["done"] == k and len({d["sample_id"] for d in out["decisions"]}) == k
    return seconds


def main() -> None:
    from router.graph import CHUNK

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    args = ap.parse_args()
    rows = []
    for k in args.sizes:
        per_sample, chunked = one_round(k, 1), one_round(k, CHUNK)
        rows.append({"candidates": k, "per_sample_s": round(per_sample, 3), "chunked_s": round(chunked, 3),
                     "per_sample_ms_per_candidate": round(1000 * per_sample / k, 3),
                     "chunked_ms_per_candidate": round(1000 * chunked / k, 3), "speedup": round(per_sample / chunked, 1)})
    for a, b in zip(rows, rows[1:]):
        scale = b["candidates"] / a["candidates"]
        b["growth_per_sample"] = round(b["per_sample_s"] / a["per_sample_s"], 2)
        b["growth_chunked"] = round(b["chunked_s"] / a["chunked_s"], 2)
        b["size_ratio"] = scale
    print(json.dumps({"bench": "route_round", "chunk": CHUNK, "rounds": rows}))


if __name__ == "__main__":
    main()
