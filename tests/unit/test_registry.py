"""The registry: one folder per service, and nothing outside a folder names its service."""

from __future__ import annotations

import ast
from pathlib import Path

from kbinfra.registry import all_services, service_folder, service_part

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "kbinfra"
#: Still naming services outside their folders: the profile's budget groups (a profile
#: hands out budgets by these names; see docs/adding-a-service.md), and the Debian packages of
#: the validators ``render --check`` runs, keyed by program (the nginx and postgres binaries,
#: the prometheus package) rather than by service.
KNOWN_LEFTOVERS = {"spec/profile.py", "validation.py"}


def test_every_service_comes_from_its_folder() -> None:
    services = all_services()
    for name, service in services.items():
        module = type(service).__module__
        assert module.startswith("kbinfra.services."), (name, module)
    assert service_folder("postgres") == PACKAGE / "services" / "postgres"
    # An exporter lives in its store's folder but owns none of the folder's parts.
    assert type(services["postgres-exporter"]).__module__ == "kbinfra.services.postgres.exporter"
    assert service_folder("postgres-exporter") is None
    assert service_part("postgres-exporter", "backup") is None
    backup = service_part("postgres", "backup")
    assert backup is not None and backup.__name__ == "kbinfra.services.postgres.backup"
    assert service_part("nginx", "backup") is None  # nginx holds no data


def named_services(path: Path, names: set[str]) -> set[str]:
    """The service names written as string constants in ``path`` (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
    }


def test_no_module_outside_a_service_folder_names_a_service() -> None:
    services = all_services()
    owner = {
        name: Path(type(s).__module__.replace(".", "/")).parts[2] for name, s in services.items()
    }
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.as_posix() in KNOWN_LEFTOVERS:
            continue
        folder = relative.parts[1] if relative.parts[0] == "services" else None
        declared = {
            needed
            for service in services.values()
            if type(service).__module__.split(".")[2:3] == [folder]
            for needed in service.requires
        }
        named = {
            name
            for name in named_services(path, set(services))
            if owner[name] != folder and name not in declared
        }
        if named:
            found[relative.as_posix()] = sorted(named)
    assert found == {}
