"""The training and generation fast paths give what the plain paths give: length-grouped forwards, the vocabulary
head and the last layer's position-wise parts on answer positions only, the frozen bottom layers' cache (in memory, spilled to disk, filled by the input
pass, invalidated by a rewrite, refused where inexact) and the held-out prompts' shared opening run once."""

import copy
import itertools
import os

import pytest
import torch

from adapters import batching
from adapters.config import LoraConfig
from adapters.frozen import FrozenStates
from adapters.generate import greedy_replies
from adapters.lora import wrap
from adapters.signals import per_sample_loss
from adapters.train import Item, Trainer, collate, encode
from tiny import make_tiny

torch.set_num_threads(1)

SYSTEM = "Read the story and answer with one word."
STORY = ["Mary moved to the bathroom.", "John went to the hallway.", "Sandra journeyed to the garden.",
         "Daniel travelled to the office.", "John picked up the football."]


def _items(n=10, prefix="s"):
    # Stories of 1..5 sentences: lengths differ, so batches pad and group.
    return [Item(f"{prefix}{i}", SYSTEM, " ".join(STORY[: 1 + i % 5]) + " Where is Mary?", ["bathroom", "hallway"][i % 2])
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny():
    model, tok = make_tiny()
    return model, tok


def _deep(model, top_layers=1, targets=("q_proj", "v_proj")):
    m = wrap(copy.deepcopy(model), LoraConfig(r=4, target_modules=list(targets), top_layers=top_layers), seed=0)
    torch.manual_seed(1)
    for name, p in m.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)  # a non-zero adapter, so the top layers matter
    return m


def test_length_chunks_cover_the_batch_once_at_the_least_cost():
    def cost(chunks, lengths, overhead):
        return sum(len(c) * max(lengths[i] for i in c) + overhead for c in chunks)

    for lengths in ([5], [3, 9, 4, 9, 2], [10, 10, 10], [1, 50, 2, 49, 3, 48, 4]):
        for overhead in (0, 5, 1000):
            chunks = batching.length_chunks(lengths, overhead)
            assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
            # Against every split of the sorted order into contiguous runs.
            order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
            best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, overhead)
                       for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
            assert cost(chunks, lengths, overhead) == best
    assert len(batching.length_chunks([1, 50, 2, 49], 1000)) == 1  # a big overhead: one forward
    assert all(len(c) <= 2 for c in batching.length_chunks([4] * 7, 0, max_rows=2))


def test_head_rows_give_the_full_logits_at_the_answer_positions(tiny):
    model, tok = tiny
    enc = collate([encode(tok, it) for it in _items(4)], tok.pad_token_id)
    from adapters.signals import scored_positions

    rows, cols, _ = scored_positions(enc["labels"])
    with torch.no_grad():
        full = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        with batching.head_rows(model.get_output_embeddings(), rows, cols):
            picked = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(picked, full[:, :-1][rows, cols], rtol=1e-5, atol=1e-5)


# LoRA inside the cut modules too (o_proj, down_proj): their per-sample norms must see one row per sample.
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "o_proj", "down_proj")])
def test_the_last_layer_at_answer_positions_gives_the_full_losses_c2_statistics_and_weights(tiny, targets):
    model, tok = tiny
    items = _items(10)
    plain = Trainer(_deep(model, None, targets), tok, lr=1e-2)
    plain.read_parts = []
    reference = _epochs(plain, items)
    cut = Trainer(_deep(model, None, targets), tok, lr=1e-2)
    assert len(cut.read_parts) == 2
    widths = []  # what the last MLP's inner projection is given: the answer positions, not the whole sequence
    cut.read_parts[0].down_proj.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    got = _epochs(cut, items)
    shortest = min(len(encode(tok, it)[0]) for it in items)
    # widths[0] is the check's full forward on one sample; then every forward is a few answer tokens wide.
    assert len(widths) > 2 and widths[0] >= shortest and max(widths[1:]) < shortest / 4
    assert len(cut.read_parts) == 2  # the check on the first sample kept it
    _assert_same(reference, got, _weights(plain), _weights(cut))


def test_a_last_layer_cut_that_changes_the_logits_is_turned_off(tiny, monkeypatch, capsys):
    model, tok = tiny
    from adapters import train

    real = batching.read_rows

    def wrong(parts, rows, cols):  # also zeroes a position some logit reads
        return real(parts, rows[1:], cols[1:]) if parts else real(parts, rows, cols)

    monkeypatch.setattr(train, "read_rows", wrong)
    trainer = Trainer(_deep(model, None), tok, lr=1e-2)
    got = _epochs(trainer, _items(6), epochs=1)
    assert trainer.read_parts == [] and "the last layer runs at every position" in capsys.readouterr().out
    plain = Trainer(_deep(model, None), tok, lr=1e-2)
    plain.read_parts = []
    _assert_same(_epochs(plain, _items(6), epochs=1), got, {}, {})


def _epochs(trainer, items, epochs=2):
    return [trainer.train_epoch(items, 4, seed=e) for e in range(epochs)]


def _assert_same(a, b, weights_a, weights_b):
    for ea, eb in zip(a, b):
        assert ea.keys() == eb.keys()
        for i in ea:
            assert ea[i].loss == pytest.approx(eb[i].loss, rel=1e-4, abs=1e-6)
            assert ea[i].correct == eb[i].correct
            assert ea[i].grad_norm == pytest.approx(eb[i].grad_norm, rel=1e-3, abs=1e-7)
            for k in ea[i].stats:
                assert ea[i].stats[k] == pytest.approx(eb[i].stats[k], rel=1e-3, abs=1e-6)
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-4, atol=1e-6)


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("budget_mb", [64, 0])  # all in memory; all spilled to disk
def test_the_frozen_cache_gives_the_uncached_losses_c2_statistics_and_weights(tiny, budget_mb, monkeypatch):
    model, tok = tiny
    items = _items(10)
    monkeypatch.setitem(batching.OVERHEAD_TOKENS, "cpu", 10**9)  # one forward a batch: the plain path of before
    plain = Trainer(_deep(model), tok, lr=1e-2, frozen_cache_mb=None)
    reference = _epochs(plain, items)
    monkeypatch.setitem(batching.OVERHEAD_TOKENS, "cpu", 0)  # as many forwards as there are lengths
    cached = Trainer(_deep(model), tok, lr=1e-2, frozen_cache_mb=budget_mb)
    assert cached.frozen is not None and cached.frozen.k == 1
    got = _epochs(cached, items)
    _assert_same(reference, got, _weights(plain), _weights(cached))
    assert cached.frozen.computed == len(items) and len(cached.frozen) == len(items)  # once each, reused in epoch 2
    spilled = cached.frozen.spill_dir
    assert (spilled is not None) == (budget_mb == 0) and (spilled is None or len(os.listdir(spilled)) == len(items))
    # A rewrite changes one sample's tokens: that one is computed again, the others are still read.
    rewritten = [Item(it.id, it.system, "Story: " + it.question, it.target) if it.id == "s3" else it for it in items]
    cached.train_epoch(rewritten, 4, seed=5)
    assert cached.frozen.computed == len(items) + 1 and len(cached.frozen) == len(items)
    cached.frozen.close()
    assert spilled is None or not os.path.exists(spilled)


def test_the_input_pass_fills_the_cache_and_measures_the_same(tiny):
    model, tok = tiny
    items = _items(6)
    jobs = [(it.id, it.system, it.question, it.target) for it in items]
    alone = Trainer(_deep(model), tok, lr=1e-2, frozen_cache_mb=None).input_signals(jobs, 4)
    shared = Trainer(_deep(model), tok, lr=1e-2)
    measured = shared.input_signals(jobs, 4, trained={"s0", "s1", "s2"})
    for key in alone:
        for name, value in alone[key].items():
            assert measured[key][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert len(shared.frozen) == 3  # only the trained keys are kept
    first = _epochs(shared, items, epochs=1)
    assert shared.frozen.computed == 3  # the three the input pass did not hand over
    reference = _epochs(Trainer(_deep(model), tok, lr=1e-2, frozen_cache_mb=None), items, epochs=1)
    _assert_same(reference, first, {}, {})


def test_a_cache_that_disagrees_with_the_full_forward_is_turned_off(tiny, monkeypatch, capsys):
    model, tok = tiny
    real = FrozenStates.states
    monkeypatch.setattr(FrozenStates, "states", lambda self, *a: real(self, *a) + 1.0)  # wrong states
    trainer = Trainer(_deep(model), tok, lr=1e-2)
    got = _epochs(trainer, _items(6), epochs=1)
    assert trainer.frozen is None and "away from the full forward" in trainer.frozen_note
    assert "frozen-layer cache off" in capsys.readouterr().out
    reference = _epochs(Trainer(_deep(model), tok, lr=1e-2, frozen_cache_mb=None), _items(6), epochs=1)
    _assert_same(reference, got, {}, {})


def test_no_cache_where_every_layer_trains_or_the_bottom_has_dropout(tiny):
    model, tok = tiny
    everything = Trainer(_deep(model, top_layers=None), tok, lr=1e-2)
    assert everything.frozen is None and "every layer" in everything.frozen_note
    noisy = copy.deepcopy(model)
    noisy.config.attention_dropout = 0.1
    trainer = Trainer(_deep(noisy), tok, lr=1e-2)
    assert trainer.frozen is None and "dropout" in trainer.frozen_note


def test_the_step_losses_are_the_full_forwards_losses(tiny):
    model, tok = tiny
    m = _deep(model)
    items = _items(7)
    enc = collate([encode(tok, it) for it in items], tok.pad_token_id)
    with torch.no_grad():
        loss, correct = per_sample_loss(m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits, enc["labels"])
    got = Trainer(m, tok, lr=1e-2).step(items)
    for i, it in enumerate(items):
        assert got[it.id].loss == pytest.approx(float(loss[i]), rel=1e-5)
        assert got[it.id].correct == bool(correct[i])


def test_generation_reuses_the_shared_opening_and_replies_the_same(tiny, monkeypatch):
    model, tok = tiny
    prompts = [(it.system, it.question) for it in _items(9)]
    from adapters import generate

    with_prefix = dict(greedy_replies(model, tok, prompts, 6, 4))
    assert generate.shared_prefix([tok(generate.prompt_text(tok, s, q), add_special_tokens=False)["input_ids"]
                                   for s, q in prompts]) >= generate.MIN_PREFIX
    monkeypatch.setattr(generate, "MIN_PREFIX", 10**6)  # the plain path: every prompt whole
    plain = dict(greedy_replies(model, tok, prompts, 6, 4))
    assert with_prefix == plain and any(plain.values())
    # Prompts alone, one a batch (no padding at all), say the same.
    alone = {i: greedy_replies(model, tok, [p], 6, 1)[0][1] for i, p in enumerate(prompts)}
    assert alone == plain
