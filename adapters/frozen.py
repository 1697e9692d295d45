"""The frozen bottom layers' outputs, computed once per sample and prompt version and reused every epoch.

With LoRA on the top layers only (`lora.top_layers`), the embeddings and the layers below the first adapted one
never change, so the hidden state entering that layer is a function of the prompt's tokens alone. A training step
then runs only the top layers: the bottom ones are skipped and their cached output is fed in. A rewrite changes the
tokens, which is how an entry goes stale: each sample keeps one entry, replaced when its tokens differ.

Exact (within float rounding: a sample's states do not depend on its batch-mates, since padding is on the right and
attention is causal), provided the bottom is deterministic: caching is refused when a bottom layer has dropout,
and `Trainer` compares the cached and the full forward once before relying on it. Entries live in memory up to a
budget, then in files under a private temporary folder, removed when the cache is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from contextlib import ExitStack, contextmanager

import numpy as np
import torch


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


def frozen_split(model) -> tuple[torch.nn.ModuleList, int] | None:
    """(the decoder's layers, how many at the bottom have nothing to train) when that is at least one layer and the
    embeddings are frozen too; None when the model's layers cannot be found or nothing at the bottom is frozen."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) < 2:
        return None
    embed = getattr(decoder, "embed_tokens", None)
    if embed is None or any(p.requires_grad for p in embed.parameters()):
        return None
    k = 0
    while k < len(layers) - 1 and not any(p.requires_grad for p in layers[k].parameters()):
        k += 1
    return (layers, k) if k else None


def _stochastic(layers: torch.nn.ModuleList, k: int, config) -> bool:
    """Whether the bottom k layers could differ between two training forwards (dropout)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for layer in layers[:k] for m in layer.modules()):
        return True
    return any(float(getattr(config, name, 0) or 0) > 0 for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop"))


class FrozenStates:
    """Per sample id: its token ids and the hidden states entering the first trained layer, (length, hidden)."""

    def __init__(self, model, budget_mb: float):
        split = frozen_split(model)
        if split is None:
            raise ValueError("the model has no frozen bottom layers to cache (LoRA adapts every layer)")
        self.layers, self.k = split
        if _stochastic(self.layers, self.k, getattr(model, "config", None)):
            raise ValueError("the frozen bottom layers use dropout, so their outputs differ between epochs")
        self.decoder = model.get_decoder()
        self.budget = int(budget_mb * 2**20)
        self.in_memory = 0
        self.entries: dict[str, tuple[tuple[int, ...], torch.Tensor | str]] = {}
        self.spill_dir: str | None = None
        self.computed = 0  # samples whose bottom was run (misses), for benchmarks and tests
        self._cleanup = None

    def __len__(self) -> int:
        return len(self.entries)

    def _get(self, key: str) -> torch.Tensor:
        value = self.entries[key][1]
        return torch.from_numpy(np.load(value)) if isinstance(value, str) else value

    def _put(self, key: str, ids: tuple[int, ...], states: torch.Tensor) -> None:
        self._drop(key)
        states = states.detach().to("cpu", copy=True)
        size = states.numel() * states.element_size()
        if self.in_memory + size <= self.budget:
            self.in_memory += size
            self.entries[key] = (ids, states)
            return
        if self.spill_dir is None:
            self.spill_dir = tempfile.mkdtemp(prefix="nslora-frozen-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.spill_dir, True)
        path = os.path.join(self.spill_dir, f"{len(self.entries)}-{abs(hash(key))}.npy")
        np.save(path, states.numpy())
        self.entries[key] = (ids, path)

    def offer(self, key: str, ids: list[int], states: torch.Tensor) -> None:
        """Store states computed elsewhere (the base model's input pass reads every prompt anyway)."""
        self._put(key, tuple(ids), states)

    def _drop(self, key: str) -> None:
        old = self.entries.pop(key, None)
        if old is None:
            return
        if isinstance(old[1], str):
            os.remove(old[1])
        else:
            self.in_memory -= old[1].numel() * old[1].element_size()

    def close(self) -> None:
        self.entries.clear()
        self.in_memory = 0
        if self._cleanup is not None:
            self._cleanup()

    @torch.no_grad()
    def _compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The states entering layer k for a right-padded batch: the bottom runs, the top layers are skipped."""
        from adapters.inputs import _grab

        with _skipped(self.layers[self.k :]), _grab(self.layers[self.k]) as captured:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return captured["h"]

    def states(self, keys: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) states entering layer k for a right-padded batch whose row i is sample keys[i]: cached
        rows are read, the others computed in one pass and stored. Padding positions are zero."""
        lengths = attention_mask.sum(dim=1).tolist()
        ids = [tuple(input_ids[i, :n].tolist()) for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.entries or self.entries[key][0] != ids[i]]
        if missing:
            width = max(lengths[i] for i in missing)
            fresh = self._compute(input_ids[missing, :width], attention_mask[missing, :width])
            for row, i in enumerate(missing):
                self._put(keys[i], ids[i], fresh[row, : lengths[i]])
            self.computed += len(missing)
        out = None
        for i, key in enumerate(keys):
            h = self._get(key)
            if out is None:
                out = torch.zeros((len(keys), input_ids.shape[1], h.shape[-1]), dtype=h.dtype, device=input_ids.device)
            out[i, : lengths[i]] = h.to(input_ids.device)
        return out

    @contextmanager
    def feeding(self, hidden: torch.Tensor):
        """While open, the model's forward skips the bottom layers and layer k receives `hidden` instead."""
        def swap(module, args, kwargs):
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        with ExitStack() as stack:
            stack.enter_context(_skipped(self.layers[: self.k]))
            handle = self.layers[self.k].register_forward_pre_hook(swap, with_kwargs=True)
            stack.callback(handle.remove)
            yield


@contextmanager
def _skipped(layers):
    """The layers return their input unchanged while open (their own forward, or a wrapper's, restored after)."""
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _passthrough
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.forward
            else:
                layer.forward = old
