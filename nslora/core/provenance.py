"""Which code produced a number: the stamp a run's metrics.json and every results table carry, and the check that
finds a results file older than the code that computes its numbers.

A stamp holds the commit (and whether the working tree had uncommitted changes), the date, a hash of the config,
and the sha256 of each source file that computes held-out numbers (SOURCES: the scorers, the trainer and held-out
generation, the statistics). Staleness is judged by those contents, not by commit order, so a table produced from
uncommitted code and committed with it is fresh, and a change to a scorer makes every table scored by it stale
until it is produced again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# The code every held-out number goes through: how a reply is scored, how the model is trained and answers, and
# how accuracies become means, intervals and MDEs.
SOURCES = ("nslora/tasks/scoring.py", "adapters/train.py", "adapters/signals.py", "adapters/generate.py",
           "nslora/report/stats.py")
# Where a source moved into the nslora namespace: stamps made before the move name the old path.
MOVED = {"tasks/scoring.py": "nslora/tasks/scoring.py", "report/stats.py": "nslora/report/stats.py"}
_NAMESPACED_IMPORT = re.compile(r"^(\s*(?:from|import) )nslora\.", re.MULTILINE)


def current(rel: str) -> str:
    """The path a stamped source has now."""
    return MOVED.get(rel, rel)


def code_hash(text: str) -> str:
    """sha256 (first 16 hex digits) of a source file, read as if its imports did not name the nslora namespace:
    moving a module into the namespace changes how it is imported, not the numbers it computes."""
    return hashlib.sha256(_NAMESPACED_IMPORT.sub(r"\1", text).encode()).hexdigest()[:16]


def file_hashes(root: Path = ROOT, sources: tuple[str, ...] = SOURCES) -> dict[str, str]:
    """code_hash of each source file as it is now (a moved one at its new path); a missing file hashes as "missing"."""
    out = {}
    for rel in sources:
        path = root / current(rel)
        out[rel] = code_hash(path.read_bytes().decode("utf-8")) if path.is_file() else "missing"
    return out


def config_hash(config: Any) -> str | None:
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> str:
    """The machine in words: CPU model, cores, memory and any CUDA device (a figure means little without it)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores"]
    try:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(parts)


def stamp(config: Any = None, root: Path = ROOT, sources: tuple[str, ...] = SOURCES) -> dict[str, Any]:
    """{commit, dirty, date, machine, config_hash, sources}; commit is None outside a git checkout (an installed wheel)."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "config_hash": config_hash(config), "sources": file_hashes(root, sources)}


def stale(results: dict[str, Any], root: Path = ROOT) -> str | None:
    """Why a results table no longer matches the code (one line), or None when it does."""
    st = results.get("stamp")
    if not isinstance(st, dict) or not isinstance(st.get("sources"), dict):
        return "it has no stamp (produced before stamps existed): produce it again"
    now = file_hashes(root, tuple(st["sources"]))
    changed = [rel for rel, h in st["sources"].items() if now.get(rel) != h]
    if changed:
        return f"{', '.join(changed)} changed since commit {str(st.get('commit'))[:10]} produced it: produce it again"
    if results.get("runs_code_matches") is False:
        return "some of its runs were produced by other code than the table (reused runs): rerun them"
    return None


# What a run's own numbers go through; the statistics (nslora/report/stats.py) act on the table alone.
RUN_SOURCES = tuple(s for s in SOURCES if s != "nslora/report/stats.py")


def runs_match(run_stamps: list[dict[str, Any] | None], table_stamp: dict[str, Any]) -> bool:
    """Whether every run was trained and scored by the same files as the table (runs are reused across invocations
    of an experiment, so a table can gather runs made by older code)."""
    def run_part(sources: Any) -> dict[str, Any] | None:
        if not isinstance(sources, dict):
            return None
        by_path = {current(k): h for k, h in sources.items()}
        return {k: by_path.get(k) for k in RUN_SOURCES}

    return all(isinstance(s, dict) and run_part(s.get("sources")) == run_part(table_stamp["sources"]) for s in run_stamps)


def footer(st: dict[str, Any]) -> str:
    """The line under a markdown table that says what produced it."""
    commit = (st.get("commit") or "unknown")[:10] + (" with uncommitted changes" if st.get("dirty") else "")
    on = f" on {st['machine']}" if st.get("machine") else ""
    return f"Produced by commit {commit} on {st['date']}{on} (config {st.get('config_hash') or '—'})."
