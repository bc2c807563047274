"""The import graph among cai_lib modules has no cycles.

Every import counts, including those inside functions: a lazy import hides a cycle from
Python's loader, not from a reader, and two modules that need each other are one concern
split in two. The walker reads the source (AST), so it imports nothing heavy and sees
subpackages (cai_lib/<pkg>/...) as well as top-level modules.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "cai_lib"


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the package."""
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _resolve_from(node: ast.ImportFrom, importer: str, files: dict[str, Path]) -> str:
    """The absolute module a `from X import ...` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    # A package's own __init__ is its anchor for `from . import`; a module's is its parent.
    anchor = importer.split(".") if _is_package(importer, files) else importer.split(".")[:-1]
    base = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(importer: str, files: dict[str, Path]) -> set[str]:
    """The package modules `importer` imports anywhere in its source (functions included)."""
    top = importer.split(".")[0]
    tree = ast.parse(files[importer].read_text(encoding="utf-8"), filename=str(files[importer]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, importer, files)
            # `from pkg import name`: name is a submodule when one exists, else an attribute.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                       for a in node.names]
        else:
            continue
        for name in targets:
            # `import cai_lib.a.b` binds through cai_lib.a.b; keep the deepest known module.
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] == top and name != importer:
                found.add(name)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    files = module_files(package_dir)
    return {name: imported_modules(name, files) for name in files}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a -> b -> ... -> a) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {group}")  # Tarjan guarantees one


@pytest.mark.parametrize("name", sorted(module_files()))
def test_every_module_imports(name):
    """Every module loads (the notebook-only ones too, e.g. views), so `make test-fast`,
    which skips the notebook pipeline, still executes every module's top level."""
    importlib.import_module(name)


def test_cai_lib_import_graph_has_no_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among cai_lib modules:\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles)


# ---- the walker itself ------------------------------------------------------------------------

def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_walker_sees_function_level_relative_and_subpackage_imports(tmp_path):
    pkg = tmp_path / "cai_lib"
    _write(tmp_path, "cai_lib/__init__.py", "")
    _write(tmp_path, "cai_lib/a.py", "def f():\n    from .stages import run\n")
    _write(tmp_path, "cai_lib/stages/__init__.py", "from . import run\n")
    _write(tmp_path, "cai_lib/stages/run.py", "from .. import b\nimport os\n")
    _write(tmp_path, "cai_lib/b.py", "import cai_lib.a\nfrom cai_lib import errors_free\n")
    graph = import_graph(pkg)
    assert graph["cai_lib.a"] == {"cai_lib.stages.run"}
    assert graph["cai_lib.stages"] == {"cai_lib.stages.run"}
    assert graph["cai_lib.stages.run"] == {"cai_lib.b"}
    assert graph["cai_lib.b"] == {"cai_lib.a", "cai_lib"}
    assert find_cycles(graph) == [["cai_lib.a", "cai_lib.stages.run", "cai_lib.b", "cai_lib.a"]]


def test_walker_finds_no_cycle_in_a_layered_package(tmp_path):
    pkg = tmp_path / "cai_lib"
    _write(tmp_path, "cai_lib/__init__.py", "")
    _write(tmp_path, "cai_lib/low.py", "import json\n")
    _write(tmp_path, "cai_lib/mid.py", "from .low import x\n")
    _write(tmp_path, "cai_lib/top.py", "from . import low, mid\n")
    assert find_cycles(import_graph(pkg)) == []
