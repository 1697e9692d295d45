"""`nslora inspect` and `nslora compare` in the terminal: rich tables built from nslora.report.data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nslora.report import data as D
from nslora.report import spent
from nslora.report.fmt import cost, pct


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def _console(console=None):
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def inspect_tables(run: D.Run) -> list:
    """The summary as a list of rich renderables (a test or a caller may print them anywhere)."""
    from rich.table import Table
    from rich.text import Text

    out: list = []
    acc = D.heldout_accuracy(run)
    head = Text()
    head.append(f"{run.name}", style="bold")
    head.append(f"  {run.path}\n", style="dim")
    task = run.config.get("task") or {}
    model = (run.config.get("model") or {}).get("name_or_path", "?")
    head.append(f"policy {run.policy} · task {task.get('name', '?')} · model {model} · "
                f"{len(run.train_ids)} train / {sum(s['split'] == 'heldout' for s in run.samples)} held-out samples\n")
    if acc:
        head.append(f"held-out accuracy {pct(acc.get(0))} → {pct(acc[max(acc)])}", style="bold green")
    if run.metrics is None:
        head.append("  (no metrics.json: the run has not finished)", style="yellow")
    out.append(head)

    t = Table(title="Per epoch", title_justify="left", header_style="bold")
    for col, just in (("epoch", "right"), ("loss", "right"), ("train ok", "right"),
                      ("held-out", "right"), ("med |C1|", "right"), ("sat.", "center"),
                      ("symb.", "right"), ("acc.", "right"), ("sec", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    t.caption = "train ok: training samples correct · sat.: saturated (routing round) · symb./acc.: routed symbolic / rewrites accepted"
    if 0 in acc:
        t.add_row("0", "—", "—", pct(acc[0]), "—", "", "—", "—", "—", style="dim")
    for e in D.epoch_table(run):
        t.add_row(str(e["epoch"]), _num(e["train_loss"]), pct(e["train_correct"]), pct(e["heldout_accuracy"]),
                  _num(e["saturation_median"]), "●" if e["saturated"] else "", _num(e["symbolic"]),
                  _num(e["accepted"]), _num(e["seconds"], "{:.0f}"),
                  style="bold" if e["saturated"] else None)
    out.append(t)

    out += _routing_tables(run)
    out += _evaluation_table(run)

    nodes = spent.node_seconds(run)
    if nodes:
        t = Table(title="Time by node", title_justify="left", header_style="bold")
        for col in ("node", "seconds", "share"):
            t.add_column(col, justify="left" if col == "node" else "right")
        for n in nodes:
            t.add_row(n["node"], f"{n['seconds']:.1f}", pct(n["share"]))
        out.append(t)

    u = D.usage(run)
    t = Table(title="LLM usage (rewriter)", title_justify="left", header_style="bold")
    for col in ("calls", "prompt tok", "compl. tok", "cache hits", "cost", "rewrite rounds s"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_row(str(u["calls"]), str(u["prompt_tokens"]), str(u["completion_tokens"]), str(u["cache_hits"]),
              cost(u["cost"]), f"{u['seconds']:.1f}")
    out.append(t)
    return out


def _evaluation_table(run: D.Run) -> list:
    """The run's `nslora eval` results (RUN/evals/*/summary.json), strict and flexible with their intervals."""
    from rich.table import Table

    found = D.evaluations(run)
    if not found:
        return []
    t = Table(title="Evaluations (nslora eval)", title_justify="left", header_style="bold")
    for col in ("data", "samples", "truncated", "strict", "flexible"):
        t.add_column(col, justify="left" if col == "data" else "right")

    def cell(a):
        return f"{pct(a['accuracy'])} [{pct(a['low'])}, {pct(a['high'])}]" if a else "—"

    for e in found:
        t.add_row(Path(e["data"]).name, str(e["samples"]), str(e["truncated"]), cell(e.get("strict")), cell(e.get("flexible")))
    return [t]


def _routing_tables(run: D.Run) -> list:
    """Decisions by path per epoch, and rewrites by verdict and reason."""
    from rich.table import Table
    from rich.text import Text

    out: list = []
    quality = D.routing_quality(run)
    if quality is not None:
        t = Table(title=f"Routing vs planted faults ({quality['planted']} of {quality['train']} training samples; "
                        f"cumulative recall {pct(quality['cumulative_recall'])})", title_justify="left", header_style="bold")
        for col in D.QUALITY_HEADERS:
            t.add_column(col, justify="right")
        for row in D.quality_rows(quality):
            t.add_row(*row, style="bold" if row[0] == "all" else None)
        out.append(t)
    routes = D.routes_by_epoch(run)
    if routes:
        t = Table(title="Routing decisions by path", title_justify="left", header_style="bold")
        for col in ("epoch", "path", "symbolic", "numerical"):
            t.add_column(col, justify="left" if col == "path" else "right")
        for e, paths in routes.items():
            for p, c in sorted(paths.items()):
                t.add_row(str(e), p, str(c["symbolic"]), str(c["numerical"]))
        totals = D.route_totals(run)
        t.add_section()
        for r in totals:
            t.add_row("all", r["path"], str(r["symbolic"]), str(r["numerical"]), style="bold")
        out.append(t)
    else:
        out.append(Text("No routing decisions: training never saturated (or the policy never routes).", style="dim"))

    if run.rewrites:
        t = Table(title="Rewrites by verdict and reason", title_justify="left", header_style="bold")
        t.add_column("verdict")
        t.add_column("reason")
        t.add_column("count", justify="right")
        colour = {"accepted": "green", "rejected": "yellow", "error": "red", "skipped": "dim"}
        for r in D.rewrite_reasons(run):
            t.add_row(Text(r["verdict"], style=colour.get(r["verdict"], "")), r["reason"], str(r["count"]))
        out.append(t)
    failures = spent.failures_by_kind(run)
    if failures:
        t = Table(title="Failed rewrites by kind (one stored reason each)", title_justify="left", header_style="bold")
        for col in ("kind", "count", "example"):
            t.add_column(col, justify="right" if col == "count" else "left", overflow="fold")
        for f in failures:
            t.add_row(f["kind"], str(f["count"]), f["example"])
        out.append(t)
    return out


def print_inspect(run: D.Run, console=None, report_path=None) -> None:
    console = _console(console)
    for r in inspect_tables(run):
        console.print(r)
    if report_path:
        console.print(f"HTML report: {report_path}")


def sample_table(run: D.Run, sample_id: str):
    from rich.table import Table

    tr = D.trajectory(run, sample_id)
    t = Table(title=f"Sample {sample_id}", title_justify="left", header_style="bold")
    for col in ("epoch", "v", "loss", "C1", "C2", "p(gold)", "margin", "ok", "decision", "rewrite"):
        t.add_column(col, justify="right" if col not in ("decision", "rewrite") else "left",
                     no_wrap=col not in ("decision", "rewrite"))
    t.caption = ("v: prompt version (0 = original) · p(gold), margin: the answer tokens' mean gold probability and gold "
                 "logit minus the largest other (training dynamics) · ok: teacher-forced answer correct")
    decisions = {}
    for d in tr["decisions"]:
        decisions.setdefault(d["epoch"], []).append(f"{d['route']} ({d['path']})")
    rewrites = {r["epoch"]: f"{r['verdict']}: {r['reason']}" for r in tr["rewrites"]}
    for r in tr["inputs"]:
        t.caption += (f"\nbase model, {'original prompt' if not r['since'] else 'rewrite of epoch ' + str(r['since'])}: "
                      f"question NLL {_num(r['q_nll'])}, top-5 {_num(r['q_top'])}, answer loss {_num(r['a_loss'])}, "
                      f"IFD {_num(r['ifd'])}")
    for s in tr["signals"]:
        e = s["epoch"]
        t.add_row(str(e), str(s["prompt_version"]), _num(s["loss"]), _num(s["c1"]), _num(s["c2"]), _num(s.get("p_gold")),
                  _num(s.get("margin")), "yes" if s["correct"] else "no", ", ".join(decisions.get(e, [])), rewrites.get(e, ""))
    return t


def compare_table(summaries: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="Runs compared", title_justify="left", header_style="bold")
    for col, just in (("run", "left"), ("policy", "left"), ("epochs", "right"), ("acc before", "right"),
                      ("acc final", "right"), ("acc best", "right"), ("symbolic", "right"), ("accepted", "right"),
                      ("train s", "right"), ("LLM calls", "right"), ("tokens", "right"), ("cost", "right")):
        t.add_column(col, justify=just)
    best = max((s["accuracy_final"] for s in summaries if s["accuracy_final"] is not None), default=None)
    for s in summaries:
        t.add_row(s["name"], s["policy"], str(s["epochs"]), pct(s["accuracy_before"]), pct(s["accuracy_final"]),
                  pct(s["accuracy_best"]), str(s["symbolic"]), str(s["accepted"]), _num(s["train_seconds"], "{:.1f}"),
                  str(s["calls"]), str(s["tokens"]), cost(s["cost"]),
                  style="bold green" if best is not None and s["accuracy_final"] == best else None)
    return t
