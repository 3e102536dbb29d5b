"""The architecture, read statically from the sources: every import (module level and inside functions alike) points
down the layers, no modules import each other in a cycle, and no source file grows past ~550 lines.

Layers, bottom to top (README, "Layout"): ``_io`` → ``layers`` → ``models`` → ``data`` → ``tasks`` → ``engine`` →
the libraries on top (``export``, ``bench``, ``fast``, ``flops``, ``visualize``, ``zoo``) → the package facade
``uniformer/__init__.py`` → ``cli`` and ``demo`` → the ``uniformer_cli`` launcher. A module may import its own layer
or any layer below. A new top-level module must be given a layer here.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Set

from conftest import REPO

SRC = REPO / "src"
MAX_LINES = 560
LAYERS = [  # (module prefix, rank)
    ("uniformer._io", 0), ("uniformer.layers", 1), ("uniformer.models", 2), ("uniformer.data", 3),
    ("uniformer.tasks", 4), ("uniformer.engine", 5),
    ("uniformer.export", 6), ("uniformer.bench", 6), ("uniformer.fast", 6), ("uniformer.flops", 6),
    ("uniformer.visualize", 6), ("uniformer.zoo", 6),
    ("uniformer", 7),  # the facade: re-exports the public API
    ("uniformer.cli", 8), ("uniformer.demo", 8),
    ("uniformer_cli", 9),
]


class Import(NamedTuple):
    source: str  # importing module
    target: str  # imported module (or package)
    line: int
    in_function: bool


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = SRC) -> Dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "egg-info" not in str(p)}


def imports(mods: Dict[str, Path]) -> List[Import]:
    """Every import of a project module, resolved to the module imported (``from pkg import mod`` → ``pkg.mod``)."""
    found = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(node) for f in functions for node in ast.walk(f) if node is not f}
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in set(targets):
                if target.split(".")[0] in ("uniformer", "uniformer_cli") and target != name:
                    found.append(Import(name, target, node.lineno, id(node) in nested))
    return found


def layer(module: str) -> Optional[int]:
    matches = [(len(prefix), rank) for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def cycles(edges: List[Import]) -> List[Set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: Dict[str, Set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) is None] == []


def test_no_import_points_up_the_layers():
    edges = imports(modules())
    upward = [f"{e.source}:{e.line} imports {e.target}{' (inside a function)' if e.in_function else ''}"
              for e in edges if layer(e.target) is not None and layer(e.target) > layer(e.source)]
    assert upward == []


def test_no_import_cycles():
    assert cycles(imports(modules())) == []


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The rules above can fail: an upward import hidden in a function and the cycle it closes are both reported."""
    for package in ("uniformer", "uniformer/models", "uniformer/engine"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "uniformer/models/a.py").write_text("def f():\n    from ..engine import b\n    return b\n")
    (tmp_path / "uniformer/engine/b.py").write_text("from ..models.a import f\n")
    edges = imports(modules(tmp_path))
    assert Import("uniformer.models.a", "uniformer.engine.b", 2, True) in edges
    assert Import("uniformer.engine.b", "uniformer.models.a", 1, False) in edges
    assert cycles(edges) == [{"uniformer.models.a", "uniformer.engine.b"}]
    assert layer("uniformer.models.factory") == 2 and layer("uniformer.cli.parser") == 8 and layer("os") is None


def test_no_source_file_is_longer_than_about_550_lines():
    long = {str(p.relative_to(REPO)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _readme_layout() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_package_and_module():
    """README "Layout" is the map of the tree: every package folder and every module in it is named there, and every
    ``name.py`` it names exists."""
    layout = _readme_layout()
    package = SRC / "uniformer"
    missing = [f"{p.parent.name}/" for p in sorted(package.glob("*/__init__.py")) if f"{p.parent.name}/" not in layout]
    missing += [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
                if p.name not in ("__init__.py", "__main__.py") and p.name not in layout]
    assert missing == [], f"README Layout does not name {missing}"
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", layout))
    existing = {p.name for p in SRC.rglob("*.py")} | {p.name for p in (REPO / "benchmarks").rglob("*.py")}
    assert sorted(named - existing) == []
