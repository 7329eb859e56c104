"""Swarm stacks for the unit tests: ``kbinfra init --target swarm`` over the test bed's nodes
(tests/fixtures/swarm/nodes.yaml), then fixed secrets and TLS files as for every stack."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.scaffold import init_stack
from kbinfra.secrets import dump_secrets, write_private_file
from kbinfra.spec.stack import load_stack
from kbinfra.stack import Stack, generated_secrets, open_stack
from tests.conftest import FIXTURES, _deep_update, fixed_secret

NODE_FILE = FIXTURES / "swarm" / "nodes.yaml"


def write_swarm_stack_dir(
    folder: Path,
    profile: str = "minimum",
    overrides: dict[str, Any] | None = None,
    nodes_file: Path = NODE_FILE,
) -> Path:
    init_stack(
        folder,
        profile=profile,
        target="swarm",
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


@pytest.fixture
def swarm_dir(tmp_path: Path) -> Callable[..., Path]:
    """``swarm_dir(overrides={...})`` → a Swarm stack folder (not yet opened)."""
    counter = iter(range(1000))

    def factory(
        profile: str = "minimum", overrides: dict[str, Any] | None = None, **kwargs: Any
    ) -> Path:
        return write_swarm_stack_dir(
            tmp_path / f"swarm{next(counter)}", profile, overrides, **kwargs
        )

    return factory


@pytest.fixture
def make_swarm_stack(swarm_dir: Callable[..., Path]) -> Callable[..., Stack]:
    """``make_swarm_stack(overrides={...})`` → a loaded Swarm Stack."""

    def factory(profile: str = "minimum", overrides: dict[str, Any] | None = None) -> Stack:
        return open_stack(swarm_dir(profile, overrides))

    return factory
