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
        from tasks import load_task
        import dataclasses

        _, train, heldout = load_task(dataclasses.replace(cfg.task, path=str(data)))
        assert len(train) == cfg.task.n_train and len(heldout) == cfg.task.n_heldout
