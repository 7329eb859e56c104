"""Fixtures that need the real Docker Engine: skipped without one, failing in CI instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        import docker  # noqa: PLC0415

        client = docker.from_env()
        client.ping()
    except Exception as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Docker Engine is needed in CI: {error}")
        pytest.skip(f"no Docker Engine here: {error}")
    yield client
    client.close()
