"""The planted-copy presentation detector: planting on any text, the fit and its out-of-fold AUC on hand-built signals,
and a run that plants, reports how well the detector finds its copies, and routes by it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from nslora.core.errors import UserError
from policies.planted import fit_detector, plant, planted_copies, presentation_score, resolve_families
from nslora.commands.cli import main
from nslora.tasks.base import Sample
from test_e2e import rows, tiny_dir, write_config  # noqa: F401  (fixture)

GSM = Sample(id="g1", system="", question="Natalia sold clips to 48 friends in April. Then she sold half as many in May. "
             "How many clips did she sell?", answer="72", target="72")


def test_the_built_in_families_plant_into_one_line_text_sentence_by_sentence():
    families = dict(resolve_families(["shuffled", "phrasing", "distractors", "noise"]))
    rng = random.Random(0)
    shuffled = plant(GSM, "shuffled", families["shuffled"], rng)
    assert shuffled is not None and "\n" not in shuffled.question and "First, " in shuffled.question
    assert shuffled.question.endswith("How many clips did she sell?")  # the question stays last
    distracted = plant(GSM, "distractors", families["distractors"], rng)
    assert len(distracted.question) > len(GSM.question) and distracted.answer == "72"
    assert plant(GSM, "phrasing", families["phrasing"], rng) is None  # knows only bAbI's questions: no copy


def test_planted_copies_take_turns_and_skip_a_family_that_changes_nothing():
    train = [Sample(id=f"g{i}", system="", question=GSM.question, answer="72", target="72") for i in range(20)]
    copies = planted_copies(train, 0.5, resolve_families(["phrasing", "noise", "distractors"]), seed=1)
    assert len(copies) == 10 and len({i for i, _, _ in copies}) == 10
    assert {f for _, f, _ in copies} == {"noise", "distractors"}  # phrasing never applies here
    assert copies == planted_copies(train, 0.5, resolve_families(["phrasing", "noise", "distractors"]), seed=1)
    assert planted_copies(train, 0.0, resolve_families(["noise"]), seed=1) == []
    with pytest.raises(UserError, match="signals.planted_families"):
        resolve_families(["nosuch"])


def _signals(rng, shift):
    return {"q_nll": 2 + rng.normal(), "q_top": 6 + shift + rng.normal(), "a_loss": 1 + rng.normal() * 0.1, "ifd": 0.5,
            "a_alone": 2.0}


def test_the_detector_learns_what_tells_copies_apart_and_reports_it_out_of_fold():
    rng = np.random.default_rng(0)
    originals = {f"s{i}": _signals(rng, 0.0) for i in range(60)}
    copies = [{"sample_id": f"s{i}", "family": "noise" if i % 2 else "distractors", **_signals(rng, 3.0)} for i in range(20)]
    det = fit_detector(originals, copies)
    assert det["copies"] == 20 and det["originals"] == 60 and det["auc"] > 0.9 and set(det["by_family"]) == {"noise", "distractors"}
    assert det["coef"][det["features"].index("q_top")] > 0  # it learnt the direction from the copies alone
    low, high = presentation_score(det, _signals(rng, -1.0)), presentation_score(det, _signals(rng, 5.0))
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert presentation_score(det, {"q_nll": None, "q_top": 1.0, "a_loss": 1.0, "ifd": 1.0}) is None
    assert presentation_score(None, _signals(rng, 0.0)) is None
    # Copies that read like the originals: the out-of-fold AUC says the detector cannot find them.
    blind = fit_detector(originals, [{"sample_id": f"s{i}", "family": "noise", **_signals(rng, 0.0)} for i in range(20)])
    assert abs(blind["auc"] - 0.5) < 0.2
    assert fit_detector(originals, copies[:3]) is None  # too few copies for the folds


def test_a_run_plants_copies_reports_the_calibration_and_routes_by_it(tiny_dir, tmp_path, monkeypatch, capsys):
    from test_e2e import KEY

    from fake_openai import FakeOpenAI

    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": "presentation"},
                           task={"name": "babi", "n_train": 24, "n_heldout": 4, "seed": 3}, signals={"planted_share": 0.5})
        assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    planted = rows(run, "SELECT * FROM planted")
    train = {r["id"]: r["question"] for r in rows(run, "SELECT id, question FROM samples WHERE split = 'train'")}
    assert len(planted) == 12 and all(p["question"] != train[p["sample_id"]] and p["q_top"] > 0 for p in planted)
    metrics = json.loads((run / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["copies"] == 12 and cal["originals"] == 24 and 0.0 <= cal["auc"] <= 1.0
    assert f"presentation detector: finds 12 planted copies it was not fitted on with AUC {cal['auc']:.2f}" in capsys.readouterr().out
    decisions = rows(run, "SELECT * FROM decisions WHERE path = 'signal'")
    assert decisions and all(d["reason"].startswith("presentation score ") and "n/a" not in d["reason"] for d in decisions)
    # The copies are never trained on or exported.
    assert not rows(run, "SELECT * FROM signals WHERE sample_id LIKE '%\t%'")
    assert len((run / "augmented.jsonl").read_text().splitlines()) == 24


def test_the_presentation_policy_is_refused_without_planted_copies(tiny_dir, tmp_path, capsys):
    cfg = write_config(tmp_path, tiny_dir, None, policy={"name": "presentation"}, signals={"planted_share": 0.0})
    assert main(["run", str(cfg), "--dry-run"]) != 0
    assert "signals.planted_share" in capsys.readouterr().err
