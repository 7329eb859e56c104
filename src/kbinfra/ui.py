"""The one console every command prints through: text or JSON, redacted, to stdout/stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any


class Output(StrEnum):
    text = "text"
    json = "json"


def _identity(text: str) -> str:
    return text


class Console:
    """Prints results to stdout (a table or one JSON document) and notes to stderr."""

    def __init__(
        self, output: Output = Output.text, redact: Callable[[str], str] = _identity
    ) -> None:
        self.output = output
        self.redact = redact

    @property
    def json_mode(self) -> bool:
        return self.output is Output.json

    def set_redactor(self, redact: Callable[[str], str]) -> None:
        self.redact = redact

    def emit_json(self, document: Any) -> None:
        text = json.dumps(document, indent=2, sort_keys=True, default=str)
        sys.stdout.write(self.redact(text) + "\n")

    def line(self, text: str = "") -> None:
        """A line of the human-readable result (nothing in JSON mode)."""
        if not self.json_mode:
            sys.stdout.write(self.redact(text) + "\n")

    def note(self, text: str) -> None:
        """Progress and informational notes: stderr, so JSON on stdout stays clean."""
        sys.stderr.write(self.redact(text) + "\n")

    def warn(self, text: str) -> None:
        sys.stderr.write(self.redact(f"warning: {text}") + "\n")

    def error(self, text: str) -> None:
        sys.stderr.write(self.redact(f"error: {text}") + "\n")

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if self.json_mode:
            return
        from rich.console import Console as RichConsole  # noqa: PLC0415 (startup time)
        from rich.table import Table  # noqa: PLC0415

        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for index, column in enumerate(columns):
            # Names stay whole; only the last column (details) wraps.
            table.add_column(column, no_wrap=index < len(columns) - 1)
        for row in rows:
            table.add_row(*(self.redact(str(cell)) for cell in row))
        RichConsole(soft_wrap=False).print(table)
