"""The learned `reward` policy: pairs from run stores, trl training on a hidden rule, calibration, saved folder,
routing with fallback, and one-line errors for bad input. A tiny random BERT keeps it fast (no real backbone)."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import check_policy
from policies.base import SampleView
from policies.reward import RewardPolicy, RewardPolicyConfig, build_pairs, train_reward_policy
from policies.reward import calibration as C
from policies.reward.pairs import sample_text
from nslora.core.errors import UserError
from router.store import Store

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

NAMES = ["Mary", "John", "Sandra", "Daniel", "Natalia", "Weng", "Betty", "James"]
PLACES = ["garden", "office", "kitchen", "hallway", "bathroom", "bedroom"]
SYSTEMS = ["Answer briefly.", "You are a helpful assistant.", "Read carefully."]


def synthetic_text(i: int, symbolic: bool) -> str:
    """The hidden rule: a sample needs the symbolic branch iff its question asks for a quoted, formatted answer."""
    rng = random.Random(i)
    name, place, n = rng.choice(NAMES), rng.choice(PLACES), rng.randint(1, 99)
    q = f"{name} moved to the {place} with {n} apples. Where is {name}?"
    if symbolic:
        q += ' Reply as "(a) yes; (b) no!"'
    return sample_text(rng.choice(SYSTEMS), q)


def synthetic_pairs(n_items=60, n_train=240, n_test=80, seed=0):
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    split = {}
    for name, lo, n in (("train", 0, n_train), ("test", 10_000, n_test)):  # disjoint items per split
        hi = [synthetic_text(lo + i, True) for i in range(n_items)]
        low = [synthetic_text(lo + 5_000 + i, False) for i in range(n_items)]
        split[name] = Dataset.from_list([{"chosen": rng.choice(hi), "rejected": rng.choice(low), "margin": 1.0} for _ in range(n)])
    return DatasetDict(split)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    from tiny import make_tokenizer

    tok = make_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    cfg = RewardPolicyConfig(backbone=tiny_backbone, epochs=3, lr=2e-3, batch_size=16, max_length=64, p=0.5, band=0.05)
    metrics = train_reward_policy(synthetic_pairs(), cfg, out)
    return metrics, out


def test_learns_the_hidden_rule_on_heldout_pairs(trained):
    metrics, out = trained
    assert metrics["pairwise_accuracy"] >= 0.9, metrics
    assert metrics["roc_auc"] >= 0.9, metrics
    assert 0.0 <= metrics["ece"] <= 1.0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["format_version"] == 1 and meta["fallback"] == "loss-ratio" and meta["p"] == 0.5
    assert meta["metrics"]["pairwise_accuracy"] == metrics["pairwise_accuracy"]
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["method"] == "platt" and {"a", "b"} <= set(cal)


def test_saved_folder_gives_identical_scores_in_a_new_process(trained):
    _, out = trained
    texts = [synthetic_text(20_000 + i, i % 2 == 0) for i in range(10)]
    here = RewardPolicy(str(out)).score_texts(texts)
    code = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(1)
        from policies.reward import RewardPolicy
        texts = json.loads(sys.stdin.read())
        print(json.dumps(RewardPolicy({str(out)!r}).score_texts(texts).tolist()))
    """)
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    there = np.array(json.loads(res.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(here, there)


def _views(n=20):
    views = []
    for i in range(n):
        system, _, question = synthetic_text(30_000 + i, symbolic=i % 2 == 0).partition("\n\n")
        views.append(SampleView(id=f"s{i}", epoch=2, loss=1.0, c1=0.05 * i, c2=0.1, correct=False, losses=(2.0, 1.0),
                                system=system, question=question))
    return views


def test_policy_routes_by_the_classifier_and_defers_inside_the_band(trained):
    _, out = trained
    views = _views()
    policy = RewardPolicy(str(out), p=0.5, band=0.0)
    check_policy(policy, views)
    decisions = {v.id: policy.decide(v) for v in views}
    assert all(d.path == "classifier" and "P(symbolic)=" in d.reason for d in decisions.values())
    symbolic = {i for i, d in decisions.items() if d.route == "symbolic"}
    assert symbolic == {f"s{i}" for i in range(0, 20, 2)}  # exactly the hidden-rule samples, p = 0.5 of 20

    # A band as wide as the median distance to the threshold: about half defer to loss-ratio, half do not.
    probs = np.array([policy.proba_[sample_text(v.system, v.question)] for v in views])
    band = float(np.median(np.abs(probs - policy.threshold_))) + 1e-9
    banded = RewardPolicy(str(out), p=0.5, band=band)
    check_policy(banded, views)
    paths = [banded.decide(v).path for v in views]
    assert paths.count("fallback") >= 5 and paths.count("classifier") >= 5, paths
    deferred = next(banded.decide(v) for v in views if banded.decide(v).path == "fallback")
    assert "deferred to loss-ratio" in deferred.reason and "P(symbolic)=" in deferred.reason
    wide = RewardPolicy(str(out), p=0.5, band=1.0).calibrate(views)
    assert {wide.decide(v).path for v in views} == {"fallback"}


def _make_run(tmp_path, name="run", n_train=12, n_heldout=4, epochs=3, rewrites=()):
    """A run store with known signals: sample t{i}'s last-epoch C1 is i/10 and it is wrong iff i is even."""
    run = tmp_path / name
    run.mkdir()
    store = Store(run / "run.sqlite")
    rows = [{"id": f"t{i}", "split": "train", "system": "Sys.", "question": f"Train question {i}?", "answer": "a", "target": "a"} for i in range(n_train)]
    rows += [{"id": f"h{i}", "split": "heldout", "system": "Sys.", "question": f"Heldout question {i}?", "answer": "a", "target": "a"} for i in range(n_heldout)]
    store.add_samples(rows)
    signals = []
    for e in range(1, epochs + 1):
        for i in range(n_train):
            signals.append({"epoch": e, "sample_id": f"t{i}", "prompt_version": 0, "loss": 2.0 - 0.1 * e - 0.01 * i,
                            "c1": i / 10 if e > 1 else None, "c2": 1.0 + i, "correct": int(i % 2 == 1)})
        for i in range(n_heldout):  # a held-out row that would be the most "symbolic" of all if it leaked
            signals.append({"epoch": e, "sample_id": f"h{i}", "prompt_version": 0, "loss": 5.0, "c1": 9.0, "c2": 0.0, "correct": 0})
    store.add_signals(signals)
    store.add_rewrites([{"epoch": e, "sample_id": sid, "version": 1, "original_system": "Sys.", "original_question": "q",
                         "new_system": "New.", "new_question": "q", "candidate": "c", "student_answer": "x",
                         "engine": "fake", "strategy": "rules", "verdict": v, "reason": "r", "calls": 0, "tokens": 0}
                        for e, sid, v in rewrites])
    store.close()
    return run


def test_build_pairs_follows_the_criterion_and_never_uses_heldout(tmp_path):
    run = _make_run(tmp_path)
    text = {f"t{i}": f"Sys.\n\nTrain question {i}?" for i in range(12)}
    pairs = build_pairs([run], "c1", max_pairs=100, seed=0, heldout_share=0.25)
    # wrong samples t0,t2,..,t10; upper half by C1: t6, t8, t10 are "high"; everything else "low".
    high = {text[f"t{i}"] for i in (6, 8, 10)}
    for split in ("train", "test"):
        rows = pairs[split]
        assert len(rows) > 0
        assert all("Heldout" not in r["chosen"] and "Heldout" not in r["rejected"] for r in rows)
        assert {r["chosen"] for r in rows} <= high and not ({r["rejected"] for r in rows} & high)
        assert all(r["margin"] >= 0 for r in rows)
    seen = lambda s: {t for r in pairs[s] for t in (r["chosen"], r["rejected"])}
    assert not (seen("train") & seen("test"))  # split by sample
    r = pairs["train"][0]
    c1 = {t: int(t.split()[-1].rstrip("?")) / 10 for t in text.values()}
    assert r["margin"] == pytest.approx(max(c1[r["chosen"]] - c1[r["rejected"]], 0))

    c2 = build_pairs([run], "c2", seed=1)  # small gradient norm = high: t0, t2, t4 among the wrong ones
    assert {r["chosen"] for s in ("train", "test") for r in c2[s]} <= {text[f"t{i}"] for i in (0, 2, 4)}
    assert build_pairs([run], "c1", seed=3)["train"]["chosen"] == build_pairs([run], "c1", seed=3)["train"]["chosen"]
    every_wrong = build_pairs([run], "c1", high_share=1.0)  # all six still-wrong samples count as high
    assert {r["chosen"] for s in ("train", "test") for r in every_wrong[s]} == {text[f"t{i}"] for i in range(0, 12, 2)}


def test_build_pairs_on_any_recorded_signal(tmp_path):
    run = _make_run(tmp_path)
    text = {f"t{i}": f"Sys.\n\nTrain question {i}?" for i in range(12)}
    chosen = lambda pairs: {r["chosen"] for s in ("train", "test") for r in pairs[s]}
    # loss falls with i, so the highest loss among the wrong samples is t0, t2, t4; -loss picks t6, t8, t10.
    assert chosen(build_pairs([run], "loss", seed=0)) <= {text[f"t{i}"] for i in (0, 2, 4)}
    assert chosen(build_pairs([run], "-loss", seed=0)) <= {text[f"t{i}"] for i in (6, 8, 10)}
    # An input signal needs the run's inputs table: refused in one line without it, used once it is there.
    with pytest.raises(UserError, match="no input signals recorded"):
        build_pairs([run], "q_top")
    store = Store(run / "run.sqlite")
    store.add_measured([{"sample_id": f"t{i}", "since": 0, "q_nll": 1.0, "q_top": float(i % 5), "a_loss": 1.0,
                         "a_alone": 2.0, "ifd": 0.5} for i in range(12)], [])
    store.close()
    assert chosen(build_pairs([run], "q_top", seed=0)) <= {text[f"t{i}"] for i in (4, 8, 2)}  # q_top 4, 3, 2 among the wrong
    from policies.reward.pairs import check_criterion

    assert check_criterion("-confidence") == "-confidence"
    with pytest.raises(UserError, match="criterion='nosuch' is not one of c1, c2, rewrite or a recorded signal"):
        check_criterion("nosuch")


def test_build_pairs_rewrite_criterion(tmp_path):
    # t0 accepted at epoch 1, loss fell at 2: chosen. t2 accepted at 3 (no later epoch): unusable. t4 rejected.
    run = _make_run(tmp_path, rewrites=[(1, "t0", "accepted"), (3, "t2", "accepted"), (1, "t4", "rejected"), (1, "t6", "accepted"), (2, "h0", "accepted")])
    pairs = build_pairs([run], "rewrite", heldout_share=0.5)
    chosen = {r["chosen"] for s in ("train", "test") for r in pairs[s]}
    rejected = {r["rejected"] for s in ("train", "test") for r in pairs[s]}
    assert chosen == {"Sys.\n\nTrain question 0?", "Sys.\n\nTrain question 6?"}
    assert rejected <= {f"Sys.\n\nTrain question {i}?" for i in range(1, 12, 2)}  # the correct ones


def test_too_few_samples_is_one_line_user_error(tmp_path):
    run = _make_run(tmp_path, n_train=3)
    with pytest.raises(UserError) as e:
        build_pairs([run], "c1")
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and "too few usable samples" in msg and "train longer" in msg
    with pytest.raises(UserError, match="too few usable samples .*0 high"):
        build_pairs([_make_run(tmp_path, "r2")], "rewrite")
    with pytest.raises(UserError, match="no run.sqlite"):
        build_pairs([tmp_path / "nowhere"])


def test_bad_policy_folders_and_backbone(trained, tmp_path):
    import shutil

    _, out = trained
    views = _views(4)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "calibration.json").unlink()
    with pytest.raises(UserError, match="calibration.json is missing; retrain"):
        RewardPolicy(str(broken)).calibrate(views)
    shutil.rmtree(broken)
    shutil.copytree(out, broken)
    (broken / "model" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model/model.safetensors is missing"):
        RewardPolicy(str(broken)).calibrate(views)
    shutil.rmtree(broken)
    shutil.copytree(out, broken)
    meta = json.loads((broken / "policy.json").read_text())
    meta["format_version"] = 99
    (broken / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="version 99, this ns-lora reads .* version 1; retrain"):
        RewardPolicy(str(broken)).calibrate(views)
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(UserError, match=f"reward.backbone {missing} does not exist; "):
        train_reward_policy(synthetic_pairs(n_train=4, n_test=4), RewardPolicyConfig(backbone=missing), tmp_path / "x")
    with pytest.raises(UserError, match="reward.calibration='beta'"):
        RewardPolicyConfig(backbone=missing, calibration="beta")


def test_calibration_math():
    scores, labels = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 0, 1, 1])
    for method in ("isotonic", "platt"):
        cal = json.loads(json.dumps(C.fit_calibration(scores, labels, method)))  # JSON round trip, no pickle
        probs = C.apply_calibration(cal, scores)
        assert np.all(np.diff(probs) >= 0) and probs.min() >= 0 and probs.max() <= 1
    assert C.budget_threshold([0.9, 0.1, 0.5, 0.7], 0.5) == 0.7
    assert C.pairwise_accuracy([1, 2, 3], [0, 3, 1]) == pytest.approx(2 / 3)
    assert C.expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    assert C.expected_calibration_error([0.95, 0.95], [0, 0]) == pytest.approx(0.95)


def test_importing_policies_reward_stays_light():
    code = "import sys, policies.reward, policies; assert 'reward' in policies.REGISTRY; print([m for m in ('transformers', 'trl', 'datasets', 'sklearn') if m in sys.modules])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert res.stdout.strip() == "[]"


def test_evaluate_and_describe_a_saved_policy(trained, tmp_path):
    from policies.reward import describe_policy, evaluate_policy
    from policies.reward.evaluate import views_from_runs

    _, out = trained
    run = _make_run(tmp_path)
    assert {v.id for v in views_from_runs([run])} == {f"run/t{i}" for i in range(12)}  # no held-out views
    m = evaluate_policy(out, [run], criterion="c1")
    assert m["views"] == 12 and m["criterion"] == "c1"
    for key in ("pairwise_accuracy", "agreement_with_fallback", "deferred_share", "symbolic_share"):
        assert 0.0 <= m[key] <= 1.0, (key, m)
    shown = describe_policy(out)
    assert shown["calibration"] == "platt" and shown["fallback"] == "loss-ratio" and "model.safetensors" in shown["model_files"]


def test_pairs_come_from_every_epoch_so_a_run_that_fixed_nearly_everything_still_trains_a_policy(tmp_path):
    # The demo's shape: by the last epoch nearly every sample is right, but at epoch 2 half were stuck.
    run = tmp_path / "demo-like"
    run.mkdir()
    store = Store(run / "run.sqlite")
    store.add_samples([{"id": f"t{i}", "split": "train", "system": "Sys.", "question": f"Q{i}?", "answer": "a", "target": "a"} for i in range(12)])
    rows = []
    for e in (1, 2, 3):
        for i in range(12):
            wrong = (e == 2 and i % 2 == 0) or (e == 3 and i == 0)
            rows.append({"epoch": e, "sample_id": f"t{i}", "prompt_version": 0, "loss": 1.0, "c1": None if e == 1 else i / 10,
                         "c2": 1.0, "correct": int(not wrong)})
    store.add_signals(rows)
    store.close()
    pairs = build_pairs([run], "c1", max_pairs=50, high_share=0.5)
    chosen = {r["chosen"] for s in ("train", "test") for r in pairs[s]}
    # epoch 2: wrong t0..t10 even, top half by C1 = t6, t8, t10; epoch 3: t0 (the only wrong one) is high.
    assert chosen <= {f"Sys.\n\nQ{i}?" for i in (0, 6, 8, 10)} and len(chosen) >= 2
    # Pairs match samples of one epoch: t0 (high at epoch 3) may be rejected against an epoch-2 high, never itself.
    assert all(r["chosen"] != r["rejected"] for s in ("train", "test") for r in pairs[s])


@pytest.mark.parametrize("fallback", ["loss-ratio", "grad-norm"])
def test_a_saved_fallback_is_the_one_that_decides_inside_the_band(trained, tmp_path, fallback):
    import shutil

    from policies.base import build

    _, out = trained
    saved = tmp_path / "policy"
    shutil.copytree(out, saved)
    meta = json.loads((saved / "policy.json").read_text())
    (saved / "policy.json").write_text(json.dumps({**meta, "fallback": fallback, "band": 1.0}))
    # C1 and C2 rank the samples in opposite orders, so the two fallbacks route different samples.
    views = [SampleView(id=v.id, epoch=2, loss=1.0, c1=0.05 * i, c2=0.05 * i, correct=False, losses=(2.0, 1.0),
                        system=v.system, question=v.question) for i, v in enumerate(_views())]
    policy = RewardPolicy(str(saved), p=0.25).calibrate(views)  # band and fallback as saved: every decision defers
    own = build(fallback, {}, p=0.25, seed=0).calibrate(views)
    other = build({"loss-ratio": "grad-norm", "grad-norm": "loss-ratio"}[fallback], {}, p=0.25, seed=0).calibrate(views)
    decisions = [policy.decide(v) for v in views]
    assert all(d.path == "fallback" and f"deferred to {fallback}" in d.reason for d in decisions)
    assert [d.route for d in decisions] == [own.decide(v).route for v in views]
    assert [d.route for d in decisions] != [other.decide(v).route for v in views]
    # A setting given at run time still overrides the saved one.
    assert RewardPolicy(str(saved), p=0.25, band=0.0).calibrate(views).decide(views[0]).path == "classifier"
