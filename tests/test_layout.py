"""The layout rules the code keeps: small files and functions, and packages that never import the orchestrator."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "adapters", "tasks", "policies", "rewriter", "router", "report", "bench"]
# The packages below the orchestrator: none of them may import router (nor report, which reads run folders).
FLOORS = {"core": set(), "adapters": {"core"}, "tasks": {"core"}, "policies": {"core", "adapters", "tasks"},
          "rewriter": {"core", "adapters", "tasks"}}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources():
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imports(tree) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_files_and_functions_are_small():
    long_files, long_functions = [], []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_lower_packages_never_import_the_orchestrator(package):
    ours = set(PACKAGES) - {"bench"}
    for path in (ROOT / package).rglob("*.py"):
        used = _imports(ast.parse(path.read_text())) & ours - {package}
        assert used <= FLOORS[package], f"{path.relative_to(ROOT)} imports {sorted(used - FLOORS[package])}"
