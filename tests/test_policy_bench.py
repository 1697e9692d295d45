"""`nslora policy bench`: a user's routing class and a user's fault family run through the small controlled
benchmark; the reference runs are reused; the printout scores the routing against the planted faults."""

import json
import os
import sys
import textwrap

import pytest
import torch

from nslora.commands.cli import main
from nslora.commands.experiment import ExperimentConfig, _arm_sets
from nslora.commands.policy_bench import BENCH_DEFAULT, policy_arm
from test_e2e import tiny_dir  # noqa: F401  (fixture)

torch.set_num_threads(1)

USER_CODE = {
    "my_bench_faults.py": '''
        import dataclasses
        def upper_question(sample, rng):
            lines = sample.question.split("\\n")
            return dataclasses.replace(sample, question="\\n".join(lines[:-1] + [lines[-1].upper()]))
    ''',
    # Routes exactly the samples whose question is shouting: it reads the text, as any content rule would.
    "my_bench_policy.py": '''
        from policies.base import Decision, Policy
        class Shouting(Policy):
            name = "shouting"
            needs_saturation = False
            def decide(self, view):
                last = view.question.strip().split("\\n")[-1]
                loud = last.isupper()
                return Decision("symbolic" if loud else "numerical", 1.0, "question in capitals" if loud else "plain question")
    ''',
}


def tiny_sets(tiny_dir):
    return [f"model.name_or_path={tiny_dir}", "model.max_length=1024", "lora.r=4", "lora.alpha=8", "lora.top_layers=null",
            "lora.target_modules=[q_proj,v_proj]", "task.n_train=16", "task.n_heldout=8", "train.batch_size=4", "train.lr=0.01", "train.epochs=3",
            "train.max_new_tokens=4", "train.eval_batch_size=8", "saturation.k=1e9", "saturation.p=1.0",
            "task.params.families=[my_bench_faults:upper_question]"]


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    for name, code in USER_CODE.items():
        (tmp_path / name).write_text(textwrap.dedent(code))
        sys.modules.pop(name[:-3], None)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))


def _set_args(sets):
    return [x for s in sets for x in ("--set", s)]


def test_a_users_policy_and_fault_family_run_through_policy_bench(tiny_dir, user_code, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["policy", "bench", "my_bench_policy:Shouting", "--out", str(out), *_set_args(tiny_sets(tiny_dir))]) == 0
    printed = capsys.readouterr().out
    (root,) = list(out.iterdir())
    table = json.loads((root / "results.json").read_text())
    assert [r["arm"] for r in table["arms"]] == ["lora-only", "lora-clean", "my_bench_policy-Shouting"]
    metrics = json.loads((root / "my_bench_policy-Shouting" / "seed-0" / "metrics.json").read_text())
    routing = metrics["routing"]
    # The rule sees every planted (shouted) question and nothing else: perfect precision and recall, every round.
    share = BENCH_DEFAULT["task"]["params"]["fault_share"]
    assert routing["planted"] == round(16 * share) and routing["total"]["precision"] == 1.0 and routing["total"]["recall"] == 1.0
    assert routing["cumulative_recall"] == 1.0
    assert "my_bench_policy-Shouting - lora-only:" in printed and "with 80% power" in printed
    assert "seed  round  candidates" in printed and "faulty samples ever routed: 1.00" in printed
    assert "headroom lora-clean - lora-only" in printed

    # A second bench of the same settings reuses both reference runs and reruns only the policy's arm.
    stamps = {a: (root / a / "seed-0" / "metrics.json").stat().st_mtime_ns for a in ("lora-only", "lora-clean")}
    # Two rules in one bench: both on the same reference runs, then one line each, side by side.
    assert main(["policy", "bench", "oracle", "random", "--out", str(out), *_set_args(tiny_sets(tiny_dir))]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(finished earlier)") == 2 and list(out.iterdir()) == [root]
    assert {a: (root / a / "seed-0" / "metrics.json").stat().st_mtime_ns for a in stamps} == stamps
    oracle = json.loads((root / "oracle" / "seed-0" / "metrics.json").read_text())["routing"]
    assert oracle["total"]["precision"] == 1.0
    table = json.loads((root / "results.json").read_text())
    assert [r["arm"] for r in table["arms"]] == ["lora-only", "lora-clean", "oracle", "random"]
    assert printed.count("policy bench: ") == 2
    head, *lines = printed[printed.index("policy                      F1"):].splitlines()[:3]
    assert "recovered [95% CI]" in head and [ln.split()[0] for ln in lines] == ["oracle", "random"]
    rnd = json.loads((root / "random" / "seed-0" / "metrics.json").read_text())["routing"]["total"]
    assert lines[0].split()[3] == "1.00" and lines[1].split()[1] == f"{rnd['f1']:.2f}"
    assert printed.count("AUC of each signal against") == (1 if table.get("detection") else 0)  # once, not per rule
    # bench.json keeps what was printed beside the table it came from, to quote figures from.
    bench = json.loads((root / "bench.json").read_text())
    assert bench["command"].startswith("nslora policy bench oracle random --set ") and bench["wall_seconds"] > 0
    assert "\n".join(bench["printed"]) in printed and head in bench["printed"] and bench["arms"] == table["arms"]


@pytest.mark.parametrize("spec,message", [
    ("nope", "is not a built-in policy"),
    ("reward", "needs its folder"),
    ("no_such_module:Cls", "no_such_module"),
])
def test_policy_bench_refuses_a_bad_policy_in_one_line(spec, message, tmp_path, capsys):
    assert main(["policy", "bench", spec, "--out", str(tmp_path / "bench")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "bench").exists()


def test_policy_arm_names_and_the_reward_arms_of_an_experiment(tmp_path):
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "policy.json").write_text("{}")
    assert policy_arm("loss-ratio") == ("loss-ratio", {"policy.name": "loss-ratio"})
    assert policy_arm(str(tmp_path / "pol")) == ("reward-pol", {"policy.name": "reward", "policy.path": str(tmp_path / "pol")})
    assert policy_arm("pkg.mod:Cls") == ("pkg.mod-Cls", {"policy.name": "pkg.mod:Cls"})
    exp = ExperimentConfig(arms=["reward-early", "loss-ratio", "lora-only"], seeds=[0])
    assert exp.is_reward("reward-early") and not exp.is_reward("loss-ratio")
    sets = _arm_sets(exp, "reward-early", tmp_path / "policy", 4)
    assert "policy.params.needs_saturation=false" in sets and f'policy.path="{tmp_path / "policy"}"' in sets
    with pytest.raises(Exception, match="reward arm but not lora-only"):
        ExperimentConfig(arms=["reward-early", "loss-ratio"], baseline="loss-ratio", seeds=[0])
