"""Training-dynamics signals: the token statistics of the training forward (pure, on hand-built logits), their
summary over epochs, and what a run records and a user's policy reads."""

import json
import math
import textwrap

import pytest
import torch

from adapters.signals import answer_token_stats, dynamics
from test_e2e import rows, run_with_user_policy, tiny_dir  # noqa: F401  (fixture)


def _naive(logits, labels):
    """One answer token at a time, the textbook way."""
    out = []
    for b in range(logits.shape[0]):
        p, m, e = [], [], []
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            z = logits[b, t - 1].double()
            probs = torch.softmax(z, dim=0)
            onehot = torch.zeros_like(probs)
            onehot[y] = 1.0
            others = torch.cat([z[:y], z[y + 1:]])
            p.append(float(probs[y]))
            m.append(float(z[y] - others.max()))
            e.append(float(torch.linalg.norm(probs - onehot)))
        out.append({"p_gold": sum(p) / len(p), "margin": sum(m) / len(m), "el2n": sum(e) / len(e)} if p else None)
    return out


def test_answer_token_stats_equal_the_textbook_values():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11) * 3
    labels = torch.full((3, 6), -100)
    labels[0, 3:6] = torch.tensor([4, 0, 10])  # three answer tokens
    labels[1, 5] = 7  # one
    got = answer_token_stats(logits, labels)  # sample 2 has none
    want = _naive(logits, labels)
    for b in range(2):
        for k in ("p_gold", "margin", "el2n"):
            assert got[k][b].item() == pytest.approx(want[b][k], abs=1e-5), (b, k)
    assert all(math.isnan(got[k][2].item()) for k in got)


def test_a_confident_right_answer_and_a_contradicted_one():
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 2] = 20.0  # predicts the gold token 2 with certainty
    logits[1, 1, 3] = 20.0  # predicts 3 where the gold is 2
    labels = torch.tensor([[-100, -100, 2], [-100, -100, 2]])
    s = answer_token_stats(logits, labels)
    assert s["p_gold"][0] > 0.999 and s["margin"][0] == pytest.approx(20.0) and s["el2n"][0] < 1e-3
    assert s["p_gold"][1] < 1e-6 and s["margin"][1] == pytest.approx(-20.0) and s["el2n"][1] == pytest.approx(math.sqrt(2), abs=1e-4)


def test_dynamics_over_epochs():
    history = [{"correct": 1, "p_gold": 0.8, "margin": 2.0, "el2n": 0.3}, {"correct": 0, "p_gold": 0.2, "margin": -1.0, "el2n": 0.9},
               {"correct": 1, "p_gold": 0.5, "margin": 0.5, "el2n": 0.6}, {"correct": 0, "p_gold": None, "margin": None, "el2n": None}]
    d = dynamics(history)
    assert d["confidence"] == pytest.approx(0.5) and d["variability"] == pytest.approx(math.sqrt(0.06))
    assert d["correct_share"] == 0.5 and d["forgetting"] == 2.0  # right -> wrong twice
    assert d["aum"] == pytest.approx(0.5) and d["el2n"] == 0.3  # EL2N after the first epoch
    assert dynamics([]) == {k: None for k in d}


POLICY = textwrap.dedent('''
    """A user's policy that routes by cartography confidence and keeps what it was shown."""
    from policies.base import Decision, Policy

    SEEN = []


    class LowConfidence(Policy):
        name = "low-confidence"

        def __init__(self, p=0.25):
            self.p = p

        def calibrate(self, views):
            SEEN.extend(views)
            # A sample without dynamics (an older run's) ranks last.
            ranked = sorted(views, key=lambda v: (v.dynamics["confidence"] is None, v.dynamics["confidence"] or 0.0, v.id))
            self.symbolic_ = {v.id for v in ranked[: max(1, round(self.p * len(views)))]}
            return self

        def decide(self, view):
            c = view.dynamics["confidence"]
            shown = "unknown" if c is None else f"{c:.3f}"
            if view.id in self.symbolic_:
                return Decision("symbolic", 1.0, f"confidence {shown} among the lowest", "dynamics")
            return Decision("numerical", 1.0, f"confidence {shown}", "dynamics")
''')


def test_a_run_records_the_dynamics_and_a_users_policy_reads_them(tiny_dir, tmp_path, monkeypatch):
    import datasets

    run = run_with_user_policy(tmp_path, tiny_dir, monkeypatch, "dyn_policy", POLICY, "LowConfidence")
    signals = rows(run, "SELECT * FROM signals WHERE epoch > 0")
    assert signals and all(0.0 <= r["p_gold"] <= 1.0 and 0.0 <= r["el2n"] <= math.sqrt(2) + 1e-6 and r["margin"] is not None
                           for r in signals)
    # A sample is argmax-correct on every answer token exactly when its smallest margin is positive; the mean
    # margin of a correct sample is then positive too.
    assert all(r["margin"] > 0 for r in signals if r["correct"])
    import dyn_policy

    by_id = {}
    for r in signals:
        by_id.setdefault(r["sample_id"], []).append(r)
    views = [v for v in dyn_policy.SEEN if v.id in by_id]  # the run's views, not the conformance check's examples
    assert views, "no routing round ran"
    for v in views:
        mine = sorted((r for r in by_id[v.id] if r["epoch"] <= v.epoch), key=lambda r: r["epoch"])
        assert v.dynamics == dynamics(mine) and v.dynamics["confidence"] is not None
    decisions = rows(run, "SELECT * FROM decisions WHERE path = 'dynamics'")
    assert decisions and all(d["reason"].startswith("confidence ") for d in decisions)
    augmented = datasets.load_from_disk(str(run / "augmented"))
    assert set(json.loads(augmented[0]["dynamics"])) == {"confidence", "variability", "correct_share", "forgetting", "aum", "el2n"}
    # nslora inspect --sample shows them per epoch.
    from nslora.report import data as D
    from nslora.report import terminal

    table = terminal.sample_table(D.load_run(run), views[0].id)
    assert [c.header for c in table.columns][5:7] == ["p(gold)", "margin"]
