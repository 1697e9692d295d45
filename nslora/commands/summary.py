"""The run's closing summary, printed by `nslora run` and `nslora resume` from its metrics.json."""

from __future__ import annotations

from typing import Any


def _other_scoring(acc: dict[str, Any]) -> str:
    other = "strict" if acc.get("scoring", "flexible") == "flexible" else "flexible"
    o = acc.get(other)
    if not o or o.get("before") is None:
        return ""
    return f"; {other}: {o['before']:.3f} → {o['final']:.3f}"


def summary(metrics: dict[str, Any]) -> str:
    acc = metrics["heldout_accuracy"]
    c = metrics["counts"]
    lines = [
        f"run: {metrics['run_dir']}",
        f"held-out accuracy: before {acc['before']:.3f} → after {acc['final']:.3f} ({metrics['counts']['heldout']} samples, "
        f"{acc.get('scoring', 'flexible')} scoring)" + _other_scoring(acc),
        f"routing rounds: {c.get('routing_rounds', 0)}, decisions: {c.get('decisions', 0)}, symbolic: {c.get('symbolic', 0)}, "
        f"rewrites accepted/rejected/failed: {c.get('rewrites_accepted', 0)}/{c.get('rewrites_rejected', 0)}/{c.get('rewrites_error', 0)}",
        f"LLM calls: {metrics['llm']['calls']} (+{metrics['llm']['cache_hits']} from cache), tokens: "
        f"{metrics['llm']['prompt_tokens']}+{metrics['llm']['completion_tokens']}, estimated cost: {_cost(metrics['llm']['cost'])}"
        + (f", reverted rewrites: {c['reverts']}" if c.get("reverts") else ""),
        f"wall time: {metrics['wall_seconds']:.1f} s",
    ]
    lines += _rounds(metrics["llm"])
    if metrics.get("node_seconds"):
        lines.append("time by node: " + ", ".join(f"{n} {sec:.1f} s" for n, sec in metrics["node_seconds"].items()))
    routing = metrics.get("routing")
    if routing and routing["total"]["f1"] is not None:
        t, r = routing["total"], routing["total"]["random"]
        lines.append(f"routing vs planted faults: precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f} "
                     f"(random at the same count: F1 {r['f1']:.2f}); faulty samples ever routed: {routing['cumulative_recall']:.0%}")
    cal = metrics.get("calibration")
    if cal:
        fams = ", ".join(f"{f} {a:.2f}" for f, a in cal["by_family"].items())
        lines.append(f"presentation detector: finds {cal['copies']} planted copies it was not fitted on with AUC "
                     f"{cal['auc']:.2f} ({fams}; 0.5 = blind)")
    if c.get("rewrites_skipped"):
        lines.append(f"budget reached: {c['rewrites_skipped']} symbolic samples stayed numerical "
                     f"({metrics['llm'].get('budget', {}).get('exhausted') or 'see rewriter.max_*'})")
    failed = {k[len("failed_"):]: n for k, n in c.items() if k.startswith("failed_")}
    known = failed.pop("known-failure", 0)
    if known:
        lines.append(f"{known} rewrites not sent: their requests failed before in a way that would repeat "
                     "(rewriter.retry_failures=true sends them again)")
    if failed:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        lines.append(f"warning: {sum(failed.values())} rewrites failed ({kinds}; reasons in run.sqlite, grouped by "
                     "`nslora inspect`); those samples stayed numerical")
    return "\n".join(lines)


def _cost(cost: float | None) -> str:
    return "no price known (add the model to rewriter.prices)" if cost is None else f"${cost:.4f}"


def _rounds(llm: dict[str, Any]) -> list[str]:
    """The rewrite rounds' wall time, the speed-up concurrency gave, and a server found to answer one at a time."""
    rounds = [r for r in llm.get("rounds", []) if r.get("seconds") is not None]
    out = []
    if rounds:
        line = f"rewrite rounds: {len(rounds)}, {sum(r['seconds'] for r in rounds):.1f} s wall"
        measured = llm.get("concurrency_speedup")
        if measured:
            line += f"; concurrency {measured['concurrency']} gave x{measured['speedup']:.2f} (measured on {measured['rewrites']} rewrites)"
        out.append(line)
    if llm.get("serial_server"):
        out.append("the rewriter endpoint answers one request at a time: later rounds ran one at a time "
                   "(set rewriter.concurrency=1 to start so)")
    return out
