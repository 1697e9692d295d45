"""The controlled benchmark: planted presentation faults, their canonical restoration, the oracle, ground truth
kept from policies, and routing quality scored on hand-built cases."""

import json
import sys
import textwrap

import pytest

import numpy as np

from nslora.core.errors import UserError
from policies.quality import auc, detection, round_quality, routing_quality
from nslora.commands.cli import main
from nslora.tasks import load_task
from nslora.tasks.config import TaskConfig
from nslora.tasks.controlled import FAMILIES, canonical
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)
from test_reward import tiny_backbone, trained  # noqa: F401  (fixtures)


def _split(babi_task=1, share=0.5, n_train=120, **params):
    cfg = TaskConfig(name="controlled", babi_task=babi_task, n_train=n_train, n_heldout=20, seed=5,
                     params={"fault_share": share, **params})
    return load_task(cfg)


@pytest.mark.parametrize("babi_task", [1, 2, 3])
def test_every_family_is_undone_by_the_canonicaliser_and_clean_text_is_left_alone(babi_task):
    _, faulty, heldout = _split(babi_task)
    _, clean, heldout_clean = _split(babi_task, share=0.0)
    assert [s.id for s in faulty] == [s.id for s in clean] and heldout == heldout_clean  # same samples; held-out clean
    planted = [s for s in faulty if s.meta["fault"]]
    assert len(planted) == 60 and {s.meta["fault"] for s in planted} == set(FAMILIES)
    assert all(s.meta["fault"] is None for s in heldout)
    for f, c in zip(faulty, clean):
        assert (f.question != c.question) == bool(f.meta["fault"]), f.id
        assert canonical(f.question) == c.question, (f.meta["fault"], f.question)
        assert (f.answer, f.target) == (c.answer, c.target)


def test_latest_first_makes_the_first_mention_the_answer_which_is_wrong_told_in_order():
    _, faulty, _ = _split(share=1.0, knowledge_share=0.0, families=["latest_first"])
    _, clean, _ = _split(share=0.0, knowledge_share=0.0)
    misled = 0
    for f, c in zip(faulty, clean):
        person = c.question.split("\n")[-1].removeprefix("Where is ").rstrip("?")
        first = lambda q: next(line for line in q.split("\n")[:-1] if line.startswith(person + " "))
        assert first(f.question).rstrip(".").endswith(f.answer)  # faulted: the first mention answers
        misled += not first(c.question).rstrip(".").endswith(c.answer)  # in order: often it does not
    assert misled >= len(clean) // 4


def test_knowledge_samples_are_clean_harder_stories_shared_with_the_clean_ceiling():
    _, train, heldout = _split(n_train=40, share=0.5)
    _, ceiling, _ = _split(n_train=40, share=0.0)
    kinds = [s.meta["kind"] for s in train]
    assert kinds.count("knowledge") == 10 and kinds.count("presentation") == 20 and kinds.count(None) == 10
    knowledge = [s for s in train if s.meta["kind"] == "knowledge"]
    # Two supporting facts: the object's place, asked as bAbI task 2 asks it; no fault, never held out.
    assert all(s.id.startswith("babi2-") and s.meta["fault"] is None and s.question.split("\n")[-1].startswith("Where is the ")
               for s in knowledge)
    assert len({s.id for s in train}) == 40 and all(s.meta["kind"] is None and s.id.startswith("babi1-") for s in heldout)
    # The ceiling (fault_share 0) trains on the same knowledge samples, in the same places, and faults nothing.
    assert [s.id for s in ceiling if s.meta["kind"] == "knowledge"] == [s.id for s in knowledge]
    assert [s.meta["kind"] for s in ceiling].count("presentation") == 0
    _, none, _ = _split(n_train=40, share=0.5, knowledge_share=0.0)
    assert all(s.meta["kind"] != "knowledge" for s in none) and sum(bool(s.meta["fault"]) for s in none) == 20
    with pytest.raises(UserError, match="knowledge_share=0.2 must be in"):
        _split(n_train=40, share=0.9, knowledge_share=0.2)
    with pytest.raises(UserError, match="knowledge_share"):
        _split(babi_task=3, knowledge_share=0.1)


def test_the_rules_strategy_restores_faulty_samples_and_changes_no_clean_one():
    from rewriter.guard import GuardConfig
    from rewriter.strategies import RewriteContext, RulesStrategy

    _, train, _ = _split(n_train=40)
    _, clean, _ = _split(n_train=40, share=0.0)
    for s, c in zip(train, clean):
        res = RulesStrategy().rewrite(s, RewriteContext(None, s.system, s.question, s.answer, "",
                                                        guard=GuardConfig(similarity=False), task="controlled"))
        if s.meta["fault"]:
            assert res.verdict == "accepted" and res.new_question == c.question, (s.meta["fault"], res.reason)
        else:
            assert res.verdict == "rejected" and res.reason == "unchanged"


def test_a_users_fault_family_plugs_in(tmp_path, monkeypatch):
    (tmp_path / "my_faults.py").write_text(textwrap.dedent('''
        import dataclasses
        def upper_question(sample, rng):
            lines = sample.question.split("\\n")
            return dataclasses.replace(sample, question="\\n".join(lines[:-1] + [lines[-1].upper()]))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_faults", None)
    _, train, _ = _split(n_train=20, families=["my_faults:upper_question"])
    planted = [s for s in train if s.meta["fault"]]
    assert len(planted) == 10 and all(s.meta["fault"] == "my_faults:upper_question" for s in planted)
    assert all(s.question.split("\n")[-1].startswith("WHERE IS ") for s in planted)


def test_routing_quality_on_a_hand_built_round():
    faults = {"a": "noise", "b": "shuffled", "c": None, "d": None, "e": None, "f": "noise"}
    q = round_quality([("a", "symbolic"), ("b", "numerical"), ("c", "symbolic"), ("d", "numerical")], faults)
    assert (q["candidates"], q["faulty"], q["symbolic"], q["true_positives"]) == (4, 2, 2, 1)
    assert q["precision"] == 0.5 and q["recall"] == 0.5 and q["f1"] == 0.5
    assert q["random"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}  # 2 of 4 routed, 2 of 4 faulty
    assert q["by_family"] == {"noise": {"candidates": 1, "routed": 1}, "shuffled": {"candidates": 1, "routed": 0}}
    run = routing_quality({2: [("a", "symbolic"), ("b", "numerical"), ("c", "symbolic"), ("d", "numerical")],
                           3: [("b", "symbolic"), ("c", "numerical"), ("e", "numerical")]}, faults)
    assert run["total"]["precision"] == 2 / 3 and run["total"]["recall"] == 2 / 3
    assert run["total"]["random"]["precision"] == pytest.approx((2 * 2 / 4 + 1 * 1 / 3) / 3)
    assert run["cumulative_recall"] == 2 / 3  # a and b of a, b, f
    assert routing_quality({}, {"x": None})["total"]["f1"] is None
    # b trains on a rewritten prompt by round 3: its planted fault is gone, so routing it again is not a hit.
    later = routing_quality({3: [("b", "symbolic"), ("c", "numerical")]}, faults, {3: {"b"}})
    assert later["rounds"]["3"]["faulty"] == 0 and later["rounds"]["3"]["precision"] == 0.0


def test_auc_and_signal_detection_on_hand_built_cases():
    from sklearn.metrics import roc_auc_score

    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auc([1.0, 1.0], [False, True]) == 0.5 and auc([1.0], [True]) is None
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 200).tolist(), (rng.random(200) < 0.3).tolist()  # many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    faults = {"a": "noise", "b": "noise", "c": "shuffled", "d": None, "e": None}
    row = lambda e, i, v, loss: {"epoch": e, "sample_id": i, "prompt_version": v, "loss": loss, "c1": None, "c2": 1.0}
    signals = [row(1, "a", 0, 5.0), row(1, "b", 0, 4.0), row(1, "c", 0, 1.0), row(1, "d", 0, 2.0), row(1, "e", 0, 3.0),
               # epoch 2: a trains on a rewrite, so it no longer counts; b is still above the clean samples
               row(2, "a", 1, 0.0), row(2, "b", 0, 4.0), row(2, "c", 0, 3.0), row(2, "d", 0, 2.0), row(2, "e", 0, 1.0)]
    det = detection(signals, faults)
    # Average precision at epoch 1: ranked a+ b+ e- d- c+, so (1/1 + 2/2 + 3/5) / 3; the base rate is 3/5.
    assert det["loss"]["per_epoch"]["1"] == {"all": 4 / 6, "noise": 1.0, "shuffled": 0.0, "auprc": pytest.approx(2.6 / 3),
                                             "base_rate": 0.6, "knowledge": None}
    assert det["loss"]["per_epoch"]["2"] == {"all": 1.0, "noise": 1.0, "shuffled": 1.0, "auprc": 1.0, "base_rate": 0.5,
                                             "knowledge": None}
    assert det["loss"]["mean"]["shuffled"] == 0.5 and "c1" not in det  # no value of C1 at all: no row
    assert det["c2"]["mean"]["all"] == 0.5  # the same value everywhere: blind
    # A knowledge sample (hard but clean) is a negative everywhere, the only negative of `knowledge`, and no family's.
    kinds = {"d": "knowledge"}
    det = detection(signals[:5], faults, kinds, inputs={"a": {"q_nll": 3.0}, "b": {"q_nll": 1.0}, "c": {"q_nll": 2.5},
                                                        "d": {"q_nll": 2.0}, "e": {"q_nll": None}})
    assert det["loss"]["per_epoch"]["1"]["knowledge"] == 2 / 3  # a and b above d, c below
    assert det["loss"]["per_epoch"]["1"]["noise"] == 1.0  # against e only
    assert det["q_nll"]["per_epoch"] == {"0": det["q_nll"]["mean"]} and det["q_nll"]["mean"]["all"] == 2 / 3
    # The dynamics over epochs so far are scored too (p_gold missing here: only those from `correct`).
    assert "confidence" not in det and "aum" not in det


def test_average_precision_matches_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    from policies.quality import auprc

    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 6, 300).tolist(), (rng.random(300) < 0.25).tolist()
    assert auprc(scores, labels) == pytest.approx(average_precision_score(labels, scores))
    assert auprc([1.0, 2.0], [False, False]) is None and auprc([1.0], [True]) is None


def test_a_knowledge_sample_routed_symbolic_is_a_false_positive():
    from policies.quality import routing_quality

    faults = {"f1": "noise", "f2": "phrasing", "k1": None, "k2": None, "c1": None}
    kinds = {"f1": "presentation", "f2": "presentation", "k1": "knowledge", "k2": "knowledge", "c1": None}
    # Both faults found, plus one knowledge sample: precision 2/3, recall 1.
    q = routing_quality({2: [("f1", "symbolic"), ("f2", "symbolic"), ("k1", "symbolic"), ("k2", "numerical"),
                             ("c1", "numerical")]}, faults, kinds=kinds)
    r = q["rounds"]["2"]
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0 and r["f1"] == pytest.approx(0.8)
    assert r["knowledge"] == 2 and r["knowledge_routed"] == 1


SPY = '''
import json, os
from policies.signal import LossRatioPolicy

class Spy(LossRatioPolicy):
    """Loss-ratio routing that writes down everything it was shown."""
    def calibrate(self, views):
        with open(os.environ["SPY_LOG"], "a") as f:
            for v in views:
                f.write(json.dumps({"id": v.id, "extra": v.extra, "question": v.question, "system": v.system}) + "\\n")
        return super().calibrate(views)
'''


def _controlled_run(tmp_path, tiny_dir, policy, **extra):
    cfg = write_config(tmp_path, tiny_dir, None,
                       task={"name": "controlled", "n_train": 16, "n_heldout": 6, "params": {"fault_share": 0.5}},
                       policy={"name": policy}, saturation={"p": 1.0},
                       rewriter={"strategy": "rules", "engine": "local", "guard_similarity": False}, **extra)
    assert main(["run", str(cfg)]) == 0
    return tmp_path / "runs" / "r"


def test_the_oracle_routes_exactly_the_faulty_candidates(tiny_dir, tmp_path, capsys):
    run = _controlled_run(tmp_path, tiny_dir, "oracle")
    faults = {r["id"]: r["fault"] for r in rows(run, "SELECT id, fault FROM samples WHERE split='train'")}
    assert sum(bool(f) for f in faults.values()) == 8
    decisions = rows(run, "SELECT epoch, sample_id, route FROM decisions WHERE path != 'revert'")
    rewritten = {(r["epoch"], r["sample_id"]) for r in rows(run, "SELECT epoch, sample_id FROM signals WHERE prompt_version > 0")}
    faulty_now = lambda d: bool(faults[d["sample_id"]]) and (d["epoch"], d["sample_id"]) not in rewritten
    assert decisions and all((d["route"] == "symbolic") == faulty_now(d) for d in decisions)
    routing = json.loads((run / "metrics.json").read_text())["routing"]
    assert routing["total"]["precision"] == 1.0 and routing["total"]["recall"] == 1.0
    assert routing["planted"] == 8
    accepted = rows(run, "SELECT sample_id FROM rewrites WHERE verdict='accepted'")
    assert accepted and all(faults[r["sample_id"]] for r in accepted)
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0  # the confusion table per round, in the terminal and the HTML report
    out = capsys.readouterr().out
    assert "Routing vs planted faults (8 of 16" in out and "cumulative recall 100.0%" in out
    html = (run / "report.html").read_text()
    assert "Routing against the planted faults" in html and ">1.00<" in html and ">FP knowledge<" in html
    assert routing["knowledge"] == {"samples": 4, "ever_routed": 0.0}  # the oracle never rewrites a hard-but-clean one


@pytest.mark.parametrize("policy", ["oracle", "random"])
def test_an_early_arm_routes_from_the_first_epoch_and_a_gated_one_waits_for_saturation(tiny_dir, tmp_path, policy):
    first = {}
    for early in (False, True):
        (tmp_path / str(early)).mkdir()
        cfg = write_config(tmp_path / str(early), tiny_dir, None,
                           task={"name": "controlled", "n_train": 16, "n_heldout": 6, "params": {"fault_share": 0.5}},
                           policy={"name": policy, "params": {"needs_saturation": not early}}, saturation={"p": 1.0},
                           rewriter={"strategy": "rules", "engine": "local", "guard_similarity": False})
        assert main(["run", str(cfg)]) == 0
        routed = rows(tmp_path / str(early) / "runs" / "r", "SELECT epoch FROM decisions WHERE route='symbolic'")
        first[early] = min(r["epoch"] for r in routed)
    assert first[True] < first[False]
    assert first[False] >= 2  # saturation.min_epoch


def test_ground_truth_never_reaches_a_policy_or_reward_pairs(tiny_dir, tmp_path, monkeypatch):
    (tmp_path / "spy_policy.py").write_text(SPY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPY_LOG", str(tmp_path / "seen.jsonl"))
    sys.modules.pop("spy_policy", None)
    run = _controlled_run(tmp_path, tiny_dir, "spy_policy:Spy")
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert seen and all(v["extra"] == {} for v in seen)
    words = set(FAMILIES) | {"fault"}
    assert not any(w in v["question"] or w in v["system"] for v in seen for w in words)
    from policies.reward.pairs import build_pairs

    pairs = build_pairs([str(run)], "c1", max_pairs=200, high_share=0.5)
    for split in pairs.values():
        assert "fault" not in " ".join(split.column_names)
        assert not any(w in text for text in list(split["chosen"]) + list(split["rejected"]) for w in words)
    routing = json.loads((run / "metrics.json").read_text())["routing"]
    # p = 1: every candidate goes symbolic, so every knowledge candidate is a false positive, counted as such.
    for r in routing["rounds"].values():
        assert r["knowledge_routed"] == r["knowledge"] and r["symbolic"] - r["true_positives"] >= r["knowledge"]
    assert routing["knowledge"]["ever_routed"] > 0 and routing["total"]["precision"] < 1.0


def test_a_reward_policy_is_scored_against_the_planted_faults(tiny_dir, trained, tmp_path, capsys):
    import shutil

    import yaml

    from policies.quality import auc
    from policies.reward.pairs import sample_text
    from policies.reward.policy import RewardPolicy
    from nslora.commands.experiment import Experiment, ExperimentConfig

    _, policy_dir = trained
    run = _controlled_run(tmp_path, tiny_dir, "lora-only")
    capsys.readouterr()
    assert main(["policy", "eval", str(policy_dir), str(run), "--criterion", "c1"]) == 0
    gt = json.loads(capsys.readouterr().out)["ground_truth_auc"]
    train = rows(run, "SELECT system, question, fault FROM samples WHERE split='train' ORDER BY id")
    probs = RewardPolicy(str(policy_dir)).proba([sample_text(r["system"], r["question"]) for r in train]).tolist()
    assert gt["samples"] == 16 and gt["all"] == pytest.approx(auc(probs, [bool(r["fault"]) for r in train]))
    assert set(gt) == {"all", "samples", *{r["fault"] for r in train if r["fault"]}}
    # An experiment scores its trained policy on a fresh draw of the task (the next task.seed), once.
    base = yaml.safe_load((run / "config.yaml").read_text())
    exp = ExperimentConfig(name="x", out_dir=str(tmp_path / "exp"), arms=["lora-only", "reward"], seeds=[0])
    runner = Experiment(exp, base)
    shutil.copytree(policy_dir, runner.policy_dir)
    fresh = runner._classifier_detection()
    assert fresh["task_seed"] == base["task"]["seed"] + 1 and fresh["samples"] == 16 and 0.0 <= fresh["all"] <= 1.0
    assert json.loads((runner.policy_dir / "ground-truth-auc.json").read_text()) == fresh
