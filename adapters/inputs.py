"""Input signals: what the frozen base model (adapter disabled) makes of a sample's prompt, before any training.

Training loss says how hard a sample is to fit; these say how the prompt itself reads to the model:
`q_nll` the question's mean token surprisal (its log perplexity), `q_top` the mean of its `TOP` most surprising
tokens (a few garbled words hide in a mean), `a_loss` the answer's loss given the prompt, `a_alone` the answer's
loss given only the bare chat template, and `ifd` = a_loss / a_alone (instruction-following difficulty, Li et al.
2023: above 1 the prompt makes the answer harder to predict). One forward per sample and prompt version, no grad.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

INPUT_SIGNALS = ("q_nll", "q_top", "a_loss", "a_alone", "ifd")
TOP = 5


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) surprisal -log p(token t | tokens < t); position 0 has no prediction and is 0."""
    nll = F.cross_entropy(logits[:, :-1, :].transpose(1, 2).float(), input_ids[:, 1:], reduction="none")
    return F.pad(nll, (1, 0))


def span_stats(nll: torch.Tensor, mask: torch.Tensor, top: int = TOP) -> tuple[list[float | None], list[float | None]]:
    """Per row: the mean of `nll` over `mask`, and the mean of its `top` largest values there (all of them when the
    span is shorter); None for an empty span."""
    means, tops = [], []
    for row, m in zip(nll, mask):
        values = row[m.bool()]
        if values.numel() == 0:
            means.append(None)
            tops.append(None)
            continue
        means.append(float(values.mean()))
        tops.append(float(values.topk(min(top, values.numel())).values.mean()))
    return means, tops


def ifd(a_loss: float | None, a_alone: float | None) -> float | None:
    """L(answer | prompt) / L(answer); None when either is missing or the answer alone is certain (L = 0)."""
    if a_loss is None or a_alone is None or not math.isfinite(a_loss) or not math.isfinite(a_alone) or a_alone <= 0:
        return None
    return a_loss / a_alone


def _question_span(tokenizer, text: str, question: str) -> tuple[list[int], list[bool]]:
    """Token ids of `text` and which of them fall inside the question's characters (its last occurrence: the
    template puts the user turn after the system prompt, which may quote it)."""
    start = text.rfind(question) if question else -1
    end = start + len(question)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = enc["input_ids"]
    if start < 0:
        return ids, [False] * len(ids)
    if "offset_mapping" in enc:
        return ids, [a < end and b > start and b > a for a, b in enc["offset_mapping"]]
    # A slow tokenizer: the tokens of the text before the question, and of the text through its end, bound it.
    before = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
    through = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
    return ids, [before <= i < through for i in range(len(ids))]


def _encode(tokenizer, system: str, question: str, target: str) -> tuple[list[int], list[bool], list[bool]]:
    from adapters.train import prompt_text

    ids, in_question = _question_span(tokenizer, prompt_text(tokenizer, system, question), question)
    answer = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    return ids + answer, in_question + [False] * len(answer), [False] * len(ids) + [True] * len(answer)


def _batch(rows: list[tuple[list[int], list[bool], list[bool]]], pad_id: int):
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    q_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    a_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, q, a) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        q_mask[i, : len(row)] = torch.tensor(q)
        a_mask[i, : len(row)] = torch.tensor(a)
    return ids, attention, q_mask, a_mask


def _scored_only(model):
    """(decoder, output head) when the model's logits are the head applied to the decoder's last hidden state, so
    the head can be applied to the scored positions alone; None otherwise (e.g. logit soft-capping)."""
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    config = getattr(model, "config", None)
    if not callable(get_decoder) or not callable(get_head) or getattr(config, "final_logit_softcapping", None):
        return None
    decoder, head = get_decoder(), get_head()
    return (decoder, head) if decoder is not None and isinstance(head, torch.nn.Linear) else None


@contextmanager
def _grab(layer):
    """{"h": the hidden states entering `layer`} after a forward inside (an empty dict without a layer)."""
    box: dict[str, torch.Tensor] = {}
    if layer is None:
        yield box
        return

    def hook(module, args, kwargs):
        box["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def _forward(model, rows: list[tuple[list[int], list[bool], list[bool]]], pad_id: int, prefix=None):
    """Token surprisal at the question and answer positions (0 elsewhere), and the two masks. The vocabulary head,
    a fifth of a small model's forward, runs only where a token is scored; with `prefix` (`_prefix` of the rows'
    shared opening, e.g. the system prompt) the rows start after it, from its cached keys and values."""
    if prefix is not None:
        n = prefix[0]
        rows = [(ids[n:], q[n:], a[n:]) for ids, q, a in rows]
    ids, attention, q_mask, a_mask = _batch(rows, pad_id)
    device = next(model.parameters()).device
    split = _scored_only(model)
    if split is None:
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        return token_nll(logits, ids.to(device)).cpu(), q_mask, a_mask
    decoder, head = split
    ids, attention = ids.to(device), attention.to(device)
    if prefix is None:
        hidden = decoder(input_ids=ids, attention_mask=attention).last_hidden_state[:, :-1]
        targets, scored = ids[:, 1:], (q_mask | a_mask)[:, 1:].to(device)  # token t+1 is predicted at position t
    else:
        n, cache, last = prefix[:3]
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones((len(rows), n), dtype=attention.dtype, device=device), attention], dim=1)
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=True, **{_cache_arg(decoder): cache}).last_hidden_state
        # The first token after the prefix is predicted from the prefix's last position.
        hidden = torch.cat([last.expand(len(rows), 1, -1), hidden[:, :-1]], dim=1)
        targets, scored = ids, (q_mask | a_mask).to(device)
    nll = torch.zeros(scored.shape, dtype=torch.float32, device=device)
    nll[scored] = F.cross_entropy(head(hidden[scored]).float(), targets[scored], reduction="none")
    if prefix is None:
        nll = F.pad(nll, (1, 0))
    return nll.cpu(), q_mask, a_mask


def _hand_over(put, keys: list[str], ids: list[list[int]], prefix, states: torch.Tensor) -> None:
    """put(key, ids, states) per row of a batch whose rows may start after a shared prefix (its states then first)."""
    n = 0 if prefix is None else prefix[0]
    for j, (key, row) in enumerate(zip(keys, ids)):
        own = states[j, : len(row) - n]
        put(key, row, own if prefix is None else torch.cat([prefix[3][0], own], dim=0))


MIN_PREFIX = 8  # shorter shared openings are not worth a cache


def _prefix(model, rows: list[tuple[list[int], list[bool], list[bool]]], layer=None):
    """(length, cached keys and values, last hidden state, the states entering `layer` or None) of the longest
    opening every row shares before its first scored token, run once; None when it is short or the model cannot be
    split into decoder and head."""
    split = _scored_only(model)
    if split is None or not rows:
        return None
    first = [ids[: next((i for i, (q, a) in enumerate(zip(qs, as_)) if q or a), len(ids))] for ids, qs, as_ in rows]
    n = 0
    while all(len(f) > n for f in first) and len({f[n] for f in first}) == 1:
        n += 1
    if n < MIN_PREFIX:
        return None
    device = next(model.parameters()).device
    with _grab(layer) as grabbed:
        out = split[0](input_ids=torch.tensor([first[0][:n]], device=device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return None if cache is None else (n, cache, out.last_hidden_state[:, -1:], grabbed.get("h"))


def _cache_arg(module) -> str:
    """transformers 5 renamed the `past_key_values` argument to `cache` (5.24 warns about the old name)."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@torch.no_grad()
def input_signals(model, tokenizer, prompts: list[tuple[str, str, str, str]], batch_size: int,
                  states_to=None) -> dict[str, dict[str, float | None]]:
    """Key -> INPUT_SIGNALS for each (key, system, question, target), with `model` as given (the caller disables
    the adapter). Batches are formed by length, so padding costs little and the result does not depend on order.
    `states_to` = (a decoder layer, put): put(key, token ids, the (length, hidden) states entering that layer) is
    called for each prompt + target, so a cache of frozen layers (adapters.frozen) need not run them again."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    full = {k: _encode(tokenizer, s, q, t) for k, s, q, t in prompts}
    target_of = {k: t for k, _, _, t in prompts}
    # The answer alone depends on the target only: a task with few distinct answers (labels, places) pays little.
    alone = {t: _encode(tokenizer, "", "", t) for t in dict.fromkeys(target_of.values())}
    out: dict[str, dict[str, float | None]] = {}
    try:
        a_alone: dict[str, float | None] = {}
        targets = sorted(alone, key=lambda t: (len(alone[t][0]), t))
        for i in range(0, len(targets), batch_size):
            nll, _, a_mask = _forward(model, [alone[t] for t in targets[i : i + batch_size]], pad)
            a_alone.update(zip(targets[i : i + batch_size], span_stats(nll, a_mask)[0]))
        order = sorted(full, key=lambda k: (len(full[k][0]), k))
        layer, put = states_to or (None, None)
        prefix = _prefix(model, list(full.values()), layer)  # the system prompt and chat template, once for all
        for i in range(0, len(order), batch_size):
            keys = order[i : i + batch_size]
            with _grab(layer) as grabbed:
                nll, q_mask, a_mask = _forward(model, [full[k] for k in keys], pad, prefix)
            if put is not None:
                _hand_over(put, keys, [full[k][0] for k in keys], prefix, grabbed["h"])
            q_nll, q_top = span_stats(nll, q_mask)
            a_loss, _ = span_stats(nll, a_mask)
            for j, k in enumerate(keys):
                alone_k = a_alone[target_of[k]]
                out[k] = {"q_nll": q_nll[j], "q_top": q_top[j], "a_loss": a_loss[j], "a_alone": alone_k, "ifd": ifd(a_loss[j], alone_k)}
    finally:
        model.train(was_training)
    return out
