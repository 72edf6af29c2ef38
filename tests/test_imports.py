"""The package's modules stand on their own: each imports in a fresh interpreter, and the import
graph (every ``import`` of a ``jepa_sweeps`` module anywhere in a module, lazy ones included) has
no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jepa_sweeps"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def imported(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    known = set(MODULES) | {module_name(p) for p in PACKAGE.rglob("__main__.py")}
    return {module_name(p): imported(p, known) for p in PACKAGE.rglob("*.py")}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle (``a → b → … → a``), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_package_import_graph_has_no_cycle() -> None:
    assert cycle(graph()) == [], " → ".join(cycle(graph()))


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert "jepa_sweeps.storage" in graph()["jepa_sweeps.sweep"]  # the graph sees `from x import y`


def test_the_report_does_not_import_the_sweep() -> None:
    """The sweep attaches the report to its parent run; the report finds sweeps through ``storage``."""
    edges = graph()
    assert not any("jepa_sweeps.sweep" in edges[m] for m in edges if m.startswith("jepa_sweeps.report"))


# Fresh interpreters: one preloads the third-party libraries the package uses, then forks one child
# per module, which imports only that module (no jepa_sweeps module is loaded before the fork).
FORK_EACH = """
import importlib, os, sys, traceback
import matplotlib, mlflow, numpy, optuna, pyarrow.fs, pydantic, ray, ray.train, ray.tune, requests, scipy, sklearn, torch, yaml
assert not [m for m in sys.modules if m.startswith("jepa_sweeps")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", *failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_EACH, *MODULES], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_in_a_fresh_python(module: str) -> None:
    """What a user does: ``python -c "import jepa_sweeps.X"``, nothing loaded before."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def test_python_m_report_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "jepa_sweeps.report", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "EXPERIMENT_OR_SPEC" in done.stdout, done.stderr[-3000:]


def test_no_module_of_the_package_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
