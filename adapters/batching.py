"""How a training batch goes through the model cheaply without changing its update: samples of similar length share
a forward (the batch's gradients still add up to one step), and the vocabulary head, and the position-wise parts of
the last layer, run only where a logit is scored (the answer positions).

All exact: a sample's loss, correctness, statistics and C2 do not depend on which samples share its forward
(padding is masked, attention is causal), and what was computed at unscored positions was only dropped.
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


def last_layer_parts(model) -> list[torch.nn.Module]:
    """The position-wise modules of the decoder's last layer (its MLP and the attention's output projection): their
    output at a position reaches nothing but that position's logits. Empty when the layer is not found by those
    names."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return []
    last = layers[-1]
    parts = (getattr(last, "mlp", None), getattr(getattr(last, "self_attn", None), "o_proj", None))
    return [p for p in parts if isinstance(p, torch.nn.Module)]


@contextmanager
def read_rows(parts: list[torch.nn.Module], rows: torch.Tensor, cols: torch.Tensor):
    """While open, each module in `parts` (position-wise, of the last layer) runs only at (rows, cols) of its (B, T, d)
    input and gives zeros elsewhere: most of a layer's work at the prompt positions, whose last-layer output no
    logit reads. Each row's positions are gathered into a (B, W, d) block (W: the most any row has; spare slots
    read position 0 and are dropped), so per-sample hooks still see one row per sample, and the dropped slots get
    no gradient."""
    if not parts or rows.numel() == 0:
        yield
        return
    counts = torch.bincount(rows)
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max())
    shape: dict[int, tuple[int, int]] = {}

    def gather(module, args):
        x = args[0]
        if x.dim() != 3:
            return None
        index = torch.zeros((x.shape[0], width), dtype=torch.long, device=x.device)
        index[rows, slot] = cols
        shape[id(module)] = (x.shape[0], x.shape[1])
        return (x[torch.arange(x.shape[0], device=x.device)[:, None], index],) + tuple(args[1:])

    def scatter(module, args, output):
        if id(module) not in shape:
            return None
        b, t = shape.pop(id(module))
        out = output.new_zeros((b, t, output.shape[-1]))
        out[rows, cols] = output[rows, slot]
        return out

    handles = [h for m in parts for h in (m.register_forward_pre_hook(gather), m.register_forward_hook(scatter))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
