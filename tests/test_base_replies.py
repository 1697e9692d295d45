"""The untrained model's held-out replies are answered once per shared folder and served only when they are exactly
what generating would give: same base weights, prompts, settings, a zero adapter."""

import json
from types import SimpleNamespace

import peft
import pytest
import torch

from adapters.generate import greedy_replies
from router import base_replies
from tiny import make_tiny

torch.set_num_threads(1)

PROMPTS = [("Answer with one word.", "Mary moved to the bathroom.\nWhere is Mary?"),
           ("Answer with one word.", "John went to the hallway. Sandra got the apple.\nWhere is John?"),
           ("Answer with one word.", "Daniel travelled to the office.\nWhere is Daniel?")]


class Trainer:
    """What base_replies needs of adapters.train.Trainer, counting the generations it is asked for."""

    def __init__(self, model, tokenizer, world=1):
        self.model, self.tokenizer, self.world, self.calls = model, tokenizer, world, 0
        self.accelerator = SimpleNamespace(unwrap_model=lambda m: m)

    def generate(self, prompts, max_new_tokens, batch_size, progress=None):
        self.calls += 1
        return [r for _, r in sorted(greedy_replies(self.model, self.tokenizer, prompts, max_new_tokens, batch_size))]


@pytest.fixture()
def trainer():
    torch.manual_seed(0)
    model, tok = make_tiny()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return Trainer(lora, tok)


def test_a_second_run_reads_the_replies_the_first_generated(trainer, tmp_path):
    first, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    assert not hit and trainer.calls == 1
    assert len(list((tmp_path / base_replies.FOLDER).iterdir())) == 1
    again, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    assert hit and trainer.calls == 1 and again == first
    assert again == trainer.generate(PROMPTS, 4, 2)  # what is served is what generating gives


def test_any_change_to_weights_prompts_or_settings_is_answered_afresh(trainer, tmp_path):
    base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    for prompts, new, batch in [(PROMPTS[:2], 4, 2), (PROMPTS, 5, 2), (PROMPTS, 4, 3)]:
        calls = trainer.calls
        _, hit = base_replies.replies(trainer, prompts, new, batch, tmp_path)
        assert not hit and trainer.calls == calls + 1
    with torch.no_grad():  # one base weight moved by the smallest step: another model
        w = trainer.model.get_base_model().model.embed_tokens.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1e9))
    _, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    assert not hit


def test_a_trained_adapter_or_several_processes_never_use_the_file(trainer, tmp_path):
    base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    with torch.no_grad():
        next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)[0, 0] = 1e-3
    assert not base_replies.adapter_is_zero(trainer.model)
    _, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    assert not hit
    trainer.world = 2
    _, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path / "other")
    assert not hit and not (tmp_path / "other").exists()


def test_a_damaged_file_is_answered_again_and_replaced(trainer, tmp_path):
    first, _ = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
    path = next((tmp_path / base_replies.FOLDER).iterdir())
    for damage in ["{not json", json.dumps({"replies": ["too few"]})]:
        path.write_text(damage)
        got, hit = base_replies.replies(trainer, PROMPTS, 4, 2, tmp_path)
        assert not hit and got == first
        assert json.loads(path.read_text())["replies"] == first
