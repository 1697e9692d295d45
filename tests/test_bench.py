"""The benchmark scripts run and print their JSON line (on the tiny model; timings are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _json_line(args, timeout=300):
    env = {**os.environ, "BENCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("top", [None, 1])
def test_overhead_bench_runs_both_arms(top):
    extra = [] if top is None else ["--top-layers", str(top)]
    out = _json_line(["bench/overhead.py", "--model", "tiny", "--rounds", "1", "--samples", "8", "--batch", "4", *extra])
    assert out["steps_per_epoch"] == 2 and out["routed_decisions_per_epoch"] == 8
    assert out["lora_top_layers"] == top and out["input_pass_seconds"][0] > 0
    assert out["stamp"]["commit"] and out["stamp"]["config_hash"]
    for over in ("trl", "trl_padding_free"):
        # The input pass is timed apart from the epoch, and the ratio with it is the larger.
        assert 0 < out[f"median_ratio_routed_over_{over}"] < out[f"median_ratio_routed_with_input_pass_over_{over}"]


@pytest.mark.parametrize("model", ["tiny"])
def test_grad_norm_bench_reports_every_mode(model):
    out = _json_line(["bench/grad_norm.py", "--model", model, "--steps", "1", "--batch", "2"])
    assert set(out["step_seconds"]) == {"off", "fast", "naive"} and set(out["peak_mb"]) == {"off", "fast", "naive"}


def test_route_round_bench_decides_every_candidate_in_both_designs():
    out = _json_line(["bench/route_round.py", "--sizes", "40", "1200"])
    assert [r["candidates"] for r in out["rounds"]] == [40, 1200] and out["chunk"] == 1000
    assert out["rounds"][1]["size_ratio"] == 30 and out["rounds"][1]["chunked_s"] > 0


def test_scale_bench_measures_each_size_and_a_full_run():
    out = _json_line(["bench/scale.py", "--sizes", "40", "80", "--real-n", "30"], timeout=600)
    rows = out["head"]["stubbed"]
    assert [r["n"] for r in rows] == [40, 80] and "baseline" not in out
    for r in rows:
        # ~90% of the samples are misclassified by the stubbed trainer: two rounds of that many candidates, p = 0.1.
        assert [x["epoch"] for x in r["rounds"]] == [2, 3]
        assert all(0.8 * r["n"] <= x["candidates"] <= r["n"] and x["rewrites"] >= 1 for x in r["rounds"])
        assert r["graph_sqlite_mb"] > 0 and r["report_html_mb"] > 0 and r["inspect_s"] > 0 and r["inspect_peak_rss_mb"] > 0
    assert out["head"]["growth"][0]["from"] == 40 and out["head"]["growth"][0]["to"] == 80
    assert out["head"]["full_run"]["stubbed_trainer"] is False and out["head"]["full_run"]["rounds"]


def test_dynamics_cost_bench_times_both_on_the_same_batches():
    out = _json_line(["bench/dynamics_cost.py", "--model", "tiny", "--rounds", "3"])
    assert out["rounds"] == 3 and out["step_ms_median"] > 0 and out["stats_ms_median"] > 0
    assert out["stats_share_of_step_median"] > 0 and out["goal"] == 0.02


def test_input_cost_bench_times_the_base_model_pass_against_an_epoch():
    out = _json_line(["bench/input_cost.py", "--model", "tiny", "--samples", "8", "--rounds", "2"])
    assert out["samples"] == 8 and len(out["epoch_s"]) == 2 and len(out["inputs_s"]) == 2
    assert all(x > 0 for k in ("epoch_s", "inputs_s", "no_prefix_s", "full_head_s") for x in out[k]) and out["goal"] == 0.10
    assert out["inputs_share_of_epoch_median"] > 0 and out["full_head_share_of_epoch_median"] > 0
