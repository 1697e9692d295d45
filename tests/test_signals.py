"""Signals as pure functions, and fast per-sample LoRA gradient norms against one backward per sample."""

import math

import pytest
import torch

from adapters.lora import PerSampleGradNorm, naive_grad_norms, wrap
from adapters.signals import is_saturated, loss_change_ratio, per_sample_loss
from policies.base import SampleView, budget_count
from policies.signal import LossRatioPolicy
from router.config import LoraConfig

torch.set_num_threads(1)


def test_per_sample_loss_matches_reference_and_correct_flag():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), -100)
    labels[0, 3:] = torch.tensor([1, 2, 3])
    labels[1, 2:4] = torch.tensor([4, 5])
    labels[2, 5] = 7
    loss, correct = per_sample_loss(logits, labels)
    for i in range(3):
        pos = [t for t in range(1, 6) if labels[i, t] != -100]
        ref = sum(torch.nn.functional.cross_entropy(logits[i, t - 1][None], labels[i, t][None]) for t in pos) / len(pos)
        assert loss[i].item() == pytest.approx(ref.item(), rel=1e-5)
    assert not correct.any()
    # Make sample 1's answer tokens the argmax: only it becomes correct.
    logits[1, 1, 4] = 100.0
    logits[1, 2, 5] = 100.0
    assert per_sample_loss(logits, labels)[1].tolist() == [False, True, False]


@pytest.mark.parametrize("now,before,expected", [(0.5, 1.0, -0.5), (1.0, 1.0, 0.0), (1.5, 1.0, 0.5), (1.0, None, None), (1.0, math.nan, None)])
def test_loss_change_ratio(now, before, expected):
    got = loss_change_ratio(now, before)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_saturation_rule_uses_only_misclassified_and_window():
    epochs = [{"a": -0.5, "b": -0.5, "c": -0.9, "d": -0.9}, {"a": -0.01, "b": 0.005, "c": -0.9, "d": -0.8}]
    assert is_saturated(epochs, {"a", "b"}, k=0.02, window=1) == (True, pytest.approx(0.0075))
    assert is_saturated(epochs, {"a", "b", "c", "d"}, k=0.02, window=1) == (False, pytest.approx(0.405))
    sat, median = is_saturated(epochs, {"a", "b"}, k=0.02, window=2)
    assert sat is False and median == pytest.approx(0.255)
    assert is_saturated(epochs[:1], {"a"}, k=1.0, window=2) == (False, None)
    assert is_saturated(epochs, set(), k=1.0, window=1) == (False, None)


@pytest.mark.parametrize("n,p,k", [(10, 0.1, 1), (10, 0.25, 2), (3, 0.1, 1), (0, 0.5, 0), (7, 1.0, 7)])
def test_budget_count(n, p, k):
    assert budget_count(n, p) == k


def _views(c1):
    return [SampleView(id=i, epoch=2, loss=1.0, c1=c, c2=None, correct=False) for i, c in c1.items()]


def test_loss_ratio_routes_largest_c1_and_breaks_ties_by_id():
    c1 = {"a": -0.5, "b": 0.1, "c": -0.01, "d": None, "e": 0.1}
    assert LossRatioPolicy(p=0.4).calibrate(_views(c1)).chosen_ == {"b", "e"}
    assert LossRatioPolicy(p=1.0).calibrate(_views({"a": -0.5, "d": None})).chosen_ == {"a", "d"}


def _tiny_lora_model(targets, dropout=0.0, vocab=50, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = wrap(LlamaForCausalLM(cfg), LoraConfig(r=4, alpha=8, dropout=dropout, target_modules=targets), seed=0)
    # peft starts B at zero, which makes A's gradient zero; random B exercises both factors.
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]])
@pytest.mark.parametrize("batch,lengths", [(1, [7]), (3, [9, 4, 6]), (5, [12, 12, 3, 8, 2])])
def test_fast_grad_norms_equal_naive(targets, batch, lengths):
    model = _tiny_lora_model(targets)
    width = max(lengths)
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(1, 50, (batch, width), generator=g)
    attn = torch.zeros(batch, width, dtype=torch.long)
    labels = torch.full((batch, width), -100)
    for i, n in enumerate(lengths):
        attn[i, :n] = 1
        ids[i, n:] = 0  # padding
        labels[i, max(1, n - 3) : n] = ids[i, max(1, n - 3) : n]
    tracker = PerSampleGradNorm(model)
    with tracker.capture():
        losses, _ = per_sample_loss(model(input_ids=ids, attention_mask=attn).logits, labels)
        losses.mean().backward()
    fast = tracker.norms(scale=batch)
    model.zero_grad()

    def one(i):
        return per_sample_loss(model(input_ids=ids[i : i + 1, : lengths[i]], attention_mask=attn[i : i + 1, : lengths[i]]).logits,
                               labels[i : i + 1, : lengths[i]])[0][0]

    naive = naive_grad_norms(model, one, batch)
    assert torch.all(naive > 0)
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-6)


def test_trainer_fast_and_naive_modes_agree_and_off_gives_none():
    import copy

    from adapters.train import Item, Trainer
    from tiny import make_tiny

    base, tok = make_tiny()
    items = [Item(f"s{i}", "Answer with one word.", "Mary moved to the bathroom. " * (i + 1) + "Where is Mary?", "bathroom")
             for i in range(4)]
    results = {}
    for mode in ("fast", "naive", "off"):
        model = _randomise_b(wrap(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0))
        results[mode] = Trainer(model, tok, lr=1e-2, grad_norm=mode).step(items)
    for i in results["fast"]:
        assert results["fast"][i].loss == pytest.approx(results["naive"][i].loss, rel=1e-6)
        assert results["fast"][i].grad_norm == pytest.approx(results["naive"][i].grad_norm, rel=1e-4)
        assert results["off"][i].grad_norm is None and results["off"][i].loss == pytest.approx(results["fast"][i].loss, rel=1e-6)


def _randomise_b(model):
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    return model


def test_nonfinite_losses_are_skipped_then_stop_the_run(monkeypatch):
    import adapters.train as train_mod
    from adapters.train import Item, NonFiniteLoss, Trainer
    from tiny import make_tiny

    model, tok = make_tiny()
    trainer = Trainer(wrap(model, LoraConfig(r=4, target_modules=["q_proj"]), seed=0), tok, lr=1e-2, max_nonfinite_steps=2)
    items = [Item("a", "Answer.", "Where is Mary?", "bathroom"), Item("b", "Answer.", "Where is John?", "garden")]
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    real = train_mod.scored_loss
    monkeypatch.setattr(train_mod, "scored_loss", lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    signals = trainer.step(items)
    assert trainer.skipped_steps == 1 and all(s.grad_norm is None for s in signals.values())
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)  # no update
    with pytest.raises(NonFiniteLoss, match="2 steps in a row had a non-finite loss"):
        trainer.step(items)
    monkeypatch.setattr(train_mod, "scored_loss", real)
    trainer.nonfinite_in_a_row = 0
    trainer.step(items)
    assert trainer.nonfinite_in_a_row == 0 and trainer.skipped_steps == 2


def test_out_of_memory_halves_the_micro_batch_and_gives_the_same_step():
    import copy

    from adapters.train import Item, Trainer
    from tiny import make_tiny

    base, tok = make_tiny()
    items = [Item(f"s{i}", "Answer with one word.", "Mary moved to the bathroom. " * (i + 1) + "Where is Mary?", "bathroom")
             for i in range(5)]
    trainers = []
    for _ in range(2):
        model = _randomise_b(wrap(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0))
        trainers.append(Trainer(model, tok, lr=1e-2))
    plain, squeezed = trainers
    forward = squeezed.model.forward

    def small_batches_only(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return forward(*args, **kwargs)

    squeezed.model.forward = small_batches_only
    a, b = plain.step(items), squeezed.step(items)
    assert squeezed.micro_batch == 2 and squeezed.oom_halvings == 1  # 5 fails, halved to chunks of 2, 2, 1
    for i in a:
        assert a[i].loss == pytest.approx(b[i].loss, rel=1e-5) and a[i].correct == b[i].correct
        assert a[i].grad_norm == pytest.approx(b[i].grad_norm, rel=1e-4)
    pa = dict(plain.model.named_parameters())
    for n, p in squeezed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, pa[n], rtol=1e-4, atol=1e-6)


def test_max_grad_norm_clips_the_update_but_not_c2():
    import copy

    from adapters.train import Item, Trainer
    from tiny import make_tiny

    model, tok = make_tiny()
    base = wrap(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0)
    items = [Item("a", "Answer.", "Where is Mary?", "bathroom"), Item("b", "Answer.", "Where is John?", "garden")]
    seen, signals = {}, {}
    for limit in (None, 1e-3):
        trainer = Trainer(copy.deepcopy(base), tok, lr=1e-2, max_grad_norm=limit)
        step = trainer.optimizer.step

        def record(*a, limit=limit, trainer=trainer, step=step, **k):
            grads = [p.grad for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
            seen[limit] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            return step(*a, **k)

        trainer.optimizer.step = record
        signals[limit] = trainer.step(items)
        if limit is not None:
            assert trainer.last_grad_norm == pytest.approx(seen[None], rel=1e-5)  # the norm before clipping
    assert seen[None] > 1e-3 and seen[1e-3] == pytest.approx(1e-3, rel=1e-3)
    assert {k: s.grad_norm for k, s in signals[None].items()} == {k: s.grad_norm for k, s in signals[1e-3].items()}
