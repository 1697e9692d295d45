"""Config: YAML + --set overrides, with refusals that name the key."""

import pytest

from router.config import Config, load
from nslora.core.errors import UserError


def test_embedded_default_and_overrides_are_typed(tmp_path):
    cfg = load(None, ["train.epochs=3", "lora.target_modules=[q_proj]", "saturation.p=0.2", "rewriter.base_url=http://127.0.0.1:9/v1"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.lora.target_modules == ["q_proj"] and cfg.saturation.p == 0.2
    assert cfg.rewriter.base_url == "http://127.0.0.1:9/v1"
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  name: gsm8k\n  n_train: 5\ntrain:\n  lr: 0.001\n")
    cfg = load(str(path), ["task.n_train=7"])
    assert cfg.task.name == "gsm8k" and cfg.task.n_train == 7 and cfg.train.lr == 0.001


@pytest.mark.parametrize("overrides,msg", [
    (["train.epoch=3"], "unknown key 'train.epoch'"),
    (["trian.epochs=3"], "unknown section 'trian'"),
    (["train.epochs=0"], "train.epochs=0 must be >= 1"),
    (["saturation.p=1.5"], r"saturation.p=1.5 must be in \(0, 1\]"),
    (["saturation.p=0"], "saturation.p=0.0 must be in"),
    (["train.epochs=three"], "train.epochs='three' must be an integer"),
    (["task.name=mnist"], "task.name='mnist' is not a built-in"),
    (["lora.target_modules=[]"], "lora.target_modules is empty"),
    (["epochs=3"], "write it as section.key=value"),
])
def test_bad_config_values_name_the_field(overrides, msg):
    with pytest.raises(UserError, match=msg):
        load(None, overrides)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(str(bad))


def test_exponent_numbers_without_a_dot_are_numbers_in_yaml_and_set(tmp_path):
    # PyYAML reads `lr: 1e-4` as a string; a learning rate written so must still be a number.
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-4\n")
    assert load(str(p)).train.lr == 1e-4
    assert load(None, ["saturation.k=2E3"]).saturation.k == 2000.0
    with pytest.raises(UserError, match="train.lr='fast' must be a number"):
        load(None, ["train.lr=fast"])
