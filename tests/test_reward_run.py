"""A routed run that uses a trained reward policy: it routes by the classifier, defers inside its band, and the
deferrals are logged per decision and counted in metrics.json; `nslora policy` commands work on run folders."""

import json

import pytest

from fake_openai import FakeOpenAI
from nslora.commands.cli import main
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixtures)
from test_reward import tiny_backbone, trained  # noqa: F401  (fixtures)


@pytest.mark.parametrize("band,expected", [(0.0, {"classifier"}), (1.0, {"fallback"})])
def test_run_routes_by_the_reward_policy_and_counts_deferrals(tiny_dir, trained, tmp_path, monkeypatch, band, expected):
    _, policy_dir = trained
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": "reward", "path": str(policy_dir), "params": {"band": band}},
                           rewriter={"strategy": "direct"})
        assert main(["run", str(cfg)]) == 0
    run_dir = tmp_path / "runs" / "r"
    decisions = rows(run_dir, "SELECT * FROM decisions")
    assert decisions and {d["path"] for d in decisions} == expected
    assert all("P(symbolic)" in d["reason"] or "P=" in d["reason"] for d in decisions if d["path"] == "classifier")
    counts = json.loads((run_dir / "metrics.json").read_text())["counts"]
    assert counts[f"path_{expected.pop()}"] == len(decisions) == counts["decisions"]
    # The budget holds whichever path decided: p = 0.25 of 12 misclassified samples per round.
    assert sum(d["route"] == "symbolic" for d in decisions) == 6


def test_reward_policy_without_a_folder_is_refused_up_front(tmp_path, capsys):
    code = main(["run", "--set", "policy.name=reward", "--set", f"run.out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "policy.path" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    code = main(["run", "--set", "policy.name=reward", "--set", f"policy.path={tmp_path / 'nope'}", "--set", f"run.out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "\n" not in err.strip() and not (tmp_path / "runs").exists()


def test_policy_show_and_eval_commands(trained, tiny_dir, tmp_path, monkeypatch, capsys):
    _, policy_dir = trained
    assert main(["policy", "show", str(policy_dir)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out[: out.rindex("}") + 1])
    assert shown["threshold"] is not None
    page = (policy_dir / "report.html").read_text()
    assert f"report: {policy_dir / 'report.html'}" in out
    assert "<svg" in page or "data:image/png" in page
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": "lora-only"})
        assert main(["run", str(cfg)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "r"
    assert main(["policy", "eval", str(policy_dir), str(run_dir), "--criterion", "c1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["views"] == 12 and report["pairs"] > 0
    for key in ("pairwise_accuracy", "roc_auc", "ece", "agreement_with_fallback", "deferred_share", "symbolic_share"):
        assert 0.0 <= report[key] <= 1.0, key
