"""Optional: a routed run against a real llama.cpp server (llama-cpp-python's), a server no one here wrote, with the
SmolLM2 GGUF as the rewriter. Skipped unless a Python with `llama_cpp.server` is found: this interpreter, or the
one NSLORA_LLAMA_PYTHON names (a venv with `pip install 'llama-cpp-python[server]'`, a 13-minute compile on 2 cores):

    NSLORA_LLAMA_PYTHON=/path/to/venv/bin/python .venv/bin/python -m pytest tests/test_llama_server.py
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from nslora.commands.cli import main
from test_e2e import rows, tiny_dir, write_config  # noqa: F401  (fixture)


def _server_python() -> str | None:
    python = os.environ.get("NSLORA_LLAMA_PYTHON") or sys.executable
    try:
        ok = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if ok else None


PYTHON = _server_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason="no llama_cpp.server: set NSLORA_LLAMA_PYTHON to a Python that has it")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from adapters.model import _SMOLLM2_GGUF, _smollm2_dir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "llama_cpp.server", "--model", str(_smollm2_dir() / _SMOLLM2_GGUF),
                                 "--chat_format", "chatml", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/models", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not answer in 120 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_routed_run_against_llama_cpp_pays_nothing_twice(llama_server, tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", "unused-by-llama-cpp")
    cfg = write_config(tmp_path, tiny_dir, llama_server, train={"epochs": 2}, saturation={"k": 1.0e9, "p": 0.5, "min_epoch": 2},
                       rewriter={"strategy": "textgrad", "model": "smollm2", "max_tokens": 64, "max_retries": 2,
                                 "backoff_base": 0.05, "timeout": 120, "concurrency": 6})
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    llm = json.loads((run / "metrics.json").read_text())["llm"]
    rewrites = rows(run, "SELECT * FROM rewrites")
    assert len(rewrites) == 6 and llm["calls"] > 0 and llm["cost"] is None  # a local model has no price
    for r in rewrites:  # every failure keeps its kind and cause, under a short engine label
        assert r["verdict"] != "error" or (r["failure"] in ("malformed", "timeout", "http") and "openai:smollm2@127.0.0.1:" in r["reason"])
    # llama.cpp's server answers one request at a time: measured, and said.
    assert llm["concurrency_speedup"]["speedup"] < 1.3 and "serial_server" in llm
    capsys.readouterr()
    # The same config again: replies from the cache, deterministic failures remembered: nothing is sent.
    assert main(["run", str(cfg), "--set", "run.name=again"]) == 0
    again = json.loads((tmp_path / "runs" / "again" / "metrics.json").read_text())
    assert again["llm"]["calls"] == 0
    print(capsys.readouterr().out)
