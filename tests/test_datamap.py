"""The data map: positions from hand-built signals (a rewritten sample moves), the dense drawing at 100k samples, the
PNG beside the report (a foreign file refused), and the map looked at in headless Chromium."""

from __future__ import annotations

import hashlib
import io

import pytest

from nslora.core.errors import UserError
from nslora.report import data as D
from nslora.report import datamap
from test_e2e import routed_run, tiny_dir  # noqa: F401  (fixtures)
from test_report import CHROMIUM, _chromium, _probe


def _run(tmp_path, n: int, controlled: bool = True) -> D.Run:
    """n training samples over 3 epochs: p(gold) from a hash; every 10th faulted, every 7th a knowledge sample, the
    first one rewritten after epoch 1 (and then confident)."""
    samples, signals, decisions = [], [], []
    for k in range(n):
        i = f"s{k}"
        h = int(hashlib.sha1(i.encode()).hexdigest()[:8], 16)
        fault = ("noise" if k % 20 else "shuffled") if controlled and k % 10 == 0 else None
        kind = "presentation" if fault else ("knowledge" if controlled and k % 7 == 0 else None)
        samples.append({"id": i, "split": "train", "fault": fault, "kind": kind})
        for e in (1, 2, 3):
            p = ((h >> e) % 1000) / 1000 * (0.4 if fault else 1.0)
            version = 1 if k == 0 and e > 1 else 0
            signals.append({"epoch": e, "sample_id": i, "prompt_version": version, "correct": int(p > 0.5),
                            "p_gold": 0.95 if version else p, "margin": p - 0.5, "el2n": 1 - p})
        if k % 10 == 0:
            decisions.append({"epoch": 1, "sample_id": i, "route": "symbolic", "path": "signal"})
    return D.Run(path=tmp_path, name="synthetic", config={}, metrics=None, meta={}, samples=samples, signals=signals,
                 decisions=decisions, rewrites=[], evals=[], epochs=[])


def test_positions_are_the_cartography_of_the_original_prompt_and_a_rewrite_moves_a_sample(tmp_path):
    m = datamap.map_points(_run(tmp_path, 30))
    assert m["controlled"] and len(m["points"]) == 30
    first = next(p for p in m["points"] if p["id"] == "s0")
    assert first["after"] == (0.0, pytest.approx(0.95)) and first["at"][0] == 0.0  # one epoch on the original prompt
    assert first["routed"] and first["group"] == "shuffled"
    groups = {p["group"] for p in m["points"]}
    assert groups == {"shuffled", "noise", "knowledge", "clean"}
    plain = datamap.map_points(_run(tmp_path, 30, controlled=False))
    assert {p["group"] for p in plain["points"]} == {"routed symbolic", "numerical"} and not plain["controlled"]


def test_a_dense_map_draws_density_and_stays_small_at_100k_samples(tmp_path):
    from PIL import Image

    run = _run(tmp_path, 100_000)
    png = datamap.png_bytes(run)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert len(png) < 600_000 and img.size[0] > 600
    assert len(img.getcolors(maxcolors=1 << 20)) > 100  # density shades and dots, not a blank frame
    html = datamap.section_html(run)
    assert 'src="data:image/png;base64,' in html and "<svg" not in html and len(html) < 900_000


def test_the_report_writes_the_png_beside_it_and_refuses_a_foreign_file(tmp_path):
    run = _run(tmp_path, 40)
    page = tmp_path / "report.html"
    path = datamap.write_png(run, page)
    assert path == tmp_path / "report-datamap.png" and datamap.PNG_MARK.encode() in path.read_bytes()[:4096]
    assert datamap.write_png(run, page) == path  # its own file is replaced
    path.write_bytes(b"\x89PNG someone else's picture")
    with pytest.raises(UserError, match="report-datamap.png exists and is not an ns-lora data map"):
        datamap.write_png(run, page)
    assert path.read_bytes() == b"\x89PNG someone else's picture"
    datamap.write_png(run, page, overwrite=True)
    assert datamap.PNG_MARK.encode() in path.read_bytes()[:4096]


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("n", [60, 32_000])
def test_the_data_map_renders_in_headless_chromium(tmp_path, n):
    from PIL import Image

    from nslora.report.html import _page

    html = _page("data map", "synthetic", datamap.section_html(_run(tmp_path, n)))
    probe, _ = _probe(tmp_path, html, "probe.html")
    assert probe["errors"] == [], probe["errors"]
    page = tmp_path / "map.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "map.png"
    res = _chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1000,900")
    assert shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    band = img.crop((60, 200, 940, 800))  # where the map sits, under the heading and the note
    assert len(band.getcolors(maxcolors=1 << 20)) > 60, "the map area is blank"



def test_write_report_checks_both_files_before_writing_either(routed_run, tmp_path):
    from nslora.report.html import write_report

    run_dir, _ = routed_run
    page = tmp_path / "page.html"
    (tmp_path / "page-datamap.png").write_bytes(b"not ours")
    with pytest.raises(UserError, match="page-datamap.png exists"):
        write_report(run_dir, page)
    assert not page.exists()  # refused before anything was written
    assert write_report(run_dir, page, overwrite=True) == page
    assert 'id="datamap"' in page.read_text() and datamap.PNG_MARK.encode() in (tmp_path / "page-datamap.png").read_bytes()[:4096]
