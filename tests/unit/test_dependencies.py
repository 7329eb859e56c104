"""What kbinfra imports is what ``pip install kbinfra`` installs."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import packages_distributions

from tests.dependency_scan import SRC, third_party_imports

PYPROJECT = SRC.parents[1] / "pyproject.toml"
LAZY = {"docker", "paramiko", "psycopg", "redis", "httpx"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return project


def declared_dependencies() -> set[str]:
    requirements = _project()["dependencies"]
    assert isinstance(requirements, list)
    names = (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r) for r in requirements)
    return {_normal(match[0]) for match in names if match}


def test_the_scan_sees_the_lazy_imports() -> None:
    assert third_party_imports() >= LAZY


def test_every_imported_module_is_a_dependency_not_an_extra() -> None:
    declared = declared_dependencies()
    providers = packages_distributions()
    missing = {
        module: providers.get(module, [module])
        for module in sorted(third_party_imports())
        if not any(_normal(dist) in declared for dist in providers.get(module, [module]))
    }
    assert not missing, f"imported but not in [project].dependencies: {missing}"


def test_the_runtime_extra_stays_and_is_empty() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert extras["runtime"] == []
