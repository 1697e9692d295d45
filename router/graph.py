"""build_graph: the only place the routing state machine's edges are wired.

    START → evaluate(0) → train_epoch → monitor ─ saturated? ─ no ──────────────► evaluate
                              ▲                  └ yes: Send(decide) per candidate → rewrite → evaluate
                              └──────────── more epochs? ◄─────────────────────────────────────┘
                                            done → export → END
"""

from __future__ import annotations

from typing import Callable, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from router.nodes import RunContext, make_nodes, view_payload
from router.state import RunState


def build_graph(ctx: RunContext, export: Callable[[RunState], dict], checkpointer=None):
    nodes = make_nodes(ctx)
    views = nodes.pop("views")

    def after_monitor(state: RunState):
        if not state.get("saturated") or not state.get("candidates"):
            return "evaluate"
        return [Send("decide", view_payload(v)) for v in views(state, state["candidates"])]

    def after_evaluate(state: RunState) -> Literal["train_epoch", "export"]:
        return "train_epoch" if state.get("epoch", 0) < ctx.cfg.train.epochs else "export"

    g = StateGraph(RunState)
    for name, fn in nodes.items():
        g.add_node(name, fn)
    g.add_node("export", export)
    g.add_edge(START, "evaluate")
    g.add_conditional_edges("evaluate", after_evaluate, ["train_epoch", "export"])
    g.add_edge("train_epoch", "monitor")
    g.add_conditional_edges("monitor", after_monitor, ["decide", "evaluate"])
    g.add_edge("decide", "rewrite")
    g.add_edge("rewrite", "evaluate")
    g.add_edge("export", END)
    return g.compile(checkpointer=checkpointer)
