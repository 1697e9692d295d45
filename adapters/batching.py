"""How a training batch goes through the model cheaply without changing its update: samples of similar length share
a forward (the batch's gradients still add up to one step), and the vocabulary head runs only where a logit is
scored (the answer positions).

Both are exact: a sample's loss, correctness, statistics and C2 do not depend on which samples share its forward
(padding is masked, attention is causal), and logits at unscored positions were computed only to be dropped.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

# The fixed cost of one forward and backward, in padded tokens' worth of compute: it decides when splitting a batch
# into more, shorter forwards pays. On a CPU a small model's forward costs little besides its tokens; a GPU's kernel
# launches cost as much as thousands of tokens, so there a batch is split only when its lengths differ widely.
OVERHEAD_TOKENS = {"cpu": 24, "cuda": 2048}


def length_chunks(lengths: list[int], overhead: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into chunks of similar length, chosen to minimise the padded tokens plus
    `overhead` per chunk (exact, by dynamic programming over the sorted lengths); at most `max_rows` a chunk."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    limit = min(max_rows or n, n, 256)  # a window keeps huge batches linear; past 256 rows a chunk is big anyway
    best = [0.0] + [float("inf")] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - limit), j):
            cost = best[i] + (j - i) * sizes[j - 1] + overhead
            if cost < best[j]:
                best[j], start[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[start[j] : j])
        j = start[j]
    return chunks[::-1]


@contextmanager
def head_rows(head: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor):
    """While open, the output head sees only the hidden states at (rows, cols) of its (B, T, d) input, shifted so
    that position t is the one predicting token t+1: the model returns (N, vocab) logits, one per scored token,
    in the order of `rows`/`cols`. The head's own work (a fifth of a small model's forward and backward) then
    scales with the answer, not the sequence."""
    def pick(module, args):
        return (args[0][:, :-1][rows, cols],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()
