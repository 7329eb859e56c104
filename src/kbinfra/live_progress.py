"""Apply's live display on a terminal: one line per service, a spinner while it works.

Used only when stderr is a terminal and the output is text; otherwise apply reports through
:class:`kbinfra.progress.ConsoleProgress`, one timed line per change. rich is imported when
the display opens, never when this module loads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from kbinfra.progress import ServiceState

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from kbinfra.ui import Console

#: What a finished line starts with, and its colour; a working line starts with a spinner.
MARKS = {
    "waiting": ("·", "dim"),
    "healthy": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("-", "yellow"),
}


class ServiceLine(NamedTuple):
    state: ServiceState
    message: str
    since: float


class LiveApplyProgress:
    """A :class:`~kbinfra.progress.Progress` that keeps a line per service up to date.

    Notes (images, network, volumes) print above the lines; every text goes through the
    console's redactor first. Use it as a context manager: the display runs inside it.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.started = clock()
        self.lines: dict[str, ServiceLine] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> LiveApplyProgress:
        from rich.console import Console as RichConsole  # noqa: PLC0415 (startup time)
        from rich.live import Live  # noqa: PLC0415

        self._live = Live(
            console=RichConsole(stderr=True),
            get_renderable=self.renderable,
            refresh_per_second=10,
            transient=False,
        )
        self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def note(self, source: str, message: str) -> None:
        text = self.console.redact(f"[{self.clock() - self.started:6.1f}s] {source}: {message}")
        if self._live is None:
            self.console.note(text)
        else:
            self._live.console.print(text, markup=False, highlight=False)

    def service_state(self, service: str, state: ServiceState, message: str) -> None:
        with self._lock:
            self.lines[service] = ServiceLine(state, self.console.redact(message), self.clock())

    @contextmanager
    def transfer(self, label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """No bar inside the display (a terminal holds one live display at a time)."""
        yield lambda size: None

    def renderable(self) -> RenderableType:
        """The lines as they are now: mark or spinner, service, what it does."""
        from rich.spinner import Spinner  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column()
        with self._lock:
            lines = list(self.lines.items())
        width = max((len(name) for name, _ in lines), default=0)
        for name, line in lines:
            mark: Any
            if line.state == "working":
                mark = Spinner("dots", style="cyan")
                seconds = f" ({self.clock() - line.since:.0f}s)" if line.message else ""
                message = Text(line.message + seconds)
            else:
                symbol, style = MARKS[line.state]
                mark = Text(symbol, style=style)
                message = Text(line.message, style=style if line.state != "healthy" else "")
            grid.add_row(mark, Text(name.ljust(width), style="bold"), message)
        return grid
