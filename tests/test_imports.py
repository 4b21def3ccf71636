"""The package's modules form layers: every import points down, none closes a cycle.

Every ``import`` counts: at module level, inside a function (a lazy import is a
dependency all the same) and under ``if TYPE_CHECKING:`` (a type names what it depends
on). Each module must also import on its own, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_mltrain"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(tree: ast.AST, module: str, is_package: bool):
    """Absolute names of what ``tree`` imports, anywhere in it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (an import of ``a.b.c`` uses ``a.b.c``
    only: a parent package's ``__init__`` is counted where it is imported by name)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in _imports(tree, name, path.name == "__init__.py"):
            if imported in mods and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_package_modules():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.timeout(300)
def test_every_module_imports_on_its_own():
    # prefect_mltrain.demo holds a training script shipped as data, not a module to import
    names = [n for n in modules() if not n.startswith("prefect_mltrain.demo")]

    def failure(name: str) -> str | None:  # a fresh interpreter: nothing imported before
        result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                                text=True, timeout=120)
        return f"{name}: {result.stderr.strip()[-300:]}" if result.returncode else None

    with ThreadPoolExecutor(4) as pool:
        assert [f for f in pool.map(failure, names) if f] == []


def test_every_package_the_code_imports_is_declared():
    """A package imported by prefect_mltrain (outside the standard library) is one of its
    declared dependencies, so a fresh install has it — or of a feature's extra
    (``prefect-mltrain[hyperdrive]``), whose code says what to install when it is missing."""
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tooling = ('extra == "test"', 'extra == "bench"')
    declared = {canonicalize_name(Requirement(r).name) for r in requires("prefect-mltrain")
                if not any(extra in r for extra in tooling)}
    declared |= {canonicalize_name(e) for r in requires("prefect-mltrain")
                 if "extra ==" not in r for e in Requirement(r).extras}  # dask[distributed]
    imported = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"prefect_mltrain"}
    providers = packages_distributions()
    undeclared = {name for name in third_party
                  if not {canonicalize_name(d) for d in providers.get(name, [])} & declared}
    assert undeclared == set()
