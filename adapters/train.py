"""The training loop on `accelerate.Accelerator`, with per-sample signals from the same forward and backward,
and held-out evaluation by batched greedy generation (adapters/generate.py).
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from adapters.batching import OVERHEAD_TOKENS, head_rows, last_layer_parts, length_chunks, read_rows
from adapters.lora import PerSampleGradNorm, naive_grad_norms
from adapters.signals import TOKEN_STATS, per_sample_loss, scored_loss, scored_positions, scored_stats


@dataclass(frozen=True)
class Item:
    """One sample as it is trained now: its id and its current prompt version."""

    id: str
    system: str
    question: str
    target: str


def prompt_text(tokenizer, system: str, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}] if system else [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models (no chat template) that expect a BOS token get it in the text: prompts are tokenized without
    # special tokens, so that a chat template's own BOS is not doubled.
    bos = tokenizer.bos_token if _adds_bos(tokenizer) else ""
    return bos + (f"System: {system}\n" if system else "") + f"User: {question}\nAssistant: "


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def encode(tokenizer, item: Item) -> tuple[list[int], list[int]]:
    """Token ids of prompt + target (+ end of turn) and labels that are -100 outside the target."""
    prompt_ids = tokenizer(prompt_text(tokenizer, item.system, item.question), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(item.target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def batches(items: list[Item], batch_size: int, seed: int) -> list[list[Item]]:
    order = list(items)
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _rows(stats: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per-sample dicts of the token statistics of one chunk."""
    columns = {k: stats[k].tolist() for k in TOKEN_STATS}
    return [{k: columns[k][i] for k in TOKEN_STATS} for i in range(len(columns[TOKEN_STATS[0]]))]


def _gap(full: torch.Tensor, fast) -> float:
    """How far the logits `fast()` gives are from `full` when beyond float rounding (inf if it fails), else 0."""
    try:
        got = fast()
    except (RuntimeError, TypeError, IndexError, ValueError, AttributeError):
        return float("inf")
    if got.shape != full.shape:
        return float("inf")
    gap = float((full - got).abs().max()) if full.numel() else 0.0
    return gap if gap > 1e-3 * max(1.0, float(full.abs().max()) if full.numel() else 1.0) else 0.0


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row: the run cannot make progress and stops with a clear message."""


@dataclass
class StepSignals:
    loss: float
    correct: bool
    grad_norm: float | None
    stats: dict[str, float] = field(default_factory=dict)  # adapters.signals.TOKEN_STATS, from the same forward


class Trainer:
    """Holds the model, optimizer and accelerator; the graph's nodes call its methods."""

    def __init__(self, model, tokenizer, lr: float, weight_decay: float = 0.0, train_weights: bool = True,
                 grad_norm: str = "fast", max_nonfinite_steps: int = 3, max_grad_norm: float | None = None,
                 frozen_cache_mb: float | None = 2048):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.tokenizer = tokenizer
        self.train_weights = train_weights
        if grad_norm not in ("fast", "naive", "off"):
            raise ValueError(f"grad_norm={grad_norm!r} must be 'fast', 'naive' or 'off'")
        self.grad_norm = grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.grad_norms = PerSampleGradNorm(unwrapped)
        self.head = unwrapped.get_output_embeddings()
        self.frozen = None  # adapters.frozen.FrozenStates, when the bottom layers are frozen and caching is on
        self.frozen_note: str | None = None  # why a cache that was asked for is off
        self.read_parts = last_layer_parts(unwrapped)  # run at the answer positions only (adapters.batching.read_rows)
        self._fast_checked = False
        if frozen_cache_mb is not None:
            from adapters.frozen import FrozenStates

            try:
                self.frozen = FrozenStates(unwrapped, frozen_cache_mb)
            except ValueError as e:
                self.frozen_note = str(e)
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self.max_nonfinite_steps = max_nonfinite_steps
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: float | None = None  # the update's gradient norm before clipping (with max_grad_norm)
        self.micro_batch: int | None = None  # set after an out-of-memory error: samples per forward / backward
        self.oom_halvings = 0
        # Several processes (torchrun / accelerate launch): each takes a slice of every batch, gradients are
        # averaged by DDP, and signals are gathered so every process sees all of them.
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _gather(self, pairs: list) -> list:
        if self.world == 1:
            return pairs
        from accelerate.utils import gather_object

        return gather_object(pairs)

    def step(self, batch_items: list[Item]) -> dict[str, StepSignals]:
        """One LoRA step on a batch; returns each sample's loss (before the update), correctness and C2.

        On out-of-memory the batch is split into micro-batches (halved until it fits; remembered for later
        steps) whose gradients accumulate into the same single update, so the result does not change.
        """
        local = batch_items[self.rank :: self.world]
        while True:
            try:
                return self._step(batch_items, local)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                size = self.micro_batch or max(1, len(local))
                if size <= 1:
                    raise
                self.micro_batch = size // 2
                self.oom_halvings += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def _step(self, batch_items: list[Item], local: list[Item]) -> dict[str, StepSignals]:
        n_global = len(batch_items)
        # A process with no sample of a short last batch still joins the gradient all-reduce, with zero weight.
        idle = not local
        chunks = self._chunks(local or batch_items[:1])
        order = [] if idle else [it for part, _ in chunks for it in part]  # chunks group the batch by length
        losses, correct, norms, stats = [], [], [], []
        if not self.train_weights:
            with torch.no_grad():
                for part, enc in chunks:
                    logits, gold, rows = self._scored(part, enc)
                    l, c = scored_loss(logits, gold, rows, len(part))
                    losses += l.tolist()
                    correct += c.tolist()
                    stats += _rows(scored_stats(logits, gold, rows, len(part)))
            return self._collect(order, losses, correct, [None] * len(order), stats)
        self.model.train()
        for part, enc in chunks:
            naive = self._naive_norms(enc) if self.grad_norm == "naive" and not idle else None
            with self.grad_norms.capture() if self.grad_norm == "fast" else nullcontext():
                logits, gold, rows = self._scored(part, enc)
                chunk_losses, chunk_correct = scored_loss(logits, gold, rows, len(part))
                # Sum over this process's samples, scaled so that DDP's average over processes is the batch mean.
                loss = chunk_losses.sum() * (0.0 if idle else self.world / n_global)
                finite = torch.isfinite(loss).float().reshape(1)
                if self.world > 1:
                    finite = self.accelerator.gather(finite).min().reshape(1)
                losses += chunk_losses.detach().tolist()
                correct += chunk_correct.tolist()
                stats += _rows(scored_stats(logits.detach(), gold, rows, len(part)))
                if not bool(finite.item()):
                    return self._skip(order, losses, correct, stats)
                self.accelerator.backward(loss)
            if self.grad_norm == "fast":
                norms += self.grad_norms.norms(scale=n_global / self.world).tolist()
            else:
                norms += naive.tolist() if naive is not None else [None] * len(chunk_losses)
        self.nonfinite_in_a_row = 0
        if self.max_grad_norm is not None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.last_grad_norm = float(self.accelerator.clip_grad_norm_(params, self.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        return self._collect(order, losses, correct, norms, stats)

    def _chunks(self, items: list[Item]) -> list[tuple[list[Item], dict[str, torch.Tensor]]]:
        """The batch in forwards of similar length (at most `micro_batch` samples each after an out-of-memory
        error): fewer padded tokens, the same update."""
        encoded = [encode(self.tokenizer, it) for it in items]
        overhead = OVERHEAD_TOKENS.get(self.accelerator.device.type, OVERHEAD_TOKENS["cuda"])
        if self.world > 1:  # every process must make as many forwards (their collectives pair up): in order
            size = self.micro_batch or len(items)
            groups = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
        else:
            groups = length_chunks([len(ids) for ids, _ in encoded], overhead, self.micro_batch)
        out = []
        for idx in groups:
            enc = collate([encoded[i] for i in idx], self.tokenizer.pad_token_id)
            out.append(([items[i] for i in idx], {k: v.to(self.accelerator.device) for k, v in enc.items()}))
        return out

    def _scored(self, part: list[Item], enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, vocab) logits at the answer positions of a chunk, their gold tokens and the row each belongs to; the
        frozen bottom layers are read from the cache when there is one, and the last layer's position-wise parts
        run at the answer positions only."""
        rows, cols, gold = scored_positions(enc["labels"])
        self._check_fast_paths(part, enc)
        return self._logits(part, enc, rows, cols, bool(self.read_parts), self.frozen is not None), gold, rows

    def _logits(self, part, enc, rows, cols, trim: bool, cached: bool) -> torch.Tensor:
        with head_rows(self.head, rows, cols), read_rows(self.read_parts if trim else [], rows, cols):
            if not cached:
                return self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            hidden = self.frozen.states([it.id for it in part], enc["input_ids"], enc["attention_mask"])
            with self.frozen.feeding(hidden):
                return self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits

    def _check_fast_paths(self, part: list[Item], enc: dict[str, torch.Tensor]) -> None:
        """Once per trainer, on the first sample: the last layer's trim, then the frozen-layer cache, must give the
        full forward's logits; one that does not (a model whose layers cannot be cut this way) is turned off with a
        note, and training runs the plain way."""
        if self._fast_checked or (self.frozen is None and not self.read_parts):
            return
        self._fast_checked = True
        one = {k: v[:1, : int(enc["attention_mask"][0].sum())] for k, v in enc.items()}  # the chunk's first sample
        first = part[:1]
        rows, cols, _ = scored_positions(one["labels"])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                full = self._logits(first, one, rows, cols, False, False)
                if self.read_parts and _gap(full, lambda: self._logits(first, one, rows, cols, True, False)):
                    print("note: the last layer runs at every position (cutting it to the answer positions changed "
                          "the logits)", flush=True)
                    self.read_parts = []
                if self.frozen is not None:
                    gap = _gap(full, lambda: self._logits(first, one, rows, cols, bool(self.read_parts), True))
                    if gap:
                        self.frozen_note = f"the cached bottom layers gave logits {gap:.2g} away from the full forward's"
                        print(f"note: frozen-layer cache off ({self.frozen_note}); training runs every layer", flush=True)
                        self.frozen.close()
                        self.frozen = None
        finally:
            self.model.train(was_training)

    def _skip(self, local, losses, correct, stats) -> dict[str, StepSignals]:
        # A non-finite loss would poison the adapter; every process skips the update together.
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLoss(
                f"training stopped: {self.nonfinite_in_a_row} steps in a row had a non-finite loss "
                f"({self.skipped_steps} skipped in all); lower train.lr or check the data, then start again")
        return self._collect(local, losses, correct, [None] * len(local), stats)

    def _collect(self, local: list[Item], losses, correct, norms, stats) -> dict[str, StepSignals]:
        mine = [(it.id, StepSignals(float(l), bool(c), None if n is None else float(n), st))
                for it, l, c, n, st in zip(local, losses, correct, norms, stats)]
        return dict(self._gather(mine))

    def _naive_norms(self, enc) -> torch.Tensor:
        """Reference C2: one forward and backward per sample (B times the cost; for benchmarks and checks)."""
        def one(i):
            n = int(enc["attention_mask"][i].sum())
            logits = self.model(input_ids=enc["input_ids"][i : i + 1, :n], attention_mask=enc["attention_mask"][i : i + 1, :n]).logits
            return per_sample_loss(logits, enc["labels"][i : i + 1, :n])[0][0]

        norms = naive_grad_norms(self.model, one, enc["input_ids"].shape[0])
        return norms.detach()

    def input_signals(self, prompts: list[tuple[str, str, str, str]], batch_size: int,
                      trained: set[str] = frozenset()) -> dict[str, dict[str, float | None]]:
        """adapters.inputs.input_signals of (key, system, question, target) under the base model: the adapter is off
        for the pass. Every process measures its share; all get every result. For the keys in `trained` (training
        samples' ids, on the prompt they will train on next) the frozen bottom layers' states are kept, so the next
        epoch does not run those layers again."""
        from adapters.inputs import input_signals

        model = self.accelerator.unwrap_model(self.model)
        off = model.disable_adapter() if callable(getattr(model, "disable_adapter", None)) else nullcontext()
        states_to = None
        if self.frozen is not None and trained:
            frozen = self.frozen
            states_to = (frozen.layers[frozen.k], lambda key, ids, states: key in trained and frozen.offer(key, ids, states))
        with off:
            mine = input_signals(model, self.tokenizer, prompts[self.rank :: self.world], batch_size, states_to)
        return dict(self._gather(sorted(mine.items())))

    def train_epoch(self, items: list[Item], batch_size: int, seed: int, progress=None) -> dict[str, StepSignals]:
        out: dict[str, StepSignals] = {}
        from nslora.core.interrupt import Interrupted, stop_requested

        for batch in batches(items, batch_size, seed):
            out.update(self.step(batch))
            if stop_requested():
                raise Interrupted()
            if progress is not None:
                progress.update(len(batch))
        return out

    def generate(self, prompts: list[tuple[str, str]], max_new_tokens: int, batch_size: int, progress=None) -> list[str]:
        """Greedy answers to (system, question) prompts; every process answers its share of the batches."""
        from adapters.generate import greedy_replies

        model = self.accelerator.unwrap_model(self.model)
        mine = greedy_replies(model, self.tokenizer, prompts, max_new_tokens, batch_size, progress, self.rank, self.world)
        return [reply for _, reply in sorted(self._gather(mine))]
