"""How long-running work reports what it is doing: one protocol, one silent implementation.

Apply, probes, backups and image builds and transfers all report through :class:`Progress`;
the commands hand them a :class:`ConsoleProgress` (timed notes and transfer bars on stderr,
so JSON on stdout stays clean), tests and library callers :data:`SILENT`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from kbinfra.ui import Console


#: Where one service of an apply is: waiting for what it needs, at work (creating,
#: starting, checking health), or done one way or the other.
ServiceState = Literal["waiting", "working", "healthy", "failed", "skipped"]


class Progress(Protocol):
    """Notes about a step (``source`` is a service, or ``images``, ``network``...), each
    service's state during an apply, and byte counts of long transfers (bars, throughput)."""

    def note(self, source: str, message: str) -> None: ...

    def service_state(self, service: str, state: ServiceState, message: str) -> None: ...

    def transfer(
        self, label: str, total: int | None = None
    ) -> AbstractContextManager[Callable[[int], None]]: ...


class SilentProgress:
    """Reports nothing."""

    def note(self, source: str, message: str) -> None:
        return None

    def service_state(self, service: str, state: ServiceState, message: str) -> None:
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

    def service_state(self, service: str, state: ServiceState, message: str) -> None:
        """Off a terminal (or under ``--output json``), one timed line per change."""
        self.note(service, message)

    def transfer(
        self, label: str, total: int | None = None
    ) -> AbstractContextManager[Callable[[int], None]]:
        return self.console.transfer(label, total)
