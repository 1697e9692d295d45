"""The self-contained HTML report of one run (`nslora inspect`) and of several (`nslora compare`).

No script, no stylesheet, font or image from anywhere else: the CSS is inline and the plots are inline SVG, so
the file opens offline, from an e-mail attachment, or on a machine with no network. Every text from the run
(prompts, rewrites, reasons, names) goes through html.escape.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from nslora.core.errors import UserError
from nslora.report import data as D
from nslora.report import plots, spent
from nslora.report.fmt import cost, pct

CSS = """
:root { --fg:#1d2430; --muted:#5b6675; --line:#dde2e8; --bg:#f6f8fa; --card:#fff; --accent:#1f5fa8;
        --ins:#d6f5dd; --ins-fg:#0b5e23; --del:#fde0dc; --del-fg:#8c1d10; --warn:#c2571a; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:24px 28px 60px; }
header { background:#17324f; color:#fff; padding:22px 28px; }
header .inner { max-width:1180px; margin:0 auto; }
header h1 { margin:0 0 4px; font-size:24px; }
header .sub { color:#c5d3e3; font-size:13px; word-break:break-all; }
h2 { font-size:19px; margin:34px 0 10px; padding-bottom:6px; border-bottom:2px solid var(--line); }
h3 { font-size:15px; margin:18px 0 6px; }
p.note { color:var(--muted); margin:4px 0 12px; font-size:13.5px; }
.kpis { display:grid; grid-template-columns:repeat(4, 1fr); gap:12px; margin:18px 0 6px; }
.kpi { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.kpi .v { font-size:22px; font-weight:700; }
.kpi .l { color:var(--muted); font-size:12.5px; text-transform:uppercase; letter-spacing:.03em; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin:12px 0; }
svg.plot { width:100%; height:auto; display:block; margin:0 auto; }
table { border-collapse:collapse; width:100%; background:var(--card); font-size:13.5px; margin:6px 0 12px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef2f6; font-weight:600; white-space:nowrap; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr:nth-child(even) td { background:#fafbfc; }
tr.sat td { background:#fff3ec; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.accepted { background:#d6f5dd; color:#0b5e23; } .rejected { background:#fff0d6; color:#8a5300; }
.error { background:#fde0dc; color:#8c1d10; } .skipped { background:#eceff2; color:#5b6675; }
.symbolic { color:var(--warn); font-weight:600; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.pair > div { border:1px solid var(--line); border-radius:6px; padding:8px 10px; background:#fcfcfd; min-width:0; }
.pair .lbl { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; margin-bottom:4px; }
.text { white-space:pre-wrap; word-wrap:break-word; font-family:"DejaVu Sans Mono", Menlo, Consolas, monospace; font-size:12.8px; }
ins { background:var(--ins); color:var(--ins-fg); text-decoration:none; border-radius:2px; }
del { background:var(--del); color:var(--del-fg); border-radius:2px; }
.meta { display:flex; flex-wrap:wrap; gap:6px 18px; font-size:13px; color:var(--muted); margin:8px 0 2px; }
.meta b { color:var(--fg); font-weight:600; }
.better { color:#0b5e23; font-weight:600; } .worse { color:#8c1d10; font-weight:600; }
details summary { cursor:pointer; color:var(--accent); font-size:13.5px; }
nav { font-size:13.5px; margin-top:10px; } nav a { color:#c5d3e3; margin-right:14px; text-decoration:none; }
footer { color:var(--muted); font-size:12px; margin-top:40px; }
"""


MAX_CARDS = 500  # rewrite cards on one page; the counts above always cover every rewrite
MAX_DECISIONS = 2000  # decision rows on one page; the tables and plots above count every decision


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), row_class=None) -> str:
    """rows hold already-escaped HTML cells."""
    th = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{row_class(j)}"' if row_class and row_class(j) else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                            for i, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _diff_html(segments: list[tuple[str, str]]) -> str:
    out = []
    for op, text in segments:
        t = escape(text)
        out.append(f"<ins>{t}</ins>" if op == "ins" else f"<del>{t}</del>" if op == "del" else t)
    return "".join(out)


def _page(title: str, subtitle: str, body: str, nav: list[tuple[str, str]] = ()) -> str:
    links = "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in nav)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><div class=\"inner\"><h1>{escape(title)}</h1><div class=\"sub\">{escape(subtitle)}</div>"
            f"{'<nav>' + links + '</nav>' if links else ''}</div></header>"
            f"<main>{body}<footer>{MARK} on {escape(datetime.now().isoformat(timespec='seconds'))}. "
            f"Self-contained: no script, no network.</footer></main></body></html>\n")


def _kpis(items: list[tuple[str, str]]) -> str:
    return '<div class="kpis">' + "".join(f'<div class="kpi"><div class="v">{v}</div><div class="l">{escape(l)}</div></div>'
                                          for l, v in items) + "</div>"


# ----------------------------------------------------------------------------------------------- sections


def _overview(run: D.Run) -> str:
    acc = D.heldout_accuracy(run)
    s = D.summary(run)
    u = D.usage(run)
    v = D.verdict_counts(run)
    sat = s["saturated_epochs"]
    items = [
        ("held-out accuracy", f"{pct(s['accuracy_before'])} → {pct(s['accuracy_final'])}" if acc else "—"),
        ("epochs trained", str(s["epochs"])),
        ("saturated at epoch", ", ".join(map(str, sat)) if sat else "never"),
        ("routed symbolic", str(s["symbolic"])),
        ("rewrites accepted", f"{v.get('accepted', 0)} / {len(run.rewrites)}"),
        ("LLM calls", str(u["calls"])),
        ("cost", cost(u["cost"])),
        ("training time", "—" if s["train_seconds"] is None else f"{s['train_seconds']:.1f} s" if s["train_seconds"] < 10
         else f"{s['train_seconds']:.0f} s"),
    ]
    cfg = run.config
    task = cfg.get("task") or {}
    sat_cfg = cfg.get("saturation") or {}
    rw = cfg.get("rewriter") or {}
    desc = (f"Policy <b>{escape(run.policy)}</b> on task <b>{escape(str(task.get('name', '?')))}</b> with "
            f"{len(run.train_ids)} training and {sum(x['split'] == 'heldout' for x in run.samples)} held-out samples; "
            f"model <b>{escape(str((cfg.get('model') or {}).get('name_or_path', '?')))}</b>. Saturation rule: the median "
            f"|C1| of the misclassified samples below k = {escape(str(sat_cfg.get('k', '?')))} (from epoch "
            f"{escape(str(sat_cfg.get('min_epoch', '?')))}); then a share p = {escape(str(sat_cfg.get('p', '?')))} of "
            f"them is routed. Rewriter: {escape(str(rw.get('strategy', '?')))} strategy on the "
            f"{escape(str(rw.get('engine', '?')))} engine.")
    warn = "" if run.metrics is not None else '<p class="note"><b>No metrics.json:</b> this run has not finished; the report shows what run.sqlite holds so far.</p>'
    return f'<section id="overview">{_kpis(items)}<p class="note">{desc}</p>{warn}</section>'


def _training(run: D.Run) -> str:
    acc = D.heldout_accuracy(run)
    svg = plots.training_curves(run)
    rows = []
    sat_rows = []
    if 0 in acc:
        rows.append(["0", "—", "—", pct(acc[0]), "—", "", "—", "—", "—"])
        sat_rows.append(False)
    for e in D.epoch_table(run):
        rows.append([str(e["epoch"]), _fmt(e["train_loss"]), pct(e["train_correct"]), pct(e["heldout_accuracy"]),
                     _fmt(e["saturation_median"]), "● saturated" if e["saturated"] else "", _fmt(e["symbolic"]),
                     _fmt(e["accepted"]), _fmt(e["seconds"], 1)])
        sat_rows.append(e["saturated"])
    table = _table(["epoch", "train loss", "train correct", "held-out acc", "median |C1|", "saturation", "symbolic",
                    "accepted", "seconds"], rows, numeric={0, 1, 2, 3, 4, 6, 7, 8},
                   row_class=lambda j: "sat" if sat_rows[j] else None)
    nodes = spent.node_seconds(run)
    timing = _table(["node", "seconds", "share of the timed"], [[escape(n["node"]), f'{n["seconds"]:.1f}', pct(n["share"])]
                                                               for n in nodes], numeric={1, 2}) if nodes else ""
    return (f'<section id="training"><h2>Training and held-out accuracy</h2>'
            f'<p class="note">Mean training loss and accuracy per epoch. Red dotted lines (★) mark the epochs where '
            f'training saturated and the policy routed samples; epoch 0 is the model before any training. '
            f'"seconds" is the training loop; the time of every graph node and of checkpoints follows.</p>'
            f'<div class="card">{svg or "<p>No epochs recorded yet.</p>"}</div>{table}{timing}</section>')


def _signals(run: D.Run) -> str:
    svg = plots.signal_distributions(run)
    thr = D.thresholds(run)
    note = ("Each dot is one training sample (orange: still misclassified, green: correct); boxes show the spread. "
            "C1 > 0 means the sample's loss rose. ")
    if thr:
        note += "The red bars are the policy's calibrated thresholds in the epochs it routed. "
    else:
        note += "The policy gave no threshold on C1 or C2 (it routes by something else, or never routed). "
    note += "Right: the saturation rule — training counts as saturated when the median |C1| of the misclassified samples falls below k."
    return (f'<section id="signals"><h2>Per-sample signals: C1 and C2</h2><p class="note">{escape(note)}</p>'
            f'<div class="card">{svg or "<p>No signals recorded.</p>"}</div></section>')


def _routing(run: D.Run) -> str:
    routes = D.routes_by_epoch(run)
    if not routes:
        return ('<section id="routing"><h2>Routing</h2><p class="note">No routing decisions: training never '
                'saturated, or the policy never routes.</p></section>')
    svg = plots.route_counts(run)
    rows = [[escape(r["path"]), str(r["decisions"]), str(r["symbolic"]), str(r["numerical"])] for r in D.route_totals(run)]
    table = _table(["path", "decisions", "symbolic", "numerical"], rows, numeric={1, 2, 3})
    dec_rows = []
    # Symbolic decisions first (the ones that did something), then the rest, up to MAX_DECISIONS rows.
    shown = sorted(run.decisions, key=lambda d: (d["route"] != "symbolic", d["epoch"], d["sample_id"]))[:MAX_DECISIONS]
    for d in shown:
        dec_rows.append([str(d["epoch"]), escape(d["sample_id"]), escape(d["path"]),
                         f'<span class="{"symbolic" if d["route"] == "symbolic" else ""}">{escape(d["route"])}</span>',
                         f'{d["confidence"]:.2f}', escape(d["reason"])])
    details = _table(["epoch", "sample", "path", "route", "confidence", "reason"], dec_rows, numeric={0, 4})
    return (f'<section id="routing"><h2>Routing decisions</h2><p class="note">How many candidates each decision '
            f'path sent to a rewrite (symbolic) or kept on LoRA steps (numerical), per routing epoch.</p>'
            f'<div class="card">{svg}</div>{table}{_quality(run)}'
            f'<details><summary>{_decisions_label(len(shown), len(run.decisions))}</summary>{details}</details></section>')


def _decisions_label(shown: int, total: int) -> str:
    if shown == total:
        return f"All {total} decisions with their reasons"
    return (f"{shown} of {total} decisions with their reasons (symbolic first); every decision is in run.sqlite: "
            "sqlite3 RUN/run.sqlite 'SELECT * FROM decisions'")


def _quality(run: D.Run) -> str:
    q = D.routing_quality(run)
    if q is None:
        return ""
    rows = [[escape(c) for c in row] for row in D.quality_rows(q)]
    return (f'<h3>Routing against the planted faults</h3><p class="note">{q["planted"]} of {q["train"]} training samples '
            f'carry a planted fault; every faulty sample routed symbolic at least once: {pct(q["cumulative_recall"])}. '
            f'FP knowledge: false positives that are hard-but-clean samples. Random F1: what routing the same number '
            f'of candidates at random gets in expectation.</p>'
            + _table(D.QUALITY_HEADERS, rows, numeric=set(range(1, len(D.QUALITY_HEADERS)))))


def _rewrite_card(r: dict[str, Any]) -> str:
    parts = []
    if r["sample_id"] != "*system*" or r["original_question"]:
        left, right = D.word_diff(r["original_question"], r["new_question"] or "")
        new_label = "refused candidate" if r["question_is_candidate"] else ("rewrite" if r["new_question"] is not None else "no rewrite")
        parts.append(f'<div class="pair"><div><div class="lbl">original question</div><div class="text">{_diff_html(left)}</div></div>'
                     f'<div><div class="lbl">{new_label}</div><div class="text">'
                     f'{_diff_html(right) if r["new_question"] is not None else "<i>—</i>"}</div></div></div>')
    if r["system_changed"]:
        left, right = D.word_diff(r["original_system"], r["new_system"])
        parts.append(f'<div class="pair" style="margin-top:8px"><div><div class="lbl">original system prompt</div>'
                     f'<div class="text">{_diff_html(left)}</div></div><div><div class="lbl">new system prompt</div>'
                     f'<div class="text">{_diff_html(right)}</div></div></div>')
    b, a, ch = r["loss_before"], r["loss_after"], r["loss_change"]
    if ch is None:
        loss = f"loss {_fmt(b)} at the rewrite; no later epoch"
    else:
        cls = "better" if ch < 0 else "worse"
        where = "next epoch, on the rewrite" if r["verdict"] == "accepted" else "next epoch, on the unchanged prompt"
        loss = f'loss {_fmt(b)} → {_fmt(a)} <span class="{cls}">({ch:+.4f})</span> {where}'
    scores = ", ".join(f"{escape(str(k))} {_fmt(v, 3)}" for k, v in sorted((r["scores"] or {}).items())) or "—"
    meta = (f'<div class="meta"><span><b>guard</b> <span class="badge {escape(r["verdict"])}">{escape(r["verdict"])}</span> '
            f'{escape(r["reason"])}</span><span><b>scores</b> {scores}</span><span>{loss}</span>'
            f'<span><b>model answered</b> {escape((r["student_answer"] or "").strip()[:120]) or "—"}</span>'
            f'<span>{escape(r["strategy"])} · {r["calls"]} calls · {r["tokens"]} tokens · {_fmt(r["seconds"], 1)} s</span></div>')
    return (f'<div class="card" id="rw-{escape(r["sample_id"])}-{r["epoch"]}"><h3>{escape(r["sample_id"])} '
            f'<span style="font-weight:400;color:var(--muted)">· epoch {r["epoch"]}</span></h3>{"".join(parts)}{meta}</div>')


def _rewrites(run: D.Run) -> str:
    rs = D.rewritten_samples(run)
    if not rs:
        return '<section id="rewrites"><h2>Rewrites</h2><p class="note">No sample was rewritten.</p></section>'
    reasons = _table(["verdict", "reason", "count"],
                     [[f'<span class="badge {escape(x["verdict"])}">{escape(x["verdict"])}</span>', escape(x["reason"]),
                       str(x["count"])] for x in D.rewrite_reasons(run)], numeric={2})
    u = D.usage(run)
    usage = _table(["LLM calls", "prompt tokens", "completion tokens", "cache hits", "cost", "rewrite rounds (wall s)"],
                   [[str(u["calls"]), str(u["prompt_tokens"]), str(u["completion_tokens"]), str(u["cache_hits"]),
                     cost(u["cost"]), f'{u["seconds"]:.1f}']], numeric={0, 1, 2, 3, 4, 5})
    cards = "".join(_rewrite_card(r) for r in rs[:MAX_CARDS])
    if len(rs) > MAX_CARDS:
        cards += (f'<p class="note">{len(rs) - MAX_CARDS} more rewrites are not shown; '
                  f'<code>nslora inspect RUN --sample ID</code> shows any sample\'s rewrites.</p>')
    return (f'<section id="rewrites"><h2>Rewrites ({len(rs)})</h2><p class="note">Every rewrite attempt: the '
            f'original and the rewrite side by side, <del>removed words</del> and <ins>added words</ins> highlighted; '
            f'the meaning guard\'s verdict, reason and scores; the sample\'s training loss at the rewrite epoch and '
            f'the epoch after (on the new prompt when accepted).</p>{reasons}{usage}{cards}</section>')


def _sample(run: D.Run, sample_id: str) -> str:
    tr = D.trajectory(run, sample_id)
    s = tr["sample"]
    svg = plots.sample_curve(tr)
    dec = {}
    for d in tr["decisions"]:
        dec.setdefault(d["epoch"], []).append(f'<span class="{"symbolic" if d["route"] == "symbolic" else ""}">'
                                              f'{escape(d["route"])}</span> ({escape(d["path"])}): {escape(d["reason"])}')
    rw = {r["epoch"]: f'<span class="badge {escape(r["verdict"])}">{escape(r["verdict"])}</span> {escape(r["reason"])}'
          for r in tr["rewrites"]}
    rows = [[str(x["epoch"]), str(x["prompt_version"]), _fmt(x["loss"]), _fmt(x["c1"]), _fmt(x["c2"]),
             "yes" if x["correct"] else "no", "<br>".join(dec.get(x["epoch"], [])), rw.get(x["epoch"], "")]
            for x in tr["signals"]]
    table = _table(["epoch", "prompt v", "loss", "C1", "C2", "correct", "decision", "rewrite"], rows, numeric={0, 1, 2, 3, 4})
    evals = ""
    if tr["evals"]:
        evals = _table(["epoch", "reply", "prediction", "correct"],
                       [[str(e["epoch"]), escape(e["reply"]), escape(e["prediction"]), "yes" if e["correct"] else "no"]
                        for e in tr["evals"]], numeric={0})
    cards = "".join(_rewrite_card(r) for r in tr["rewrites"])
    return (f'<section id="sample"><h2>Sample {escape(sample_id)} ({escape(s["split"])})</h2>'
            f'<div class="pair"><div><div class="lbl">system prompt</div><div class="text">{escape(s["system"])}</div></div>'
            f'<div><div class="lbl">question · gold answer: {escape(s["answer"])}</div><div class="text">{escape(s["question"])}</div></div></div>'
            f'<div class="card">{svg or "<p>No training signals (a held-out sample is only evaluated).</p>"}</div>'
            f'{table}{evals}{cards}</section>')


def _samples_index(run: D.Run, limit: int = 300) -> str:
    """A compact table of every training sample: loss per epoch, whether rewritten; hidden behind <details>."""
    ids = run.train_ids[:limit]
    epochs = sorted({r["epoch"] for r in run.signals})
    versions = {}
    for r in run.rewrites:
        versions.setdefault(r["sample_id"], []).append(r["verdict"])
    rows = []
    for i in ids:
        sig = {x["epoch"]: x for x in run.signals_of(i)}
        cells = [escape(i)]
        for e in epochs:
            x = sig.get(e)
            cells.append("—" if x is None else f'{x["loss"]:.3f}{"" if x["correct"] else " ✗"}')
        cells.append(escape(", ".join(versions.get(i, []))))
        rows.append(cells)
    table = _table(["sample"] + [f"loss e{e}" for e in epochs] + ["rewrites"], rows, numeric=set(range(1, len(epochs) + 1)))
    more = f" (first {limit} of {len(run.train_ids)})" if len(run.train_ids) > limit else ""
    return (f'<section id="samples"><h2>Training samples</h2><p class="note">Loss per epoch (✗: still misclassified). '
            f'<code>nslora inspect RUN --sample ID</code> adds one sample\'s whole trajectory.</p>'
            f'<details><summary>Show all {len(ids)} training samples{more}</summary>{table}</details></section>')


# ----------------------------------------------------------------------------------------------- pages


def render_run(run: D.Run, sample: str | None = None) -> str:
    from nslora.report.datamap import section_html

    nav = [("overview", "Overview"), ("training", "Training"), ("signals", "C1 / C2"), ("datamap", "Data map"),
           ("routing", "Routing"), ("rewrites", "Rewrites")]
    body = [_overview(run), _training(run), _signals(run), section_html(run), _routing(run), _rewrites(run)]
    if sample:
        body.append(_sample(run, sample))
        nav.append(("sample", f"Sample {sample}"))
    body.append(_samples_index(run))
    nav.append(("samples", "Samples"))
    return _page(f"ns-lora run · {run.name}", str(run.path.resolve()), "".join(body), nav)


def render_compare(runs: list[D.Run]) -> str:
    sums = [D.summary(r) for r in runs]
    svg = plots.compare_accuracy(runs)
    best = max((s["accuracy_final"] for s in sums if s["accuracy_final"] is not None), default=None)
    rows = [[escape(s["name"]), escape(s["policy"]), str(s["epochs"]), pct(s["accuracy_before"]),
             pct(s["accuracy_final"]) if s["accuracy_final"] != best else f"<b>{pct(s['accuracy_final'])}</b>",
             pct(s["accuracy_best"]), escape(", ".join(map(str, s["saturated_epochs"])) or "never"),
             str(s["symbolic"]), f'{s["accepted"]} / {s["rewrites"]}',
             _fmt(s["train_seconds"], 1), str(s["calls"]), str(s["tokens"]), cost(s["cost"])] for s in sums]
    table = _table(["run", "policy", "epochs", "acc before", "acc final", "acc best", "saturated at", "symbolic",
                    "accepted", "train s", "LLM calls", "tokens", "cost"], rows, numeric={2, 3, 4, 5, 7, 9, 10, 11, 12})
    paths = "".join(f"<li>{escape(s['name'])}: <code>{escape(s['path'])}</code></li>" for s in sums)
    body = (f'<section id="compare"><h2>Held-out accuracy, time and LLM usage</h2>'
            f'<p class="note">The same task under different policies (e.g. lora-only, NS-LoRA, textgrad-only). '
            f'The best final held-out accuracy is in bold.</p><div class="card">{svg}</div>{table}'
            f'<ul class="note">{paths}</ul></section>')
    return _page(f"ns-lora · {len(runs)} runs compared", ", ".join(s["name"] for s in sums), body)


# Every page carries this in its footer: a file without it is the user's, and is not replaced unless asked.
MARK = "Generated by ns-lora report"


def check_out(path: str | Path, overwrite: bool = False) -> Path:
    """A report page may replace an earlier page; any other existing file is refused unless `overwrite`."""
    path = Path(path)
    if path.is_dir() or (path.is_file() and not overwrite and MARK not in path.read_text(encoding="utf-8", errors="replace")):
        raise UserError(f"--out: {path} exists and is not an ns-lora report page; choose another file or pass --overwrite")
    return path


def write_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    from nslora.core.atomic import write_text

    return write_text(check_out(path, overwrite), text)


def write_report(run_dir: str | Path, out: str | Path | None = None, sample: str | None = None, overwrite: bool = False) -> Path:
    """report.html (or `out`) and the data map's PNG beside it; both are checked before either is written."""
    from nslora.report.datamap import check_png, write_png

    out = check_out(out or Path(run_dir) / "report.html", overwrite)
    check_png(out, overwrite)
    run = D.load_run(run_dir)
    write_png(run, out, overwrite)
    return write_atomic(out, render_run(run, sample), overwrite)


def write_compare(run_dirs: list[str | Path], out: str | Path) -> Path:
    runs = [D.load_run(d) for d in run_dirs]
    return write_atomic(out, render_compare(runs))


__all__ = ["render_run", "render_compare", "write_report", "write_compare", "write_atomic"]
