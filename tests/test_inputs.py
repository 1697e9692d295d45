"""Base-model input signals: the arithmetic on hand-built logits (pure, no model), the question span on a real
tokenizer, and a run that measures every prompt once, measures accepted rewrites, and shows them to a policy."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from adapters.inputs import _question_span, ifd, input_signals, span_stats, token_nll
from test_e2e import rows, run_with_user_policy, tiny_dir  # noqa: F401  (fixture)

torch.set_num_threads(1)


def test_token_nll_is_the_surprisal_of_each_next_token():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 2]])
    nll = token_nll(logits, ids)
    assert nll.shape == (1, 3) and nll[0, 0] == 0.0  # the first token has no prediction
    # Token 1 after position 0 (logits 2, 0, 0): -log(e^0 / (e^2 + 2)); token 2 after position 1 (0, 1, 0).
    assert nll[0, 1].item() == pytest.approx(math.log(math.exp(2) + 2))
    assert nll[0, 2].item() == pytest.approx(math.log(2 + math.e))


def test_span_stats_mean_and_top_k_inside_the_mask_only():
    nll = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0], [1.0] * 8])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [0] * 8])
    means, tops = span_stats(nll, mask, top=2)
    assert means == [pytest.approx(3.5), None] and tops == [pytest.approx(5.5), None]
    # A span shorter than top: the mean of all of it.
    means, tops = span_stats(torch.tensor([[4.0, 2.0]]), torch.tensor([[0, 1]]), top=5)
    assert means == [2.0] and tops == [2.0]


def test_ifd_is_the_ratio_and_undefined_without_both_losses():
    assert ifd(1.0, 4.0) == 0.25 and ifd(3.0, 2.0) == 1.5
    assert ifd(None, 2.0) is None and ifd(1.0, None) is None and ifd(1.0, 0.0) is None and ifd(float("nan"), 1.0) is None


def test_the_question_span_covers_the_question_and_nothing_else():
    from adapters.train import prompt_text
    from tiny import make_tokenizer

    tok = make_tokenizer()
    question = "Mary moved to the bathroom.\nWhere is Mary?"
    text = prompt_text(tok, "Answer with one word. Where is Mary?", question)  # the system prompt quotes it in part
    ids, inside = _question_span(tok, text, question)
    picked = tok.decode([t for t, m in zip(ids, inside) if m])
    assert picked.strip() == question
    assert not inside[0] and not inside[-1]  # the template's own tokens stay out


class Uniform(torch.nn.Module):
    """A 'model' whose next-token distribution is uniform except one boosted token: the signals have closed forms."""

    def __init__(self, vocab: int, boost: int):
        super().__init__()
        self.vocab, self.boost = vocab, boost
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.boost] = math.log(3.0)  # the boosted token is 3x as likely as each other one

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_input_signals_on_a_model_with_a_closed_form():
    from tiny import make_tokenizer

    tok = make_tokenizer()
    target = "bathroom"
    boosted = tok(target, add_special_tokens=False)["input_ids"][0]
    model = Uniform(len(tok), boosted)
    got = input_signals(model, tok, [("a", "", "Where is Mary?", target), ("b", "Be brief.", "Where is John?", target)], 1)
    n = len(tok)
    plain, boost = math.log(n + 2), math.log((n + 2) / 3)
    answer = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    expected_answer = (boost + (len(answer) - 1) * plain) / len(answer)
    for key in ("a", "b"):
        s = got[key]
        assert s["q_nll"] == pytest.approx(plain) and s["q_top"] == pytest.approx(plain)  # no question token is boosted
        assert s["a_loss"] == pytest.approx(expected_answer) and s["a_alone"] == pytest.approx(expected_answer)
        assert s["ifd"] == pytest.approx(1.0)
    model.train()
    input_signals(model, tok, [("a", "", "q?", target)], 4)
    assert model.training


POLICY = textwrap.dedent('''
    """A user's policy that routes the most surprising questions (base-model input signals) and keeps what it saw."""
    from policies.base import Decision, Policy

    SEEN = []


    class Surprising(Policy):
        name = "surprising"

        def calibrate(self, views):
            SEEN.extend(views)
            ranked = sorted(views, key=lambda v: (-(v.inputs.get("q_top") or 0.0), v.id))
            self.symbolic_ = {v.id for v in ranked[: max(1, len(views) // 3)]}
            return self

        def decide(self, view):
            shown = view.inputs.get("q_top")
            route = "symbolic" if view.id in self.symbolic_ else "numerical"
            return Decision(route, 1.0, f"q_top {shown}", "inputs")
''')


def test_a_run_measures_each_prompt_once_and_a_users_policy_reads_it(tiny_dir, tmp_path, monkeypatch):
    import datasets

    run = run_with_user_policy(tmp_path, tiny_dir, monkeypatch, "inputs_policy", POLICY, "Surprising")
    measured = rows(run, "SELECT * FROM inputs ORDER BY sample_id, since")
    train = rows(run, "SELECT id FROM samples WHERE split = 'train'")
    originals = [r for r in measured if r["since"] == 0]
    assert sorted(r["sample_id"] for r in originals) == sorted(r["id"] for r in train)
    for r in measured:
        assert r["q_nll"] > 0 and r["q_top"] >= r["q_nll"] and r["a_loss"] > 0 and r["ifd"] == pytest.approx(r["a_loss"] / r["a_alone"])
    # Every accepted rewrite that was trained on (written before the last epoch) was measured too, under its epoch.
    epochs = rows(run, "SELECT MAX(epoch) AS e FROM signals")[0]["e"]
    accepted = {(r["sample_id"], r["epoch"]) for r in rows(run, "SELECT * FROM rewrites WHERE verdict = 'accepted'")
                if r["epoch"] < epochs}
    assert accepted <= {(r["sample_id"], r["since"]) for r in measured if r["since"]}
    assert accepted, "no rewrite was accepted before the last epoch; the run cannot check re-measuring"
    # The node time is recorded apart from training's.
    assert rows(run, "SELECT seconds FROM timings WHERE node = 'measure_inputs'")
    import inputs_policy

    by_key = {(r["sample_id"], r["since"]): r for r in measured}
    views = [v for v in inputs_policy.SEEN if v.id in {r["id"] for r in train}]
    assert views, "no routing round ran"
    prompts = rows(run, "SELECT sample_id, since, question FROM prompts")
    for v in views:
        # The view's prompt: the original, or the latest rewrite of its text written before its round.
        since = 0 if not v.rewrites else max(p["since"] for p in prompts if p["sample_id"] == v.id and p["since"] < v.epoch
                                             and p["question"] == v.question)
        assert v.inputs == {k: by_key[(v.id, since)][k] for k in ("q_nll", "q_top", "a_loss", "a_alone", "ifd")}
    from nslora.report import data as D
    from nslora.report import terminal

    caption = terminal.sample_table(D.load_run(run), views[0].id).caption
    assert f"base model, original prompt: question NLL {terminal._num(by_key[(views[0].id, 0)]['q_nll'])}" in caption
    augmented = datasets.load_from_disk(str(run / "augmented"))
    first = json.loads(augmented[0]["inputs"])
    assert first["original"]["q_nll"] == by_key[(augmented[0]["id"], 0)]["q_nll"]


def test_the_head_on_scored_positions_only_gives_the_full_forwards_values():
    from adapters import inputs
    from tiny import make_tiny

    model, tok = make_tiny()
    model.eval()
    rows = [inputs._encode(tok, "Be brief.", q, "kitchen") for q in ("Mary went to the kitchen.\nWhere is Mary?", "Where is John?")]
    assert inputs._scored_only(model) is not None
    with torch.no_grad():
        fast, q_mask, a_mask = inputs._forward(model, rows, tok.pad_token_id)
        ids, attention, _, _ = inputs._batch(rows, tok.pad_token_id)
        full = token_nll(model(input_ids=ids, attention_mask=attention).logits, ids)
    scored = q_mask | a_mask
    assert torch.allclose(fast[scored], full[scored], atol=1e-5) and (fast[~scored] == 0).all()


def test_the_shared_opening_is_run_once_and_gives_the_same_values():
    from adapters import inputs
    from tiny import make_tiny

    model, tok = make_tiny()
    model.eval()
    questions = ("Mary went to the kitchen.\nWhere is Mary?", "Where is John?", "John went to the hallway. Daniel went "
                 "to the office.\nWhere is Daniel?")
    rows = [inputs._encode(tok, "Read the story and answer with one word.", q, t) for q, t in zip(questions, ("kitchen", "x", "office"))]
    with torch.no_grad():
        prefix = inputs._prefix(model, rows)
        assert prefix is not None and prefix[0] >= inputs.MIN_PREFIX
        assert all(not any(q[: prefix[0]]) for _, q, _ in rows)  # no scored token inside it
        cached, q_c, a_c = inputs._forward(model, rows, tok.pad_token_id, prefix)
        plain, q_p, a_p = inputs._forward(model, rows, tok.pad_token_id)
    for got, want in zip(span_stats(cached, q_c), span_stats(plain, q_p)):  # the means, then the top-5 means
        assert got == pytest.approx(want, abs=1e-4)
    assert span_stats(cached, a_c)[0] == pytest.approx(span_stats(plain, a_p)[0], abs=1e-4)
    # Rows that share nothing long enough get no prefix.
    assert inputs._prefix(model, [inputs._encode(tok, "", "Where is Mary?", "x"), inputs._encode(tok, "Sys.", "Hi?", "y")]) is None
