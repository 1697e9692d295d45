"""LoRA through peft, and exact per-sample gradient norms of the LoRA parameters from one backward.

Each LoRA factor is a plain `nn.Linear` (A: in→r, B: r→out). For a linear layer the gradient of sample i is
Σ_t g_{i,t} a_{i,t}ᵀ, so with the layer input a and output gradient g captured by hooks, each sample's
squared norm is ‖a_iᵀ g_i‖². With r ≪ in, out that (B × in × r) product is tiny, so the norms cost a few
small einsums instead of one backward per sample.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from adapters.config import LoraConfig


def wrap(model, cfg: LoraConfig, seed: int):
    import peft

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        sample = sorted(n for n in names if "proj" in n or "fc" in n)[:8]
        raise ValueError(f"lora.target_modules: {missing} not in the model; modules it has include {sample}")
    layers = None
    if cfg.top_layers is not None:
        total = getattr(model.config, "num_hidden_layers", None)
        if total is None or cfg.top_layers > total:
            raise ValueError(f"lora.top_layers={cfg.top_layers} but the model has {total} layers; give at most {total}, or null")
        layers = list(range(total - cfg.top_layers, total))
    torch.manual_seed(seed)
    pcfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=layers,
    )
    return peft.get_peft_model(model, pcfg)


def lora_factors(model) -> list[nn.Linear]:
    """Every LoRA A and B linear of the active adapters."""
    out = []
    for module in model.modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict):
            for name in module.active_adapters:
                if name in module.lora_A:
                    out += [module.lora_A[name], module.lora_B[name]]
    return out


class PerSampleGradNorm:
    """Collects Σ_layers ‖∇_W L_i‖² per sample while the normal backward runs.

    Use as `with tracker.capture(): loss.backward()`; then `tracker.norms(scale)` gives ‖∇L_i‖ where
    `scale` undoes the batch reduction (B for a mean over samples).
    """

    def __init__(self, model):
        self.layers = lora_factors(model)
        self._sq: torch.Tensor | None = None
        self._handles = []

    def _forward_hook(self, module, inputs, output):
        if not output.requires_grad:
            return
        a = inputs[0].detach()

        def grad_hook(g):
            # Per-sample weight gradient of this factor, then its squared Frobenius norm.
            per_sample = torch.einsum("bti,bto->bio", a.float(), g.float()) if a.dim() == 3 else torch.einsum("bi,bo->bio", a.float(), g.float())
            sq = per_sample.pow(2).sum(dim=(1, 2))
            self._sq = sq if self._sq is None else self._sq + sq

        output.register_hook(grad_hook)

    @contextmanager
    def capture(self):
        self._sq = None
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []

    def norms(self, scale: float = 1.0) -> torch.Tensor:
        if self._sq is None:
            raise RuntimeError("no gradient was captured; run forward and backward inside capture()")
        return self._sq.sqrt() * scale


def naive_grad_norms(model, per_sample_losses_fn, n: int) -> torch.Tensor:
    """Reference: one backward per sample (slow; for tests and benchmarks)."""
    params = [p for m in lora_factors(model) for p in m.parameters() if p.requires_grad]
    out = []
    for i in range(n):
        loss_i = per_sample_losses_fn(i)
        grads = torch.autograd.grad(loss_i, params, allow_unused=True)
        out.append(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return torch.stack(out)
