"""Stamps say which code and config produced a number; a results table whose scorer, trainer or statistics changed
since is stale; every table in results/ is fresh (or listed below as produced before stamps existed)."""

import json
import subprocess
from pathlib import Path

import pytest

from nslora.core import provenance

ROOT = Path(__file__).resolve().parents[1]

# Bench lines: timings, stamped with the commit and date but not judged by SOURCES. Every table in results/ is
# stamped; the check below fails for a file here that has a table stamp, and for any table unstamped or stale.
UNSTAMPED = {"overhead.json", "scale.json", "scale-full.json", "scale-issue24.json", "speed.json", "speed-last-layer.json"}


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_a_stamp_names_the_commit_whether_the_tree_was_clean_and_hashes_config_and_sources(tmp_path):
    (tmp_path / "nslora" / "tasks").mkdir(parents=True)
    (tmp_path / "nslora" / "tasks" / "scoring.py").write_text("def score(): return 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "one")
    sources = ("nslora/tasks/scoring.py", "nslora/report/stats.py")
    st = provenance.stamp({"b": 1, "a": [2]}, root=tmp_path, sources=sources)
    assert len(st["commit"]) == 40 and st["dirty"] is False and st["date"].endswith("+00:00")
    assert st["sources"]["nslora/report/stats.py"] == "missing" and len(st["sources"]["nslora/tasks/scoring.py"]) == 16
    assert st["config_hash"] == provenance.config_hash({"a": [2], "b": 1}) != provenance.config_hash({"a": [3], "b": 1})
    (tmp_path / "nslora" / "tasks" / "scoring.py").write_text("def score(): return 0\n")
    again = provenance.stamp(None, root=tmp_path, sources=sources)
    assert again["dirty"] is True and again["commit"] == st["commit"] and again["config_hash"] is None
    assert again["sources"]["nslora/tasks/scoring.py"] != st["sources"]["nslora/tasks/scoring.py"]
    assert "nslora/tasks/scoring.py changed since commit" in provenance.stale({"stamp": st}, root=tmp_path)
    assert provenance.stale({"stamp": again}, root=tmp_path) is None
    assert "reused runs" in provenance.stale({"stamp": again, "runs_code_matches": False}, root=tmp_path)
    assert "no stamp" in provenance.stale({"arms": []}, root=tmp_path)
    outside = provenance.stamp(None, root=tmp_path / "nslora", sources=())  # not the top of a checkout: still git
    assert outside["commit"] == st["commit"]


def test_a_stamp_made_before_a_module_moved_into_the_namespace_stays_fresh_until_its_code_changes(tmp_path):
    old = "import re\nfrom core import plugins\nfrom tasks.base import Task\n\n\ndef score(): return 1\n"
    st = {"commit": "c" * 40, "sources": {"tasks/scoring.py": provenance.code_hash(old)}}
    moved = tmp_path / "nslora" / "tasks" / "scoring.py"
    moved.parent.mkdir(parents=True)
    moved.write_text(old.replace("from core", "from nslora.core").replace("from tasks", "from nslora.tasks"))
    assert provenance.stale({"stamp": st}, root=tmp_path) is None
    assert provenance.runs_match([st], {"sources": {"nslora/tasks/scoring.py": st["sources"]["tasks/scoring.py"]}})
    moved.write_text(moved.read_text().replace("return 1", "return 2"))
    assert "tasks/scoring.py changed" in provenance.stale({"stamp": st}, root=tmp_path)
    assert provenance.code_hash('x = "nslora.core"\n') != provenance.code_hash('x = "core"\n')  # imports alone


def test_reused_runs_match_a_table_unless_a_file_their_numbers_went_through_changed():
    table = {"sources": {k: "a" for k in provenance.SOURCES}}
    same = {"sources": dict(table["sources"])}
    stats_only = {"sources": {**table["sources"], "nslora/report/stats.py": "b"}}  # acts on the table, not on a run
    scorer = {"sources": {**table["sources"], "nslora/tasks/scoring.py": "b"}}
    assert provenance.runs_match([same, stats_only], table)
    assert not provenance.runs_match([same, scorer], table) and not provenance.runs_match([same, None], table)
    assert "machine" in provenance.stamp() and "cores" in provenance.machine()


def test_a_stamp_outside_a_checkout_has_no_commit(tmp_path):
    st = provenance.stamp(None, root=tmp_path, sources=())
    assert st["commit"] is None and st["dirty"] is None and "unknown" in provenance.footer(st)


def _documents(text):
    """A JSON file's documents: one, or one a line (benches print JSON lines)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _tables():
    for path in sorted((ROOT / "results").glob("*.json")):
        for data in _documents(path.read_text()):
            for table in data if isinstance(data, list) else [data]:
                if isinstance(table, dict) and "arms" in table:
                    yield path.name, table


@pytest.mark.parametrize("name,table", list(_tables()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_results_table_was_produced_by_the_code_at_head(name, table):
    why = provenance.stale(table)
    if name in UNSTAMPED:
        assert "stamp" not in table, f"results/{name} is stamped now: take it off UNSTAMPED"
    else:
        assert why is None, f"results/{name}: {why}"


def test_every_bench_result_names_the_commit_that_produced_it():
    for path in sorted((ROOT / "results").glob("*.json")):
        for line in _documents(path.read_text()):
            if not (isinstance(line, dict) and "bench" in line):
                continue
            if path.name in UNSTAMPED:
                assert "stamp" not in line, f"results/{path.name} is stamped now: take it off UNSTAMPED"
            else:
                assert line.get("stamp", {}).get("commit") and line["stamp"].get("date"), f"results/{path.name} has no stamp"


PACKED = ROOT / "results" / "runs"
# A table tabulated from another table's experiment folder: fault-cost.yaml shares controlled.yaml's (one lora-clean
# and lora-only for both). results/headroom.json is not checked so: it was tabulated from the first runs of those two
# arms, before any routed arm (its point); the packed runs give the same accuracies but other wall times.
PACKED_WITH = {"fault-cost": "controlled"}


def _packed_tables():
    names = sorted(p.stem for p in (ROOT / "results").glob("*.json"))
    return [n for n in names if (PACKED / PACKED_WITH.get(n, n)).is_dir()]


def test_every_packed_experiment_has_its_table():
    packs = {p.name for p in PACKED.iterdir() if p.is_dir()}
    assert packs and packs <= {PACKED_WITH.get(n, n) for n in _packed_tables()}


@pytest.mark.parametrize("name", _packed_tables())
def test_a_table_with_packed_runs_is_what_those_runs_give_at_head(name):
    """results/runs/<pack>/ holds what the table reads of the runs behind results/<name>.json (`nslora experiment
    --pack`): tabulated again by the code at HEAD they give the committed numbers, so a table can be checked."""
    from nslora.report.stats import arm_table

    table = json.loads((ROOT / "results" / f"{name}.json").read_text())
    arms, seeds = [r["arm"] for r in table["arms"]], table["seeds"]
    runs = {(a, s): PACKED / PACKED_WITH.get(name, name) / a / f"seed-{s}" for a in arms for s in seeds}
    again = arm_table(table["name"], arms, seeds, runs, baseline=table["baseline"], draws=table["bootstrap"],
                      confidence=table["confidence"])
    assert again["runs_code_matches"] and again["stamp"]["sources"] == table["stamp"]["sources"]

    def numbers(t):  # as JSON text: the committed file's form, and NaN equals NaN
        out = {k: v for k, v in t.items() if k not in ("stamp", "note", "detection")}
        out["detection"] = {k: v for k, v in (t.get("detection") or {}).items() if k != "classifier"}
        return json.dumps(out, sort_keys=True)

    assert numbers(again) == numbers(table)
