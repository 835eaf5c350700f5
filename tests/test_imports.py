"""The import graph: plugins use only prefdiff.api, and no package imports itself in a circle.

A stdlib ``ast`` walk over the source, so the test sees lazy imports inside
functions too (a circle through them breaks as soon as someone moves an import
to the top of a file). Imports under ``if TYPE_CHECKING:`` do not count.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib import metadata
from pathlib import Path

import pytest

import prefdiff
from prefdiff.plugins import ENTRY_POINT_GROUP


def package_modules(package: str) -> dict[str, Path]:
    """Every module of an importable package: dotted name -> source file."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not an installed package"
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, module: str, known: set[str] = frozenset()) -> set[str]:
    """Absolute names of everything ``module`` (at ``path``) imports, anywhere in the file.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is one of the
    ``known`` modules (a submodule), else of ``pkg`` and ``pkg.name``.
    """
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.update({name} if name in known else {base, name})
    return found


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between the given modules (an import of ``pkg.mod.name`` counts as one of ``pkg.mod``)."""
    known = set(modules)
    return {name: {m for m in imports_of(path, name, known) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def plugin_packages() -> list[str]:
    """The top-level packages of every installed prefdiff plugin (field plugins and the tutorial's)."""
    return sorted({ep.value.split(":")[0].split(".")[0] for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def test_every_field_plugin_and_the_tutorial_are_walked():
    assert {"prefdiff_medical", "prefdiff_driving", "prefdiff_robotics", "prefdiff_colorfulness"} <= set(
        plugin_packages())


@pytest.mark.parametrize("package", plugin_packages())
def test_plugins_import_only_the_api_from_prefdiff(package):
    offending = {}
    for name, path in package_modules(package).items():
        bad = sorted(m for m in imports_of(path, name)
                     if (m == "prefdiff" or m.startswith("prefdiff.")) and m != "prefdiff.api"
                     and not m.startswith("prefdiff.api."))
        if bad:
            offending[name] = bad
    assert offending == {}, f"plugin modules import prefdiff internals; use prefdiff.api: {offending}"


@pytest.mark.parametrize("package", ["prefdiff", *plugin_packages()])
def test_no_import_circles(package):
    assert cycles(graph(package_modules(package))) == []


def test_the_walk_sees_lazy_imports_and_finds_circles(tmp_path):
    # The checks above must be able to fail: a circle through a lazy import, and a private import.
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\nfrom prefdiff.bench import runner\n")
    modules = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    assert cycles(graph(modules)) == [["pkg.a", "pkg.b"]]
    assert "prefdiff.bench.runner" in imports_of(tmp_path / "b.py", "pkg.b")


def test_api_names_resolve_and_are_reexported():
    from prefdiff import api

    for name in api.__all__:
        assert getattr(api, name) is getattr(prefdiff, name), name
    assert set(api.__all__) <= set(prefdiff.__all__)
