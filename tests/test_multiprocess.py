"""Two processes (torchrun, gloo on CPU) give the same decisions and metrics as one process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from test_e2e import KEY, rows, write_config

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg: Path, processes: int, cwd: Path) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [torchrun, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "nslora.commands.cli", "run", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NSLORA_TEST_KEY": KEY, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("policy", ["loss-ratio"])
def test_two_processes_match_one(tiny_dir_mp, tmp_path, policy):
    results = {}
    requests = {}
    for n in (1, 2):
        work = tmp_path / f"p{n}"
        work.mkdir()
        with FakeOpenAI() as srv:
            # batch 5 over 2 processes: uneven slices (3 + 2) and a short last batch (12 = 5 + 5 + 2).
            cfg = write_config(work, tiny_dir_mp, srv.base_url, train={"batch_size": 5}, policy={"name": policy})
            proc = _launch(cfg, n, work)
            assert proc.returncode == 0, proc.stderr[-3000:]
            requests[n] = len(srv.chat_requests())
        results[n] = work / "runs" / "r"
        if n == 2:
            assert proc.stdout.count("held-out accuracy") == 1  # one summary, from the main process
    one, two = results[1], results[2]
    assert [json.loads(r["value"]) for r in rows(two, "SELECT value FROM meta WHERE key='processes'")] == [2]
    assert [json.loads(r["value"]) for r in rows(one, "SELECT value FROM meta WHERE key='processes'")] == [1]
    drop = lambda rs, keys: [{k: v for k, v in r.items() if k not in keys} for r in rs]
    assert drop(rows(one, "SELECT * FROM decisions ORDER BY epoch, sample_id"), ("confidence", "reason")) == \
        drop(rows(two, "SELECT * FROM decisions ORDER BY epoch, sample_id"), ("confidence", "reason"))
    r1 = rows(one, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    r2 = rows(two, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    assert drop(r1, ("engine", "seconds")) == drop(r2, ("engine", "seconds")) and r1
    assert requests[1] == requests[2]  # only the main process called the rewriter
    s1 = rows(one, "SELECT * FROM signals ORDER BY epoch, sample_id")
    s2 = rows(two, "SELECT * FROM signals ORDER BY epoch, sample_id")
    assert [(r["epoch"], r["sample_id"], r["prompt_version"], r["correct"]) for r in s1] == \
        [(r["epoch"], r["sample_id"], r["prompt_version"], r["correct"]) for r in s2]
    for a, b in zip(s1, s2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["c2"] == pytest.approx(b["c2"], rel=1e-3, abs=1e-5)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["heldout_accuracy"] == m2["heldout_accuracy"]
    assert {k: v for k, v in m1["counts"].items()} == {k: v for k, v in m2["counts"].items()}


@pytest.fixture(scope="module")
def tiny_dir_mp(tmp_path_factory):
    from tiny import make_tiny

    d = tmp_path_factory.mktemp("tiny-model-mp")
    make_tiny(d)
    return d
