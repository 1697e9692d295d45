"""The README stays short and links only to pages that exist; the generated reference pages are what the code says
today; the docs site builds with --strict (a broken link, anchor or a page left out of nav fails it)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links, "the README links into the docs"
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", ["config", "cli", "api"])
def test_generated_reference_matches_the_code(page):
    fresh = _generator().pages()[page]
    committed = (ROOT / "docs" / "reference" / f"{page}.md").read_text(encoding="utf-8")
    assert committed == fresh, f"docs/reference/{page}.md is stale: run `python docs/gen_reference.py`"


def test_every_config_key_and_command_is_in_the_reference():
    import dataclasses
    import typing

    from nslora.commands.cli import _parser
    from router.config import Config

    gen = _generator()
    config, cli = gen.config_reference(), gen.cli_reference()
    for section in dataclasses.fields(Config):
        assert f"## `{section.name}`" in config
        for f in dataclasses.fields(typing.get_type_hints(Config)[section.name]):
            assert f"| `{f.name}` |" in config, f"{section.name}.{f.name}"
    for path, _ in gen._subcommands(_parser(), ["nslora"]):
        assert f"## `{' '.join(path)}`" in cli
    assert "## `nslora policy bench`" in cli and "--print-config" in cli


def test_every_built_in_name_is_in_the_help_of_its_config_key():
    """The checklist for a new built-in (docs/development.md) ends here: its name shows in `nslora run --help` and
    in the config reference."""
    import dataclasses

    from policies import REGISTRY
    from policies.config import PolicyConfig
    from rewriter.config import RewriterConfig
    from rewriter.engines import ENGINES
    from rewriter.strategies import STRATEGIES
    from nslora.tasks import TASKS
    from nslora.tasks.config import TaskConfig

    def help_of(cls, key):
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == key)

    for names, cls, key in [(REGISTRY, PolicyConfig, "name"), (STRATEGIES, RewriterConfig, "strategy"),
                            (ENGINES, RewriterConfig, "engine"), (TASKS, TaskConfig, "name")]:
        missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", help_of(cls, key))]
        assert not missing, f"{cls.__name__}.{key}'s help does not name {missing}"


def test_the_docs_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: `make test` installs it with the test extra")
        pytest.skip("mkdocs not installed (pip install -e '.[test]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()


# ----------------------------------------------------------------------------------- the README's figures

FIGURE = re.compile(r"(?<![\w.])[+\-−]?\d+(?:\.\d+)?%|(?<![\w.])[+\-−]?\d+\.\d+(?![\w.])")
# Decimals in the README that are not measurements: the Python version and the paper's arXiv id.
NOT_FIGURES = {"3.10", "2601.12711"}


def _values(node, out: set[float]) -> set[float]:
    """Every number a results file holds: JSON numbers and the numbers inside its strings (printed lines)."""
    if isinstance(node, bool):
        return out
    if isinstance(node, (int, float)):
        out.add(float(node))
    elif isinstance(node, str):
        out.update(float(x) for x in re.findall(r"\d+(?:\.\d+)?", node))
    elif isinstance(node, dict):
        for v in node.values():
            _values(v, out)
    elif isinstance(node, list):
        for v in node:
            _values(v, out)
    return out


def _held(token: str, values: set[float]) -> bool:
    """A figure as printed (e.g. '0.750', '+16.2', '94%') is held when some value rounds to it, as a share or x100."""
    text = token.lstrip("+-−").rstrip("%")
    digits = len(text.split(".")[1]) if "." in text else 0
    want = float(text)
    return any(abs(round(v, digits) - want) < 1e-9 or abs(round(100 * v, digits) - want) < 1e-9 for x in values
               for v in (x, -x))


def _blocks(text: str):
    """(prose outside code fences and marked blocks, [(results file, block text)] of the marked blocks)."""
    marked = []
    for m in re.finditer(r"<!-- (?:demo|measured): (results/[\w.-]+\.json) -->\n(.*?)<!-- /(?:demo|measured) -->", text, re.S):
        marked.append((m.group(1), m.group(2)))
    prose = re.sub(r"<!-- (demo|measured): .*?<!-- /\1 -->", "", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    return prose, marked


def test_every_figure_in_the_readme_is_held_by_the_results_file_it_names():
    prose, marked = _blocks(README.read_text(encoding="utf-8"))
    assert marked, "the README's measured figures sit in marked blocks that name their results file"
    stray = [t for t in FIGURE.findall(prose) if t not in NOT_FIGURES]
    assert not stray, f"figures outside a marked block (put them in one that names their results file): {stray}"
    for rel, block in marked:
        data = json.loads((ROOT / rel).read_text(encoding="utf-8"))
        values = _values(data, set())
        if "printed" in data:  # a printout quoted in the block is the file's, line for line
            for quoted in re.findall(r"```\n(.*?)```", block, re.S):
                absent = [ln for ln in quoted.splitlines() if ln not in data["printed"]]
                assert not absent, f"README quotes lines that {rel} did not print: {absent}"
        missing = [t for t in FIGURE.findall(block) if not _held(t, values)]
        assert not missing, f"README quotes figures that {rel} does not hold: {missing}"
        st = data.get("stamp") or {}
        assert st.get("commit") and st.get("date") and st.get("machine"), f"{rel} is not stamped with commit, date and machine"
        assert st["commit"][:10] in block and st["date"][:10] in block, f"the README's block from {rel} names its commit and date"


def test_the_readmes_printout_is_the_demo_run_line_for_line():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- demo: (results/demo\.json) -->\n```\n(.*?)```", text, re.S)
    assert m, "the README shows the demo's printout from results/demo.json"
    printed = json.loads((ROOT / m.group(1)).read_text(encoding="utf-8"))["printed"]
    assert m.group(2).rstrip("\n").splitlines() == printed


def test_the_figure_check_catches_a_figure_no_results_file_holds():
    values = _values({"acc": 0.75, "delta": {"mean": -0.162}, "printed": ["wall time: 101.3 s"]}, set())
    assert _held("0.750", values) and _held("75%", values) and _held("+16.2", values) and _held("101.3", values)
    assert not _held("0.760", values) and not _held("16.3", values) and not _held("99.0%", values)
    assert FIGURE.findall("acc 0.750, Δ +16.2 points (94%), 16 layers, arXiv 2601.12711") == ["0.750", "+16.2", "94%", "2601.12711"]
