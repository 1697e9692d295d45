"""bench/gpu_check.sh --cpu-smoke runs all three parts of the GPU check and reports them truthfully, so the script is
known to work before a GPU machine is borrowed for it."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-GPU-CHECK-SECRET-0123456789"
# Names only the check makes (its run folder, its pytest report): found in the repository, they would mean it wrote
# there instead of in its temporary folder. Generic names (runs/, .pytest_cache) could be another job's.
LEFTOVERS = ("gpu-check", "gpu-tests.xml")


def _check(*args, timeout=300):
    env = {**os.environ, "NSLORA_GPU_CHECK_KEY": KEY}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert KEY not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(lines[0]), "the summary must be the last line"
    return proc.returncode, json.loads(lines[0])


def _new_leftovers(since: float) -> list[Path]:
    tops = [p for p in ROOT.iterdir() if p.name not in (".venv", ".git")]  # the venv alone is ~2 GB to walk
    files = [f for top in tops for f in ([top] if top.is_file() else [top, *top.rglob("*")])]
    return [f for f in files if f.name in LEFTOVERS and f.stat().st_mtime >= since]


@pytest.fixture(scope="module")
def smoke():
    started = time.time()
    rc, line = _check("--cpu-smoke")
    assert not Path(line["tmp"]).exists(), "the temporary folder was not removed"
    assert not _new_leftovers(started)
    return rc, line


def test_cpu_smoke_passes_every_part(smoke):
    rc, line = smoke
    assert (rc, line["status"], line["failed"], line["mode"]) == (0, "ok", [], "cpu-smoke"), line
    assert list(line["parts"]) == ["gpu_tests", "grad_norm", "routed_run"]
    for part in line["parts"].values():
        assert part["rc"] == 0 and part["seconds"] > 0


def test_gpu_tests_exist_and_skip_themselves_without_cuda(smoke):
    gpu = smoke[1]["parts"]["gpu_tests"]
    assert gpu["status"] == "skipped" and gpu["passed"] == 0 and gpu["skipped"] == gpu["tests"] >= 3


def test_grad_norm_bench_reports_every_mode(smoke):
    bench = smoke[1]["parts"]["grad_norm"]
    assert bench["status"] == "ok" and bench["model"] == "tiny" and bench["device"] == "cpu"
    for key in ("step_seconds", "peak_mb"):
        assert set(bench[key]) == {"off", "fast", "naive"} and all(v > 0 for v in bench[key].values())


def test_routed_run_routed_samples_symbolic_through_the_fake_server(smoke):
    run = smoke[1]["parts"]["routed_run"]
    assert run["status"] == "ok" and run["model_params"] > 0
    # 8 samples, all wrong, p = 0.5: 4 symbolic in the one routing round (epoch 2), one rewrite call each.
    assert (run["train"], run["heldout"], run["routing_rounds"], run["decisions"]) == (8, 4, 1, 8)
    assert run["symbolic"] == run["rewrites_accepted"] == run["rewritten_samples"] == 4
    assert run["server"]["chat_requests"] == run["llm_calls"] == 4 and run["server"]["served"] == {"ok": 4}
    assert all(0.0 <= v <= 1.0 for v in run["heldout_accuracy"].values())
    assert 0 < run["wall_seconds"] <= run["seconds"]


def test_a_failing_part_makes_the_check_fail(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_check

    ok = {"status": "ok", "rc": 0, "seconds": 1.0}
    line, rc = gpu_check.summarise({"a": ok, "b": {**ok, "status": "skipped"}}, "gpu", time.perf_counter(), tmp_path)
    assert (rc, line["status"]) == (0, "ok")
    line, rc = gpu_check.summarise({"a": ok, "b": {**ok, "status": "failed", "rc": 3}}, "gpu", time.perf_counter(), tmp_path)
    assert (rc, line["status"], line["failed"]) == (1, "failed", ["b"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine this would run the whole GPU check")
def test_without_cuda_the_full_check_refuses_at_once():
    rc, line = _check(timeout=120)
    assert rc == 2 and line["status"] == "failed" and "--cpu-smoke" in line["parts"]["cuda"]["note"]
