"""The Python API (nslora.py): the example of docs/guides/python-api.md runs as written, on the tiny model."""

import re
from pathlib import Path

import pytest

import nslora
from test_e2e import tiny_dir  # noqa: F401  (fixture)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "python-api.md"


def test_the_guides_python_example_runs(tiny_dir, tmp_path, monkeypatch, capsys):
    block = re.search(r"# Python API.*?```python\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    real = nslora.load_config
    tiny = [f"model.name_or_path={tiny_dir}", "model.max_length=1024", "lora.r=4", "lora.target_modules=[q_proj,v_proj]", "lora.top_layers=null",
            "train.lr=0.01", "rewriter.strategy=rules", f"run.out_dir={tmp_path / 'runs'}", "run.progress=false"]
    # The example as written, only the model swapped for the tiny one and the runs kept in a temporary folder.
    monkeypatch.setattr(nslora, "load_config", lambda path=None, overrides=None: real(path, (overrides or []) + tiny))
    exec(compile(block, str(GUIDE), "exec"), {})
    printed = capsys.readouterr().out
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if (d / "metrics.json").is_file()]
    assert str(run_dir) in printed and (tmp_path / "runs" / "merged" / "config.json").is_file()
    assert (tmp_path / "runs" / "train.jsonl").is_file()


def test_api_errors_are_user_errors(tmp_path):
    with pytest.raises(nslora.UserError, match="unknown key"):
        nslora.load_config(overrides=["train.nope=1"])
    with pytest.raises(nslora.UserError, match="not a run folder"):
        nslora.resume(tmp_path)
    with pytest.raises(nslora.UserError, match="needs merged="):
        nslora.export(tmp_path)
