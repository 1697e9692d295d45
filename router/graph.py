"""build_graph: the only place the routing state machine's edges are wired.

    START → evaluate(0) → measure_inputs → train_epoch → monitor ─ saturated? ─ no ──────────────────► evaluate
                               ▲                                  └ yes: Send(decide) per chunk → rewrite → evaluate
                               └──────────── more epochs? ◄───────────────────────────────────────────────┘
                                             done → export → END
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from router import nodes
from router.nodes import RunContext
from router.state import RunState

# Candidates per decide branch. One Send per candidate made a routing round quadratic in the candidates (LangGraph
# scans its pending tasks per task, and the checkpointer commits once per task): 16k branches took 70-188 s.
# Each branch still decides, and records a reason for, every sample it holds.
CHUNK = 1000


def build_graph(ctx: RunContext, checkpointer=None):
    def after_monitor(state: RunState):
        if not state.get("saturated") or not state.get("candidates"):
            return "evaluate"
        # Ids only: the views stay in memory (ctx.round_views), so the checkpoint of the fan-out stays small.
        ids = list(ctx.round_views)
        return [Send("decide", {"ids": ids[i:i + CHUNK]}) for i in range(0, len(ids), CHUNK)]

    def after_evaluate(state: RunState) -> Literal["measure_inputs", "export"]:
        return "measure_inputs" if state.get("epoch", 0) < ctx.cfg.train.epochs else "export"

    g = StateGraph(RunState)
    for name in ("evaluate", "measure_inputs", "train_epoch", "monitor", "decide", "rewrite", "export"):
        node = partial(getattr(nodes, name), ctx=ctx)
        g.add_node(name, node if ctx.clock is None else ctx.clock.timed(name, node))
    g.add_edge(START, "evaluate")
    g.add_conditional_edges("evaluate", after_evaluate, ["measure_inputs", "export"])
    g.add_edge("measure_inputs", "train_epoch")
    g.add_edge("train_epoch", "monitor")
    g.add_conditional_edges("monitor", after_monitor, ["decide", "evaluate"])
    g.add_edge("decide", "rewrite")
    g.add_edge("rewrite", "evaluate")
    g.add_edge("export", END)
    return g.compile(checkpointer=checkpointer)
