"""A run folder read into plain Python structures: no plotting, no printing, nothing written.

`load_run(path)` reads config.yaml, metrics.json (when the run finished) and every table of run.sqlite; the
functions below it derive what the terminal summary, the HTML report and `compare` show. Everything is computed
from run.sqlite, so a run that is still going (or crashed) can be inspected too.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nslora.report.store_read import LOCK_WAIT, TABLES, ReportError, read_tables  # noqa: F401  (ReportError: re-exported)

VERDICTS = ("accepted", "rejected", "error", "skipped")


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    meta: dict[str, Any]
    samples: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    rewrites: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    timings: list[dict[str, Any]] = field(default_factory=list)  # seconds per (epoch, node); older runs: none
    inputs: list[dict[str, Any]] = field(default_factory=list)  # base-model input signals per prompt version
    planted: list[dict[str, Any]] = field(default_factory=list)  # planted copies (policies/planted.py)
    _by_sample: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def policy(self) -> str:
        return str((self.config.get("policy") or {}).get("name") or self.meta.get("policy") or "?")

    @property
    def train_ids(self) -> list[str]:
        return [s["id"] for s in self.samples if s["split"] == "train"]

    def signals_of(self, sample_id: str) -> list[dict[str, Any]]:
        if not self._by_sample:
            for r in self.signals:
                self._by_sample.setdefault(r["sample_id"], []).append(r)
        return self._by_sample.get(sample_id, [])

    def loss_at(self, sample_id: str, epoch: int) -> float | None:
        for r in self.signals_of(sample_id):
            if r["epoch"] == epoch:
                return r["loss"]
        return None


def load_run(path: str | Path, wait: float | None = None) -> Run:
    """The run folder's contents. Tables an older run did not have are empty; a store another process keeps locked
    is waited for (`wait` seconds, default LOCK_WAIT), then refused in one line, as is any other SQLite error."""
    path = Path(path)
    db_path = path / "run.sqlite"
    packed = not db_path.is_file() and (path / PACKED).is_file()
    if not db_path.is_file() and not packed:
        raise ReportError(f"{path} is not a run folder (no run.sqlite); pass the folder `nslora run` printed")
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    metrics = None
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            metrics = None
    tables = _packed_tables(path) if packed else read_tables(db_path, LOCK_WAIT if wait is None else wait)
    meta = {}
    for r in tables.pop("meta"):
        try:
            meta[r["key"]] = json.loads(r["value"])
        except (TypeError, json.JSONDecodeError):
            meta[r["key"]] = r["value"]
    run = Run(path=path, name=str((config.get("run") or {}).get("name") or path.name), config=config, metrics=metrics,
              meta=meta, **tables)
    for r in run.rewrites:
        try:
            r["scores"] = json.loads(r["scores"]) if r.get("scores") else {}
        except (TypeError, json.JSONDecodeError):
            r["scores"] = {}
    return run


PACKED = "packed.json"  # a packed run's store: the tables an experiment's table reads (nslora/commands/experiment.py)


def _packed_tables(path: Path) -> dict[str, list[dict[str, Any]]]:
    kept = json.loads((path / PACKED).read_text(encoding="utf-8"))
    return {name: kept.get(name, []) for name in TABLES}


def pack_tables(run: Run) -> dict[str, list[dict[str, Any]]]:
    """What a packed run keeps of its store: its meta and the held-out replies' scores at the last evaluation
    (reply texts and every other table stay behind), a few KB instead of the store and adapter."""
    last = max((e["epoch"] for e in run.evals), default=0)
    keep = ("epoch", "sample_id", "correct")
    return {"meta": [{"key": k, "value": json.dumps(v)} for k, v in run.meta.items()],
            "evals": [{k: e[k] for k in keep} for e in run.evals if e["epoch"] == last]}


# ----------------------------------------------------------------------------------------------- per epoch


def heldout_accuracy(run: Run) -> dict[int, float]:
    """Held-out accuracy per epoch (0 = before training), from the stored replies."""
    by_epoch: dict[int, list[int]] = defaultdict(list)
    for r in run.evals:
        by_epoch[r["epoch"]].append(int(r["correct"]))
    acc = {e: sum(v) / len(v) for e, v in sorted(by_epoch.items()) if v}
    if not acc and run.metrics:
        acc = {int(k): v for k, v in run.metrics.get("heldout_accuracy", {}).get("per_epoch", {}).items()}
    return acc


def epoch_table(run: Run) -> list[dict[str, Any]]:
    """One row per trained epoch: loss, train correct, held-out accuracy, saturation, symbolic/accepted, seconds."""
    acc = heldout_accuracy(run)
    rows = []
    for e in run.epochs:
        if e["epoch"] == 0:  # the evaluation before training: no training loss, held-out accuracy only
            continue
        rows.append({**e, "heldout_accuracy": acc.get(e["epoch"], e.get("heldout_accuracy")),
                     "saturated": bool(e.get("saturated"))})
    return rows


def saturation_k(run: Run) -> float | None:
    k = (run.config.get("saturation") or {}).get("k")
    return float(k) if isinstance(k, (int, float)) else None


def values_by_epoch(run: Run, key: str) -> dict[int, list[float]]:
    """C1 or C2 (or loss) of every training sample, per epoch; missing / non-finite values left out."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in run.signals:
        v = r.get(key)
        if v is not None and math.isfinite(v):
            out[r["epoch"]].append(float(v))
    return dict(sorted(out.items()))


_THRESHOLD = re.compile(r"^(C1|C2)\b.*threshold (-?[0-9.]+(?:e-?\d+)?)")


def thresholds(run: Run) -> dict[int, dict[str, float]]:
    """The signal policy's calibrated threshold per routing epoch, read from its decisions' reasons:
    {epoch: {"c1": x} or {"c2": x}}. grad-norm ranks -C2 when it prefers small norms; the value given is on
    the C2 scale."""
    out: dict[int, dict[str, float]] = {}
    for d in run.decisions:
        m = _THRESHOLD.match(d["reason"])
        if not m:
            continue
        value = float(m.group(2))
        key = m.group(1).lower()
        if key == "c2" and value < 0:
            value = -value
        out.setdefault(d["epoch"], {})[key] = value
    return out


def routes_by_epoch(run: Run) -> dict[int, dict[str, Counter]]:
    """{epoch: {path: Counter(route)}} — e.g. {2: {"signal": {"symbolic": 3, "numerical": 9}}}."""
    out: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for d in run.decisions:
        out[d["epoch"]][d["path"]][d["route"]] += 1
    return {e: dict(v) for e, v in sorted(out.items())}


def route_totals(run: Run) -> list[dict[str, Any]]:
    """One row per decision path: how many decisions, symbolic, numerical."""
    c: dict[str, Counter] = defaultdict(Counter)
    for d in run.decisions:
        c[d["path"]][d["route"]] += 1
    return [{"path": p, "decisions": sum(v.values()), "symbolic": v["symbolic"], "numerical": v["numerical"]}
            for p, v in sorted(c.items())]


def evaluations(run: Run) -> list[dict[str, Any]]:
    """The summaries `nslora eval` wrote into this run folder (RUN/evals/<name>/summary.json), by name."""
    out = []
    for f in sorted((run.path / "evals").glob("*/summary.json")) if (run.path / "evals").is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue  # a summary being written right now, or a foreign file: not an evaluation to show
    return out


def routing_quality(run: Run) -> dict[str, Any] | None:
    """Decisions against the planted faults of a controlled run (None for a task without ground truth)."""
    train = [s for s in run.samples if s["split"] == "train"]
    if not any(s.get("fault") for s in train):
        return None
    from policies.quality import score_run

    from policies.planted import score_originals

    original = score_originals({r["sample_id"]: r for r in run.inputs if r["since"] == 0}, run.planted)
    return score_run(run.decisions, run.signals, {s["id"]: s.get("fault") for s in train}, {s["id"]: s.get("kind") for s in train},
                     original)


def quality_rows(q: dict[str, Any]) -> list[list[str]]:
    """The confusion table per round, and the total, as text cells (terminal and HTML alike)."""
    def f(v):
        return "—" if v is None else f"{v:.2f}"

    # FP knowledge: the false positives that are hard-but-clean knowledge samples (— for a run scored before them).
    rows = [[e, str(r["candidates"]), str(r["faulty"]), str(r["symbolic"]), str(r["true_positives"]),
             str(r["symbolic"] - r["true_positives"]), str(r.get("knowledge_routed", "—")), str(r["faulty"] - r["true_positives"]),
             f(r["precision"]), f(r["recall"]), f(r["f1"]), f(r["random"]["f1"])] for e, r in q["rounds"].items()]
    t = q["total"]
    rows.append(["all", "", "", "", "", "", "", "", f(t["precision"]), f(t["recall"]), f(t["f1"]), f(t["random"]["f1"])])
    return rows


QUALITY_HEADERS = ["epoch", "candidates", "faulty", "routed", "TP", "FP", "FP knowledge", "FN", "precision", "recall", "F1",
                   "random F1"]


# ----------------------------------------------------------------------------------------------- rewrites


def reason_kind(reason: str) -> str:
    """The reason without its particulars: "too long (812 chars, limit 400)" -> "too long"."""
    kind = re.split(r"\s+\(|:|\s+['\"]", reason or "", maxsplit=1)[0].strip()
    return kind or (reason or "").strip() or "—"


def rewrite_reasons(run: Run) -> list[dict[str, Any]]:
    """Rewrites counted by verdict and reason kind (failures by their failure kind), most frequent first."""
    c = Counter((r["verdict"], (r.get("failure") if r["verdict"] == "error" else None) or reason_kind(r["reason"]))
                for r in run.rewrites)
    return [{"verdict": v, "reason": k, "count": n}
            for (v, k), n in sorted(c.items(), key=lambda kv: (VERDICTS.index(kv[0][0]) if kv[0][0] in VERDICTS else 9, -kv[1], kv[0][1]))]


def verdict_counts(run: Run) -> dict[str, int]:
    c = Counter(r["verdict"] for r in run.rewrites)
    return {v: c.get(v, 0) for v in VERDICTS} | {k: n for k, n in c.items() if k not in VERDICTS}


def usage(run: Run) -> dict[str, Any]:
    """LLM calls, tokens, cache hits, cost (None when no price was known) and rewrite seconds, over all rewrites."""
    def total(key):
        return sum((r.get(key) or 0) for r in run.rewrites)

    costs = [r["cost"] for r in run.rewrites if r.get("cost") is not None]
    walls = [e["round_seconds"] for e in run.epochs if e.get("round_seconds") is not None]
    unpriced = any(r.get("cost") is None and (r.get("tokens") or 0) > 0 for r in run.rewrites)
    return {"calls": total("calls"), "tokens": total("tokens"), "prompt_tokens": total("prompt_tokens"),
            "completion_tokens": total("completion_tokens"), "cache_hits": total("cache_hits"),
            "cost": None if unpriced else round(sum(costs), 6) if costs else (0.0 if not run.rewrites else None),
            # A round's rewrites overlap: the rounds' wall time is what they took (older folders: the rewrites' sum).
            "seconds": round(sum(walls) if walls else total("seconds"), 3),
            "engines": sorted({r["engine"] for r in run.rewrites})}


def word_diff(a: str, b: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level differences: (segments of a, segments of b), each segment (op, text) with op "same",
    "del" (only in a) or "ins" (only in b). Whitespace is kept, so joining a side's texts gives it back."""
    # Each token is a word with the whitespace after it; words are compared without that whitespace, so a
    # line break that became a space does not count as a change, and runs of changed words stay one segment.
    ta, tb = re.findall(r"^\s+|\S+\s*", a or ""), re.findall(r"^\s+|\S+\s*", b or "")
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(None, [t.strip() for t in ta], [t.strip() for t in tb], autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            left.append(("same", "".join(ta[i1:i2])))
            right.append(("same", "".join(tb[j1:j2])))
        else:
            if i2 > i1:
                left.append(("del", "".join(ta[i1:i2])))
            if j2 > j1:
                right.append(("ins", "".join(tb[j1:j2])))
    return left, right


def rewritten_samples(run: Run) -> list[dict[str, Any]]:
    """Every rewrite attempt with what it changed: original and new (or the refused candidate) question and
    system prompt, verdict, reason, guard scores, and the sample's loss at the rewrite epoch and the next."""
    out = []
    for r in run.rewrites:
        new_q = r["new_question"] if r["new_question"] is not None else None
        shown_q = new_q if new_q is not None else (r.get("candidate") if r["sample_id"] != "*system*" else None)
        new_s = r["new_system"]
        if r["sample_id"] == "*system*" and new_s is None:
            new_s = r.get("candidate")
        after = run.loss_at(r["sample_id"], r["epoch"] + 1)
        before = run.loss_at(r["sample_id"], r["epoch"])
        out.append({
            **{k: r[k] for k in ("epoch", "sample_id", "version", "verdict", "reason", "engine", "strategy", "calls",
                                 "tokens", "cost", "seconds", "student_answer", "scores")},
            "original_question": r["original_question"], "new_question": shown_q,
            "question_is_candidate": new_q is None and shown_q is not None,
            "original_system": r["original_system"], "new_system": new_s,
            "system_changed": bool(new_s) and new_s != r["original_system"],
            "loss_before": before, "loss_after": after,
            "loss_change": (after - before) if before is not None and after is not None else None,
        })
    return out


# ----------------------------------------------------------------------------------------------- one sample


def trajectory(run: Run, sample_id: str) -> dict[str, Any]:
    """One sample's whole history: per-epoch signals, every decision and every rewrite attempt."""
    sample = next((s for s in run.samples if s["id"] == sample_id), None)
    if sample is None:
        known = ", ".join(run.train_ids[:5])
        raise ReportError(f"no sample {sample_id!r} in {run.path} (training samples are e.g. {known})")
    return {
        "sample": sample,
        "signals": run.signals_of(sample_id),
        "decisions": [d for d in run.decisions if d["sample_id"] == sample_id],
        "rewrites": [r for r in rewritten_samples(run) if r["sample_id"] == sample_id],
        "evals": [e for e in run.evals if e["sample_id"] == sample_id],
        "inputs": [r for r in run.inputs if r["sample_id"] == sample_id],  # the base model's reading, per prompt version
    }


# ----------------------------------------------------------------------------------------------- comparison


def training_seconds(run: Run) -> float | None:
    secs = [e["seconds"] for e in run.epochs if e.get("seconds") is not None]
    if secs:
        return round(sum(secs), 3)
    if run.metrics and run.metrics.get("wall_seconds") is not None:
        return float(run.metrics["wall_seconds"])
    return None


def summary(run: Run) -> dict[str, Any]:
    """The numbers `compare` puts side by side."""
    acc = heldout_accuracy(run)
    u = usage(run)
    v = verdict_counts(run)
    sat = [e["epoch"] for e in run.epochs if e.get("saturated")]
    trained = [e for e in run.epochs if e["epoch"] > 0]
    return {
        "name": run.name, "path": str(run.path), "policy": run.policy,
        "task": (run.config.get("task") or {}).get("name"), "epochs": len(trained),
        "finished": run.metrics is not None,
        "accuracy_before": acc.get(0), "accuracy_final": acc[max(acc)] if acc else None,
        "accuracy_best": max(acc.values()) if acc else None, "accuracy": acc,
        "train_loss_final": trained[-1]["train_loss"] if trained else None,
        "saturated_epochs": sat, "decisions": len(run.decisions),
        "symbolic": sum(d["route"] == "symbolic" for d in run.decisions),
        "rewrites": len(run.rewrites), "accepted": v.get("accepted", 0),
        "train_seconds": training_seconds(run),
        "wall_seconds": run.metrics.get("wall_seconds") if run.metrics else None,
        "calls": u["calls"], "tokens": u["tokens"], "cost": u["cost"],
    }


def median_abs_c1(run: Run) -> dict[int, float]:
    """Median |C1| over the misclassified samples per epoch (what the default saturation rule compares with k)."""
    out = {}
    for e, rows in sorted(_group(run.signals, "epoch").items()):
        vals = [abs(r["c1"]) for r in rows if not r["correct"] and r.get("c1") is not None and math.isfinite(r["c1"])]
        if vals:
            out[e] = statistics.median(vals)
    return out


def _group(rows, key):
    out = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return out
