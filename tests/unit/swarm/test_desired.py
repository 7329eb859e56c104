"""The Swarm contract's values can be made with their defaults (Python 3.11 refuses an
unhashable default such as a mapping proxy; a default_factory keeps it read-only)."""

from __future__ import annotations

import pytest

from kbinfra.swarm.desired import SwarmService


def test_a_service_with_default_env_and_labels_has_empty_read_only_mappings() -> None:
    service = SwarmService(
        stack="kb", service="web", name="kb_web", image="web:1", cpus=0.5, memory_mb=64
    )
    assert dict(service.env) == {} and dict(service.labels) == {}
    with pytest.raises(TypeError):
        service.env["X"] = "1"  # type: ignore[index]
