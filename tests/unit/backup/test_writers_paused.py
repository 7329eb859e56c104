"""The app's writers paused around a restore or an upgrade's copy (``writers_paused``).

tests/integration/test_app_tier.py proves the pause against real containers; this is the
bookkeeping: what is paused, what is unpaused after an error, what is said.
"""

from __future__ import annotations

from typing import Any

import pytest

from kbinfra.backup.run import writers_paused
from kbinfra.containers import ObservedContainer
from kbinfra.names import LABEL_SERVICE
from tests.unit.services.app.test_service import IMAGE, MakeStack, make_stack

__all__ = ["make_stack"]


def observed(name: str, service: str) -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{name}", name=name, state="running", status="", image="", image_id="",
        labels={LABEL_SERVICE: service},
    )  # fmt: skip


class Engine:
    """The engine calls ``writers_paused`` makes, recorded; ``unpause`` of ``stuck`` fails."""

    def __init__(self, stuck: str) -> None:
        self.stuck = stuck
        self.calls: list[str] = []

    def stack_containers(self) -> list[ObservedContainer]:
        return [observed("s-app-1", "app-1"), observed("s-worker", "worker-documents-1")]

    def pause(self, container_id: str) -> None:
        self.calls.append(f"pause {container_id}")

    def unpause(self, container_id: str) -> None:
        if container_id == self.stuck:
            raise RuntimeError("no such container")
        self.calls.append(f"unpause {container_id}")

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"Status": "running"}}


class Progress:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def note(self, source: str, message: str) -> None:
        self.lines.append((source, message))


def test_the_writers_are_paused_for_the_block_and_unpaused_after_it_also_on_an_error(
    make_stack: MakeStack,
) -> None:
    """Each caller says what it pauses them for (restore, upgrade) in its progress lines; a
    writer that cannot be unpaused is named in the notes, and the others are unpaused."""
    stack = make_stack(
        "minimum",
        {"app": {"image": IMAGE, "workers": [{"name": "documents", "command": ["worker"]}]}},
    )
    engine, progress, notes = Engine(stuck="id-s-app-1"), Progress(), list[str]()
    with (
        pytest.raises(ValueError, match="the restore failed"),
        writers_paused(stack, engine, progress, notes, doing="restore"),  # type: ignore[arg-type]
    ):
        assert engine.calls == ["pause id-s-app-1", "pause id-s-worker"]
        raise ValueError("the restore failed")
    assert engine.calls == ["pause id-s-app-1", "pause id-s-worker", "unpause id-s-worker"]
    assert notes == ["s-app-1 stayed paused (no such container): `docker unpause s-app-1`"]
    assert progress.lines == [
        ("restore", "paused 2 app container(s) during the restore"),
        ("restore", "waiting until the app's containers are healthy again"),
    ]
