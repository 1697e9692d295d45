"""`nslora inspect` / `compare` and the TensorBoard logger, on real run folders of a tiny model against the fake
OpenAI-compatible server; the HTML report is also opened in headless Chromium (marker `chromium`)."""

import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from fake_openai import PREFIX, FakeOpenAI
from nslora.report import data as D
from nslora.report.cli import main as report_main
from nslora.commands.cli import main
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (tiny_dir is a fixture)

torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# What an unfaithful rewriter sends back: it drops the story (the guard refuses it) and carries markup that
# must show as text, never run.
HOSTILE = 'Where is <script>alert("x")</script> & <b>Sandra</b>? <img src="http://example.com/a.png">'


def _question(messages):
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    user = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user)
    m = re.search(r"<QUESTION>\s*(.*?)\s*</QUESTION>", user, re.S)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):  # noqa: F811
    """Two runs of the same data: NS-LoRA (direct rewrites, every other one refused) and LoRA-only."""
    os.environ["NSLORA_TEST_KEY"] = KEY
    tmp = tmp_path_factory.mktemp("report")
    calls = []

    def reply(messages):
        calls.append(1)
        q = _question(messages)
        return PREFIX + q if len(calls) % 2 else HOSTILE

    with FakeOpenAI() as srv:
        srv.reply = reply
        (tmp / "ns").mkdir()
        (tmp / "lo").mkdir()
        cfg = write_config(tmp / "ns", tiny_dir, srv.base_url, rewriter={"strategy": "direct"},
                           run={"out_dir": str(tmp / "runs"), "name": "ns-lora"})
        assert main(["run", str(cfg)]) == 0
        cfg = write_config(tmp / "lo", tiny_dir, srv.base_url, policy={"name": "lora-only"},
                           run={"out_dir": str(tmp / "runs"), "name": "lora-only"})
        assert main(["run", str(cfg)]) == 0
    return tmp / "runs" / "ns-lora", tmp / "runs" / "lora-only"


@pytest.fixture(scope="module")
def report(runs):
    run_dir = runs[0]
    sample = rows(run_dir, "SELECT sample_id FROM rewrites WHERE verdict='accepted' ORDER BY epoch, sample_id")[0]["sample_id"]
    assert report_main(["inspect", str(run_dir), "--sample", sample]) == 0
    return run_dir / "report.html", sample


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action", "data", "poster", "srcset") and v is not None:
                self.urls.append(v)


def _pct(x):
    return f"{x:.1%}"


# ----------------------------------------------------------------------------------------------- content


def test_report_shows_every_rewrite_with_differences_and_guard_verdict(report, runs):
    path, _ = report
    html = path.read_text(encoding="utf-8")
    rewrites = rows(runs[0], "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    verdicts = {r["verdict"] for r in rewrites}
    assert verdicts == {"accepted", "rejected"}, verdicts
    for r in rewrites:
        card = html.split(f'id="rw-{r["sample_id"]}-{r["epoch"]}"', 1)
        assert len(card) == 2, f"rewrite of {r['sample_id']} at epoch {r['epoch']} is missing"
        body = card[1].split('<div class="card"', 1)[0]
        assert f'class="badge {r["verdict"]}">{r["verdict"]}<' in body
        assert _esc(r["reason"]) in body
        if r["verdict"] == "accepted":
            # The rewriter put "Read carefully. " in front: exactly that is highlighted as inserted.
            assert "<ins>Read carefully. </ins>" in body
            before = rows(runs[0], f"SELECT loss FROM signals WHERE epoch={r['epoch']} AND sample_id='{r['sample_id']}'")[0]["loss"]
            after = rows(runs[0], f"SELECT loss FROM signals WHERE epoch={r['epoch'] + 1} AND sample_id='{r['sample_id']}'")
            assert f"loss {before:.4f}" in body
            if after:
                assert f"→ {after[0]['loss']:.4f}" in body
        else:
            assert "refused candidate" in body and "<del>" in body and "<ins>" in body
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
    assert html.count('<div class="card" id="rw-') >= len(rewrites)


def _esc(s):
    from html import escape

    return escape(s)


def test_report_is_self_contained_and_escapes_everything(report):
    html = report[0].read_text(encoding="utf-8")
    p = _Links()
    p.feed(html)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    # The hostile candidate's <img> is text, not a tag: every img/src/href left is an in-page anchor.
    assert "img" not in p.tags
    assert p.urls and all(u.startswith("#") for u in p.urls), [u for u in p.urls if not u.startswith("#")]
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html) and "@import" not in html
    assert html.count("<svg") >= 4  # training curves, C1/C2, routes, the sample's loss curve


def test_report_numbers_match_the_run_store(report, runs):
    html = report[0].read_text(encoding="utf-8")
    run_dir = runs[0]
    acc = {r["epoch"]: r["a"] for r in rows(run_dir, "SELECT epoch, AVG(correct) AS a FROM evals GROUP BY epoch")}
    training = html.split('id="training"', 1)[1].split("</section>", 1)[0]
    cells = re.findall(r"<tr[^>]*>(.*?)</tr>", training.split("<tbody>", 1)[1].split("</tbody>", 1)[0])  # the epoch table
    by_epoch = {int(re.findall(r"<td[^>]*>(.*?)</td>", c)[0]): re.findall(r"<td[^>]*>(.*?)</td>", c) for c in cells}
    assert set(by_epoch) == set(acc)
    for e in rows(run_dir, "SELECT * FROM epochs WHERE epoch > 0"):
        row = by_epoch[e["epoch"]]
        assert row[1] == f"{e['train_loss']:.4f}" and row[3] == _pct(acc[e["epoch"]])
        assert ("saturated" in row[5]) == bool(e["saturated"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calls = sum(r["calls"] for r in rows(run_dir, "SELECT calls FROM rewrites"))
    assert calls == metrics["llm"]["calls"] > 0
    assert f'<div class="v">{calls}</div><div class="l">LLM calls' in html
    assert f'{_pct(metrics["heldout_accuracy"]["before"])} → {_pct(metrics["heldout_accuracy"]["final"])}' in html
    n_sym = len(rows(run_dir, "SELECT * FROM decisions WHERE route='symbolic'"))
    assert f'<div class="v">{n_sym}</div><div class="l">routed symbolic' in html
    # Route totals by path.
    for r in rows(run_dir, "SELECT path, SUM(route='symbolic') s, SUM(route='numerical') n, COUNT(*) c FROM decisions GROUP BY path"):
        assert f"<td>{r['path']}</td><td class=\"n\">{r['c']}</td><td class=\"n\">{r['s']}</td><td class=\"n\">{r['n']}</td>" in html


def test_sample_trajectory_section(report, runs):
    path, sample = report
    html = path.read_text(encoding="utf-8")
    section = html.split('id="sample"', 1)[1].split("</section>", 1)[0]
    for s in rows(runs[0], f"SELECT * FROM signals WHERE sample_id='{sample}' ORDER BY epoch"):
        assert f"{s['loss']:.4f}" in section and f"{s['c2']:.4f}" in section
    for d in rows(runs[0], f"SELECT * FROM decisions WHERE sample_id='{sample}'"):
        assert _esc(d["reason"]) in section
    assert 'class="badge accepted"' in section


def test_large_runs_cap_decision_rows_and_strip_points(runs, monkeypatch):
    import matplotlib

    from nslora.report import html, plots

    run = D.load_run(runs[0])
    total = len(run.decisions)
    monkeypatch.setattr(html, "MAX_DECISIONS", 2)
    page = html.render_run(run)
    assert f"2 of {total} decisions with their reasons (symbolic first)" in page
    routing = page.split('id="routing"', 1)[1].split("</section>", 1)[0].split("<details>", 1)[1]
    assert len(re.findall(r"<tr[^>]*><td", routing)) == 2
    # A strip plot draws one dot artist per epoch and colour, at most MAX_POINTS dots per epoch.
    monkeypatch.setattr(plots, "MAX_POINTS", 3)
    fig, ax = matplotlib.pyplot.subplots()
    plots._strip(ax, {1: [0.1 * i for i in range(10)], 2: [0.5] * 10}, {1: [i % 2 == 0 for i in range(10)], 2: [False] * 10})
    dots = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert len(dots) <= 4 and sum(len(c.get_offsets()) for c in dots) == 6
    matplotlib.pyplot.close(fig)


def test_terminal_summary_numbers(runs, capsys):
    from rich.console import Console

    from nslora.report import terminal

    run = D.load_run(runs[0])
    buf = io.StringIO()
    terminal.print_inspect(run, Console(file=buf, width=160, color_system=None))
    out = buf.getvalue()
    for e in rows(runs[0], "SELECT * FROM epochs WHERE epoch > 0"):
        assert f"{e['train_loss']:.4f}" in out
    assert "Routing decisions by path" in out and "signal" in out
    assert re.search(r"accepted\s+│\s+ok\s+│\s+\d+", out) and "rejected" in out
    calls = sum(r["calls"] for r in rows(runs[0], "SELECT calls FROM rewrites"))
    assert re.search(rf"│\s+{calls}\s+│", out)


def test_inspect_errors_are_one_line(tmp_path, runs, capsys):
    assert report_main(["inspect", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert report_main(["inspect", str(runs[0]), "--sample", "no-such-id", "--no-html"]) == 2
    assert "no sample 'no-such-id'" in capsys.readouterr().err


def test_word_diff_and_reason_kinds():
    left, right = D.word_diff("Mary went to the hall. Where is Mary?", "Read this. Mary went to the kitchen. Where is Mary?")
    assert "".join(t for _, t in left) == "Mary went to the hall. Where is Mary?"
    assert "".join(t for _, t in right) == "Read this. Mary went to the kitchen. Where is Mary?"
    assert [t.strip() for op, t in left if op == "del"] == ["hall."]
    assert [t.strip() for op, t in right if op == "ins"] == ["Read this.", "kitchen."]
    # A line break that became a space is no change.
    left, right = D.word_diff("a b\nc d", "a b c x d")
    assert all(op == "same" for op, _ in left) and [t for op, t in right if op != "same"] == ["x "]
    assert D.reason_kind("too long (812 chars, limit 400)") == "too long"
    assert D.reason_kind("dropped name(s): Mary") == "dropped name(s)"
    assert D.reason_kind("ok") == "ok"


def test_thresholds_are_read_from_signal_policy_reasons(runs):
    run = D.load_run(runs[0])
    thr = D.thresholds(run)
    routed = {d["epoch"] for d in run.decisions}
    assert set(thr) == routed and all("c1" in t for t in thr.values())


# ----------------------------------------------------------------------------------------------- compare


def test_compare_two_runs(runs, tmp_path):
    from rich.console import Console

    from nslora.report.cli import run_command

    out = tmp_path / "cmp.html"
    buf = io.StringIO()
    import argparse

    args = argparse.Namespace(command="compare", run_dirs=[str(r) for r in runs], out=str(out), no_html=False)
    assert run_command(args, console=Console(file=buf, width=200, color_system=None)) == 0
    text = buf.getvalue()
    html = out.read_text(encoding="utf-8")
    for r in runs:
        m = json.loads((r / "metrics.json").read_text())
        name = r.name
        line = next(line for line in text.splitlines() if line.startswith(f"│ {name} "))
        assert _pct(m["heldout_accuracy"]["final"]) in line and f" {m['llm']['calls']} " in line
        assert f"<td>{name}</td>" in html
    assert "lora-only" in html and "<svg" in html
    p = _Links()
    p.feed(html)
    assert all(u.startswith("#") for u in p.urls) and "script" not in p.tags


# ----------------------------------------------------------------------------------------------- tensorboard


def test_tensorboard_logger_writes_readable_events(tmp_path, runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nslora.report.tensorboard import TensorBoardLogger, scalars_from_store

    tb = TensorBoardLogger(tmp_path)
    tb.log_epoch(1, {"train/loss": 1.5, "heldout/accuracy": 0.25, "routes": {"signal": {"symbolic": 3}}, "skip": None})
    tb.log_epoch(2, scalars_from_store(runs[0], 2))
    from router.store import Store

    store = Store(runs[0] / "run.sqlite")  # what the graph holds: the same numbers through its Store
    try:
        assert scalars_from_store(store, 2) == scalars_from_store(runs[0], 2)
        tb.log_epoch(3, scalars_from_store(store, 3))
    finally:
        store.close()
    tb.close()
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "heldout/accuracy", "routes/signal/symbolic", "llm/calls", "llm/cost"} <= tags
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    e2 = rows(runs[0], "SELECT train_loss FROM epochs WHERE epoch=2")[0]["train_loss"]
    assert loss[1] == 1.5 and loss[2] == pytest.approx(e2, rel=1e-6) and set(loss) == {1, 2, 3}
    calls = {e.step: e.value for e in acc.Scalars("llm/calls")}
    assert calls[3] == sum(r["calls"] for r in rows(runs[0], "SELECT calls FROM rewrites WHERE epoch<=3"))
    routed = {e.step: e.value for e in acc.Scalars("routes/signal/symbolic")}
    assert routed[2] == len(rows(runs[0], "SELECT * FROM decisions WHERE epoch=2 AND route='symbolic'"))


def test_tensorboard_missing_names_the_install(monkeypatch, tmp_path):
    import sys

    from nslora.report.tensorboard import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


# ----------------------------------------------------------------------------------------------- chromium

# Injected into a copy of the page: records uncaught errors, failed resource loads and console.error into the DOM,
# plus how many plots have a visible size, so --dump-dom can report them.
PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__errs.push(e.message || ('failed to load ' + (t.src || t.href || t.tagName)));
}, true);
var __ce = console.error; console.error = function () { window.__errs.push([].join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var shown = 0; document.querySelectorAll('svg').forEach(function (s) { var r = s.getBoundingClientRect(); if (r.width > 200 && r.height > 100) shown++; });
  document.documentElement.setAttribute('data-probe', JSON.stringify({errors: window.__errs, plots: shown}));
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost', "--virtual-time-budget=3000"]


def _chromium(tmp_path, page: Path, *extra) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=60)


def _probe(tmp_path, html: str, name: str) -> tuple[dict, str]:
    page = tmp_path / name
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    res = _chromium(tmp_path, page, "--dump-dom")
    m = re.search(r"data-probe=\"([^\"]*)\"", res.stdout)
    assert m, f"chromium gave no probe result: {res.stderr[-2000:]}"
    from html import unescape

    return json.loads(unescape(m.group(1))), res.stderr


NETWORK_ERRORS = re.compile(r"ERR_NAME_NOT_RESOLVED|ERR_NAME_RESOLUTION_FAILED|Failed to load resource|net::ERR_")
CONSOLE_ERRORS = re.compile(r"Uncaught|CONSOLE.*(error|Error)|SyntaxError|TypeError|ReferenceError")


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    html = report[0].read_text(encoding="utf-8")
    probe, stderr = _probe(tmp_path, html, "probe.html")
    assert probe["errors"] == [], probe["errors"]
    assert probe["plots"] >= 4, probe
    assert not NETWORK_ERRORS.search(stderr), NETWORK_ERRORS.search(stderr).group(0)
    assert not CONSOLE_ERRORS.search(stderr), CONSOLE_ERRORS.search(stderr).group(0)

    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, report[0], f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, f"only {len(colours)} colours: the page looks blank"
    background = max(colours)[0] / (img.size[0] * img.size[1])
    assert background < 0.85, f"{background:.0%} of the screenshot is one colour"
    # The plot area (below the header, the overview and the first heading) is drawn, not empty.
    band = img.crop((80, 560, 1200, 1000))
    assert len(band.getcolors(maxcolors=1 << 20)) > 50
    keep = os.environ.get("NSLORA_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
def test_chromium_probe_catches_errors_and_network_requests(tmp_path):
    """The checks above would see a broken page: a script error and a request to another host both show up."""
    bad = ('<!DOCTYPE html><html><head><title>x</title></head><body><img src="https://example.com/pixel.png">'
           '<script>undefinedFunction();</script></body></html>')
    probe, stderr = _probe(tmp_path, bad, "bad.html")
    assert any("undefinedFunction" in e for e in probe["errors"]), probe
    assert any("example.com" in e for e in probe["errors"]), probe


# ----------------------------------------------------------------------------------------------- reward policy


def test_policy_report_shows_calibration_histogram_and_reliability(tmp_path):
    from test_reward import synthetic_pairs
    from tiny import make_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    from policies.reward import RewardPolicyConfig, train_reward_policy
    from nslora.report.policy import reliability, write_policy_report

    tok = make_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    pairs = synthetic_pairs(n_items=20, n_train=80, n_test=40)
    train_reward_policy(pairs, RewardPolicyConfig(backbone=str(tmp_path / "bert"), epochs=1, batch_size=16,
                                                  max_length=64, p=0.5, band=0.05), tmp_path / "policy")
    only_json = write_policy_report(tmp_path / "policy", out=tmp_path / "a.html").read_text(encoding="utf-8")
    keep = os.environ.get("NSLORA_POLICY_REPORT_DIR")
    assert only_json.count("<svg") == 1 and "Calibration map" in only_json and "Score histogram" not in only_json
    page = write_policy_report(tmp_path / "policy", pairs=pairs["test"]).read_text(encoding="utf-8")
    assert (tmp_path / "policy" / "report.html").exists()
    assert "Score histogram" in page and "Reliability" in page and "pairwise accuracy" in page
    if keep:
        shutil.copy(tmp_path / "policy" / "report.html", keep)
    p = _Links()
    p.feed(page)
    assert "script" not in p.tags and all(u.startswith("#") for u in p.urls)
    rel = reliability([0.05, 0.15, 0.95, 0.9], [0, 0, 1, 0], bins=10)
    assert [r["n"] for r in rel] == [1, 1, 2] and rel[-1]["observed"] == 0.5
