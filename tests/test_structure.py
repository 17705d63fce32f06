"""The package's import graph: no circles, and lower layers never import upper ones.

Every import of a package module counts, at module level, inside a function or under
``TYPE_CHECKING``: a function-level import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asn2n_dask"

#: The layers, lowest first.  A module may import modules of its own layer or of a lower
#: one, never of a higher one.  Inference flows read -> plan -> stats -> risk ->
#: normalise -> model -> blend -> write; files, clusters, figures and terminals are
#: edges that the upper layers call; training reuses the array stages and the models.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("_version", "errors", "config", "axes"),
    "edges": ("ome", "store", "io", "resume", "source", "cluster", "hpc", "connect", "plots", "progress"),
    "arrays": ("plan", "risk", "stats", "method", "normalize", "blend", "pairs", "standalone", "model", "compiled",
               "checks", "synthetic", "testing"),
    "blocks": ("predict", "predict3d", "checkpoint", "stats_pass"),
    "training": ("sampling", "train", "train3d"),
    "runs": ("pipeline",),
    "verbs": ("api", "report", "export", "view", "widget"),
    "shell": ("cli", "__main__", "__init__"),
}
LEVEL = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "asn2n_dask":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("asn2n_dask.")]
        found |= {n for n in names if n in known and n != path.stem}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(PACKAGE / f"{m}.py", known) for m in sorted(known)}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_the_graph_sees_module_and_function_level_imports(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asn2n_dask.a\n")
    known = {"a", "b", "c"}
    edges = {m: imports_of(tmp_path / f"{m}.py", known) for m in known}
    assert edges == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert cycle(edges) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer():
    assert modules() - set(LEVEL) == set(), "add the new module to LAYERS"
    assert set(LEVEL) - modules() == set(), "a module named in LAYERS no longer exists"


def test_no_import_circle():
    found = cycle(graph())
    assert found is None, "import circle: " + " -> ".join(found or [])


@pytest.mark.parametrize("module", sorted(modules()))
def test_lower_layers_never_import_upper_ones(module):
    layer = list(LAYERS)[LEVEL[module]]
    upward = sorted(n for n in graph()[module] if LEVEL[n] > LEVEL[module])
    assert not upward, f"{module} ({layer}) imports " + ", ".join(
        f"{n} ({list(LAYERS)[LEVEL[n]]})" for n in upward)
