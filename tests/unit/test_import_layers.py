"""Imports run downward: commands → engines → contract. Read from the source with ``ast``.

Every import statement counts, at module level or inside a function (a lazy import defers the
cost, not the dependency); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "kbinfra"
#: Built into an image and run there; never imported by kbinfra.
NOT_KBINFRA = ("kbinfra.services.embeddings.image.",)
#: The modules above the commands: they mount them.
ABOVE_COMMANDS = {"kbinfra.cli", "kbinfra.entry", "kbinfra.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if not name.startswith(NOT_KBINFRA)}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (s for orelse in child.orelse for s in _statements_of(orelse))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _statements(child)


def _statements_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _statements(node)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The kbinfra modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for statement in _statements(tree):
        if isinstance(statement, ast.Import):
            targets = [alias.name for alias in statement.names]
        else:
            base = statement.module or ""
            if statement.level:
                anchor = package.rsplit(".", statement.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in statement.names]
            targets = [t if t in known else base for t in targets]
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycle_among_kbinfra_modules() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_below_the_commands_imports_a_command_module() -> None:
    graph = import_graph()
    offenders = {
        name: sorted(t for t in targets if t.startswith("kbinfra.commands"))
        for name, targets in graph.items()
        if not name.startswith("kbinfra.commands") and name not in ABOVE_COMMANDS
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_command_module_imports_another() -> None:
    graph = import_graph()
    shared = {"kbinfra.commands", "kbinfra.commands.options"}
    offenders = {
        name: sorted(t for t in targets if t.startswith("kbinfra.commands") and t not in shared)
        for name, targets in graph.items()
        if name.startswith("kbinfra.commands")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycles_finds_every_loop(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_lazy_imports_count_and_type_checking_ones_do_not(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kbinfra import b\n"
        "def f():\n    from kbinfra import c  # noqa: PLC0415\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    assert imports_of("kbinfra.a", path, {"kbinfra.a", "kbinfra.b", "kbinfra.c"}) == {"kbinfra.c"}


def test_targets_do_not_import_the_planner() -> None:
    """``targets/`` runs what the planner decides; the data both need is in ``containers``."""
    graph = import_graph()
    above = ("kbinfra.plan", "kbinfra.apply", "kbinfra.commands", "kbinfra.cli")
    offenders = {
        name: sorted(t for t in targets if t.startswith(above))
        for name, targets in graph.items()
        if name.startswith("kbinfra.targets")
    }
    assert {name: found for name, found in offenders.items() if found} == {}
