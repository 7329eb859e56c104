"""Shared fixtures: stack folders with fixed secrets and TLS files, so output is comparable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.private_file import write_private_file
from kbinfra.registry import get_service
from kbinfra.render import render_service, write_tree
from kbinfra.scaffold import init_stack
from kbinfra.secrets import dump_secrets
from kbinfra.service import ServiceContext
from kbinfra.spec.stack import load_stack
from kbinfra.stack import Stack, generated_secrets, open_stack
from kbinfra.validation import find_tool

FIXTURES = Path(__file__).parent / "fixtures"
PROFILES = ("minimum", "recommended", "large")


def run_kbinfra(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    columns: int = 200,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``kbinfra ARGS`` as a user does (a fresh process), with a fixed terminal width.

    The caller's ``KBINFRA_*`` variables are left out (they stand for options: a developer's
    ``KBINFRA_DIR`` or ``KBINFRA_OUTPUT`` would change what every test sees); ``env`` adds to
    or overrides the rest.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    return subprocess.run(
        [sys.executable, "-m", "kbinfra", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        env={**clean, "COLUMNS": str(columns), **(env or {})},
        timeout=timeout,
    )


def fixed_secret(name: str) -> str:
    """Test secrets: recognisable, so a leak into any output is easy to assert against."""
    return f"TESTSECRET-{name}-0123456789"


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


#: The services ``kbinfra init`` enables that :func:`only_services` can turn off.
INIT_SERVICES = (
    "qdrant",
    "postgres",
    "redis",
    "unstructured",
    "embeddings",
    "nginx",
    "prometheus",
    "alertmanager",
    "grafana",
    "node-exporter",
)


def only_services(*enabled: str) -> dict[str, Any]:
    """Stack-file overrides that enable ``enabled`` alone (exporters follow their store)."""
    return {"services": {name: {"enabled": name in enabled} for name in INIT_SERVICES}}


def write_stack_dir(
    folder: Path,
    profile: str = "minimum",
    overrides: dict[str, Any] | None = None,
    *,
    nodes_file: Path | None = None,
) -> Path:
    """``kbinfra init`` into ``folder`` (``--target swarm --nodes`` when ``nodes_file`` is
    given), then pin secrets and TLS and apply ``overrides``."""
    init_stack(
        folder,
        profile=profile,
        target="local" if nodes_file is None else "swarm",
        domain="kb.example.com",
        images_file=None,
        force=False,
        nodes_file=nodes_file,
    )
    stack_file = folder / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    data["name"] = "kb"
    if overrides:
        _deep_update(data, overrides)
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    spec, _ = load_stack(folder)
    write_private_file(
        folder / "secrets.yaml",
        dump_secrets({name: fixed_secret(name) for name in generated_secrets(spec)}),
    )
    shutil.copy(FIXTURES / "tls" / "cert.pem", folder / "tls" / "cert.pem")
    shutil.copy(FIXTURES / "tls" / "key.pem", folder / "tls" / "key.pem")
    return folder


def edit_stack_file(folder: Path, overrides: dict[str, Any]) -> None:
    """Deep-merge ``overrides`` into ``folder/kbinfra.yaml`` without validating it."""
    stack_file = folder / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    stack_file.write_text(yaml.safe_dump(_deep_update(data, overrides), sort_keys=False))


@pytest.fixture
def make_stack(tmp_path: Path) -> Callable[..., Stack]:
    """``make_stack("large", {"services": {"redis": {"enabled": False}}})`` → a loaded Stack."""
    counter = iter(range(1000))

    def factory(profile: str = "minimum", overrides: dict[str, Any] | None = None) -> Stack:
        folder = tmp_path / f"stack{next(counter)}"
        return open_stack(write_stack_dir(folder, profile, overrides))

    return factory


@pytest.fixture
def require_tool() -> Callable[..., str]:
    """``require_tool("redis-server")`` → its path; skips locally, fails when ``CI=true``."""

    def need(name: str, *extra_dirs: str) -> str:
        found = find_tool(name, *extra_dirs)
        if found is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{name} is not installed, and CI=true needs every validator")
            pytest.skip(f"{name} is not installed")
        return found

    return need


@pytest.fixture
def rendered(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> Callable[..., tuple[ServiceContext, Path]]:
    """``rendered("redis", "large")`` → the service's context and a folder holding its files
    as ``kbinfra render`` writes them (to break on purpose before ``check_rendered``)."""
    counter = iter(range(1000))

    def render(
        service: str, profile: str = "minimum", overrides: dict[str, Any] | None = None
    ) -> tuple[ServiceContext, Path]:
        ctx = make_stack(profile, overrides).contexts[service]
        out = tmp_path / f"rendered{next(counter)}"
        write_tree(render_service(get_service(service), ctx), out)
        return ctx, out

    return render


@pytest.fixture
def edit_once() -> Callable[[Path, str, str], int]:
    """``edit_once(path, old, new)`` replaces ``old`` once and returns its 1-based line."""

    def edit(path: Path, old: str, new: str) -> int:
        text = path.read_text()
        assert old in text, f"{old!r} is not in {path}"
        path.write_text(text.replace(old, new, 1))
        return text[: text.index(old)].count("\n") + 1

    return edit
