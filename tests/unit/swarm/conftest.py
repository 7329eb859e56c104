"""Swarm stacks for the unit tests: ``kbinfra init --target swarm`` over the test bed's nodes
(tests/fixtures/swarm/nodes.yaml), then fixed secrets and TLS files as for every stack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kbinfra.stack import Stack, open_stack
from tests.conftest import FIXTURES, write_stack_dir

NODE_FILE = FIXTURES / "swarm" / "nodes.yaml"


def write_swarm_stack_dir(
    folder: Path,
    profile: str = "minimum",
    overrides: dict[str, Any] | None = None,
    nodes_file: Path = NODE_FILE,
) -> Path:
    return write_stack_dir(folder, profile, overrides, nodes_file=nodes_file)


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
