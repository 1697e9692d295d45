"""Wall time per graph node and per checkpoint write, per epoch, in run.sqlite's `timings` table (so the time of
routing, rewriting and evaluating reaches the run store and the report, not only training's).

    clock = NodeClock(store)
    g.add_node("rewrite", clock.timed("rewrite", partial(nodes.rewrite, ctx=ctx)))
    with clock.measure("checkpoint"): save(...)     # inside a node: counted as checkpoint, not as the node

A node's time is recorded under the epoch it produced (train_epoch: the epoch it trained), else the epoch of its
input. Times are summed: a round's decide branches add up, and a resumed run adds what it redid. Decide branches
run on several threads, so times are gathered in memory and written by the sequential nodes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable

# What runs in a branch of a fan-out (on several threads at once): its time is written by the next sequential node.
BRANCHES = ("decide",)


class NodeClock:
    def __init__(self, store, started: float | None = None):
        self.store = store
        # This process's wall time since `started` (perf_counter) is stored with each flush, so a resumed run's
        # wall time adds the processes before it, each up to its last finished step.
        self.started = started
        self.process = store.open_process() if started is not None else None
        self.epoch = 0
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], float] = defaultdict(float)
        self._local = threading.local()

    def add(self, node: str, seconds: float, epoch: int | None = None) -> None:
        with self._lock:
            self._pending[(self.epoch if epoch is None else epoch, node)] += seconds

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = dict(self._pending), defaultdict(float)
        if rows:
            self.store.add_timings(rows)
        if self.process is not None:
            self.store.process_seconds(self.process, time.perf_counter() - self.started)

    def wall_seconds(self) -> tuple[float, int]:
        """(the run's wall seconds over all its processes, how many processes), as of now."""
        return self.store.wall_seconds(self.process, time.perf_counter() - self.started)

    @contextmanager
    def measure(self, node: str):
        """Time a step inside a node under its own name (the node's time leaves it out)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.add(node, spent)
            self._local.inner = getattr(self._local, "inner", 0.0) + spent

    def timed(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(state):
            if isinstance(state, dict) and isinstance(state.get("epoch"), int):
                self.epoch = state["epoch"]
            self._local.inner = 0.0
            start = time.perf_counter()
            result = fn(state)
            spent = time.perf_counter() - start - self._local.inner
            epoch = result.get("epoch") if isinstance(result, dict) and isinstance(result.get("epoch"), int) else None
            self.add(name, spent, epoch)
            if name not in BRANCHES:
                self.flush()
            return result

        return run


def timed_saver(saver, clock: NodeClock):
    """The checkpointer with its writes timed as `checkpoint` (they happen between nodes, in LangGraph's loop)."""

    def timed(write):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return write(*args, **kwargs)
            finally:
                clock.add("checkpoint", time.perf_counter() - start)

        return run

    saver.put, saver.put_writes = timed(saver.put), timed(saver.put_writes)
    return saver
