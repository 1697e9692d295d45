"""Every shipped config parses, names its launch command first, and its data loads when present."""

from pathlib import Path

import pytest

from router.config import load

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_opens_with_its_command(path):
    cfg = load(str(path))
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "nslora run configs/" + path.name in first
    if cfg.task.path:
        data = (path.parents[1] / cfg.task.path).resolve()
        if not data.exists():
            pytest.skip(f"{data} not on this machine")
        from nslora.tasks import load_task
        import dataclasses

        _, train, heldout = load_task(dataclasses.replace(cfg.task, path=data))
        assert len(train) == cfg.task.n_train and len(heldout) == cfg.task.n_heldout


EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "configs" / "experiments").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_config_parses_and_opens_with_its_command(path):
    from nslora.commands.experiment import load_experiment

    exp, base = load_experiment(str(path))
    root = Path(__file__).resolve().parents[1]
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and f"nslora experiment {path.relative_to(root)}" in first
    if exp.baseline == "lora-only":  # the paper's comparison (fault-cost.yaml measures families against lora-clean)
        assert len(exp.seeds) >= 3 and exp.arms[0] == "lora-only" and "reward" in exp.arms
    else:
        assert exp.baseline in exp.arms and exp.arms[0] == exp.baseline
    if path.parent.name == "gpu":  # paper scale: an external engine, TextGrad, data the user provides
        assert base["rewriter"]["engine"] == "openai" and base["rewriter"]["strategy"] == "textgrad"
        return
    data = None  # the controlled benchmark generates its own stories
    if base["task"]["path"] is not None:
        data = str((root / base["task"]["path"]).resolve())
        if not Path(data).exists():
            pytest.skip(f"{data} not on this machine")
    import dataclasses

    from router.config import from_dict
    from nslora.tasks import load_task

    cfg = from_dict(base)
    _, train, heldout = load_task(dataclasses.replace(cfg.task, path=data))
    assert len(train) == cfg.task.n_train and len(heldout) == cfg.task.n_heldout


def test_the_controlled_benchmark_is_the_policy_bench_at_more_held_out_items_and_seeds():
    """fault-cost.yaml and controlled.yaml share one experiment folder (lora-clean and lora-only run once), which
    needs identical run sections; both are `nslora policy bench`'s default with 512 held-out items, so a rule
    checked with the bench is checked at the benchmark's settings."""
    from nslora.commands.experiment import Experiment, load_experiment
    from nslora.commands.policy_bench import bench_config

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    (cost, cost_base), (full, full_base) = (load_experiment(str(root / f"{n}.yaml")) for n in ("fault-cost", "controlled"))
    assert cost.name == full.name and cost_base == full_base
    # One folder, two tables: neither config's results overwrite the other's.
    cost_exp, full_exp = Experiment(cost, cost_base), Experiment(full, full_base)
    assert cost_exp.root == full_exp.root
    assert {cost_exp.table_json.name, cost_exp.table_md.name} == {"fault-cost.json", "fault-cost.md"}
    assert {full_exp.table_json.name, full_exp.table_md.name} == {"results.json", "results.md"}
    assert set(cost.arms) & set(full.arms) == {"lora-clean", "lora-only"} and len(cost.seeds) >= 5
    bench = bench_config(["task.n_heldout=512"])
    for section in ("model", "lora", "task", "train", "saturation", "rewriter", "signals", "policy"):
        assert full_base[section] == bench[section], section
    # What the faults cost is measured with LoRA alone: a family arm left to the default policy would be routed.
    for arm in cost.arms:
        assert cost.changes(arm).get("policy.name") == "lora-only", f"fault-cost arm {arm} routes samples"


def test_a_shipped_config_is_found_by_its_name_from_any_folder(tmp_path, monkeypatch):
    from nslora.core.errors import UserError
    from router.config import config_file, load, shipped_configs, shipped_names

    monkeypatch.chdir(tmp_path)  # outside the checkout: only the shipped configs can answer
    assert config_file("babi") == shipped_configs() / "babi.yaml"
    assert config_file("experiments/controlled.yaml") == shipped_configs() / "experiments" / "controlled.yaml"
    assert load("gsm8k").task.name == "gsm8k"
    assert {"babi", "experiments/controlled", "experiments/fault-cost"} <= set(shipped_names())
    (tmp_path / "babi").write_text("task: {name: clinifact}\n")  # a file of the user's own wins over a shipped name
    assert config_file("babi") == Path("babi") and load("babi").task.name == "clinifact"
    with pytest.raises(UserError, match=r"config file bavi does not exist; .* shipped config: .*babi"):
        load("bavi")
