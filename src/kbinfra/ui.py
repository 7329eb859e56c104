"""The one console every command prints through: text or JSON, redacted, to stdout/stderr."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

#: Transfers smaller and quicker than this print no summary line (off a terminal).
QUIET_BELOW_BYTES = 1_000_000
QUIET_BELOW_S = 2.0


class Output(StrEnum):
    text = "text"
    json = "json"


def _identity(text: str) -> str:
    return text


#: ``kbinfra --no-color`` turns colour off for the whole run (as ``NO_COLOR`` does).
_colour_off = [False]


def disable_colour() -> None:
    _colour_off[0] = True


def colour_wanted(stream: Any) -> bool:
    """Colour only on a terminal, and never with ``--no-color`` or ``NO_COLOR`` set (to
    anything but the empty string, as no-color.org asks)."""
    if _colour_off[0] or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _rich_console(*, stderr: bool = False, width: int | None = None) -> Any:
    """A rich console that colours only when :func:`colour_wanted` says so."""
    from rich.console import Console as RichConsole  # noqa: PLC0415 (startup time)

    stream = sys.stderr if stderr else sys.stdout
    if not colour_wanted(stream):
        return RichConsole(stderr=stderr, soft_wrap=False, width=width, color_system=None)
    return RichConsole(stderr=stderr, soft_wrap=False, width=width)


#: The console of the command that runs now: the top-level error printing answers in its
#: format (``--output json``) and through its redactor.
_running: list[Console] = []


class Console:
    """Prints results to stdout (a table or one JSON document) and notes to stderr."""

    def __init__(
        self, output: Output = Output.text, redact: Callable[[str], str] = _identity
    ) -> None:
        self.output = output
        self.redact = redact
        self._emitted_json = False
        #: every warning printed, redacted (what a no-op record replays)
        self.warned: list[str] = []
        _running[:] = [self]

    @staticmethod
    def of_running_command() -> Console:
        """The console the running command made, or a plain text one before it made one."""
        return _running[0] if _running else Console()

    @property
    def json_mode(self) -> bool:
        return self.output is Output.json

    def set_redactor(self, redact: Callable[[str], str]) -> None:
        self.redact = redact

    def emit_json(self, document: Any) -> None:
        text = json.dumps(document, indent=2, sort_keys=True, default=str)
        sys.stdout.write(self.redact(text) + "\n")
        self._emitted_json = True

    def line(self, text: str = "") -> None:
        """A line of the human-readable result (nothing in JSON mode)."""
        if not self.json_mode:
            sys.stdout.write(self.redact(text) + "\n")

    def note(self, text: str) -> None:
        """Progress and informational notes: stderr, so JSON on stdout stays clean."""
        sys.stderr.write(self.redact(text) + "\n")

    def warn(self, text: str) -> None:
        self.warned.append(self.redact(text))
        sys.stderr.write(self.redact(f"warning: {text}") + "\n")

    def error(self, text: str) -> None:
        """One line, whatever ``text`` holds: a wrapped exception message stays one line."""
        sys.stderr.write(" ".join(self.redact(f"error: {text}").split()) + "\n")

    def fail(self, what: str, where: str | None, fix: str | None, *, line: str) -> None:
        """A command's last word on an error: ``line`` on stderr and, with ``--output json``,
        ``{"error": {"what", "where", "fix"}}`` on stdout, so a script never parses stderr
        (unless the command already wrote its result document there, which says ``ok``)."""
        if self.json_mode and not self._emitted_json:
            self.emit_json({"error": {"what": what, "where": where, "fix": fix}})
        self.error(line)

    @contextmanager
    def transfer(self, label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Bytes and throughput of a long transfer: a live bar on a terminal (stderr), one
        summary line otherwise. Yields the function to call with each chunk's size."""
        started = time.monotonic()
        done = 0
        if sys.stderr.isatty():
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=_rich_console(stderr=True)) as bars:
                task = bars.add_task(self.redact(label), total=total)

                def advance_bar(size: int) -> None:
                    bars.update(task, advance=size)

                yield advance_bar
            return

        def advance(size: int) -> None:
            nonlocal done
            done += size

        yield advance
        seconds = max(time.monotonic() - started, 1e-6)
        if done >= QUIET_BELOW_BYTES or seconds >= QUIET_BELOW_S:
            rate = format_bytes(done / seconds)
            self.note(f"{label}: {format_bytes(done)} in {seconds:.1f}s ({rate}/s)")

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if self.json_mode:
            return
        cells = [[self.redact(str(cell)) for cell in row] for row in rows]
        if not sys.stdout.isatty():
            # Piped or redirected: plain aligned text, for grep and for logs (and no rich).
            sys.stdout.write(plain_table(title, columns, cells))
            return
        from rich.table import Table  # noqa: PLC0415 (startup time)

        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for index, column in enumerate(columns):
            # Names stay whole; only the last column (details) wraps.
            table.add_column(column, no_wrap=index < len(columns) - 1)
        for row in cells:
            table.add_row(*row)
        _rich_console().print(table)


def plain_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces, a header, a line per row; a cell's further lines go
    on continuation lines whose other cells are empty; the last column is never padded."""
    lines: list[list[str]] = [list(columns)]
    for row in rows:
        parts = [str(cell).splitlines() or [""] for cell in row]
        for depth in range(max(len(part) for part in parts)):
            lines.append([part[depth] if depth < len(part) else "" for part in parts])
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = [f"{title}\n"] if title else []
    for line in lines:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        text.append("  ".join([*padded, line[-1]]).rstrip() + "\n")
    return "".join(text)


def format_bytes(size: float) -> str:
    """``1536`` → ``1.5 kB``; decimal units, as throughput is usually quoted (MB/s)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover
