"""Bad input: a one-line error naming the problem and the fix, exit code 2, no traceback, no run folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nslora.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, tmp_path, capsys):
    code = main(["run", *args, "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.progress=false"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def gsm8k_file(tmp_path):
    def write(rows):
        p = tmp_path / "gsm.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return p
    return write


def test_missing_column(tmp_path, capsys, gsm8k_file):
    p = gsm8k_file([{"question": "What is 1 + 1?", "solution": "#### 2"}] * 3)
    code, err = run_cli(["--set", "task.name=gsm8k", "--set", f"task.path={p}"], tmp_path, capsys)
    assert code == 2 and "answer" in err and str(p) in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_empty_data_set(tmp_path, capsys, gsm8k_file):
    p = gsm8k_file([])
    code, err = run_cli(["--set", "task.name=gsm8k", "--set", f"task.path={p}"], tmp_path, capsys)
    assert code == 2 and "empty" in err.lower() and str(p) in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_model_path_that_does_not_exist(tmp_path, capsys):
    code, err = run_cli(["--set", f"model.name_or_path={tmp_path / 'no-model'}"], tmp_path, capsys)
    assert code == 2 and "model.name_or_path" in err and "does not exist" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epocs: 3\n")
    code, err = run_cli([str(cfg)], tmp_path, capsys)
    assert code == 2 and "unknown key 'train.epocs'" in err and "valid keys" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_unreachable_rewriter_endpoint(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.setenv("NSLORA_TEST_KEY", "sk-test-SECRET")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run_cli(["--set", "rewriter.engine=openai", "--set", "rewriter.strategy=direct", "--set", f"rewriter.base_url=http://127.0.0.1:{port}/v1",
                         "--set", "rewriter.api_key_env=NSLORA_TEST_KEY"], tmp_path, capsys)
    assert code == 2 and "unreachable" in err and str(port) in err and "SECRET" not in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_the_real_console_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nslora.commands.cli", "run", "--set", "saturation.p=2"], cwd=tmp_path,
                          capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "nslora: error: saturation.p=2.0 must be in (0, 1]"
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_help_on_every_command():
    out = subprocess.run([sys.executable, "-m", "nslora.commands.cli", "run", "--help"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "saturation.k" in out.stdout and "--set" in out.stdout
