"""How long-running work reports what it is doing: one protocol, one silent implementation.

Apply, probes, backups and image builds and transfers all report through :class:`Progress`;
the commands hand them a :class:`ConsoleProgress` (timed notes and transfer bars on stderr,
so JSON on stdout stays clean), tests and library callers :data:`SILENT`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kbinfra.ui import Console


class Progress(Protocol):
    """Notes about a step (``source`` is a service, or ``images``, ``network``...), and byte
    counts of long transfers (bars, throughput)."""

    def note(self, source: str, message: str) -> None: ...

    def transfer(
        self, label: str, total: int | None = None
    ) -> AbstractContextManager[Callable[[int], None]]: ...


class SilentProgress:
    """Reports nothing."""

    def note(self, source: str, message: str) -> None:
        return None

    @contextmanager
    def transfer(self, label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda size: None


SILENT: Progress = SilentProgress()


class ConsoleProgress:
    """Timed notes and transfer bars through the one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()

    def note(self, source: str, message: str) -> None:
        self.console.note(f"[{time.monotonic() - self.started:6.1f}s] {source}: {message}")

    def transfer(
        self, label: str, total: int | None = None
    ) -> AbstractContextManager[Callable[[int], None]]:
        return self.console.transfer(label, total)
