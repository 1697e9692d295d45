"""Held-out answers by batched greedy generation.

Prompts are batched by length (little padding), and the opening every prompt shares (the chat template and the
system prompt: a quarter of a bAbI prompt) is run once, its keys and values copied into every batch: the replies
are the ones each prompt gets alone. Generation stops at the end-of-turn token; it is not cut at a newline, since
the tasks' extractors read the whole reply ("the answer the reply finally commits to").
"""

from __future__ import annotations

import copy

import torch

from adapters.inputs import MIN_PREFIX, _cache_arg
from adapters.train import prompt_text


def shared_prefix(ids: list[list[int]]) -> int:
    """Length of the opening all rows share, leaving each row at least one token of its own (0 when under
    MIN_PREFIX)."""
    if not ids:
        return 0
    n, shortest = 0, min(len(row) for row in ids) - 1
    while n < shortest and len({row[n] for row in ids}) == 1:
        n += 1
    return n if n >= MIN_PREFIX else 0


def _prefix_cache(model, prefix: list[int]):
    """The keys and values of `prefix` (one row), or None when the model does not hand back a cache it can copy."""
    out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return cache if callable(getattr(cache, "batch_repeat_interleave", None)) else None


def _left_padded(rows: list[list[int]], n: int, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that share their first n tokens, with the padding placed after those n (left of each row's own part),
    so that every row's last token is aligned for generation and the shared part stays the cached one."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        own = row[n:]
        ids[i, :n], mask[i, :n] = torch.tensor(row[:n], dtype=torch.long), 1
        ids[i, width - len(own) :], mask[i, width - len(own) :] = torch.tensor(own, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts: list[tuple[str, str]], max_new_tokens: int, batch_size: int, progress=None,
                   rank: int = 0, world: int = 1) -> list[tuple[int, str]]:
    """(index, greedy reply) for this process's batches of (system, question) prompts.

    The order is fixed by the prompts alone, so every process and every rerun batches alike, and whole batches go
    to one process each, so every batch is padded exactly as in a single process."""
    tok = tokenizer
    model.eval()
    ids = [tok(prompt_text(tok, s, q), add_special_tokens=False)["input_ids"] for s, q in prompts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    n = shared_prefix(ids)
    cache = _prefix_cache(model, ids[0][:n]) if n else None
    n = n if cache is not None else 0
    mine: list[tuple[int, str]] = []
    for start in list(range(0, len(order), batch_size))[rank::world]:
        idx = order[start : start + batch_size]
        input_ids, attention = _left_padded([ids[j] for j in idx], n, tok.pad_token_id, model.device)
        extra = {}
        if cache is not None:
            copied = copy.deepcopy(cache)
            copied.batch_repeat_interleave(len(idx))
            extra[_cache_arg(getattr(model, "get_base_model", lambda: model)())] = copied
        out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)
        mine += list(zip(idx, tok.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)))
        if progress is not None:
            progress.update(len(idx) * world)
    return mine
