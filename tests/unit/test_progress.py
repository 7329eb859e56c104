"""One Progress protocol, one silent implementation, one console rendering of it."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
from rich.console import Console as RichConsole
from rich.spinner import SPINNERS

from kbinfra.commands.options import apply_progress
from kbinfra.live_progress import LiveApplyProgress
from kbinfra.progress import SILENT, ConsoleProgress
from kbinfra.ui import Console, Output

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "kbinfra"


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_progress_is_defined_once() -> None:
    owners = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if {"Progress", "SilentProgress", "silent", "_silent"} & defined_names(path)
    )
    assert owners == ["progress.py"]


def test_console_progress_notes_are_timed_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console()
    console.set_redactor(lambda text: text.replace("hunter2", "***"))
    ConsoleProgress(console).note("postgres", "password hunter2 set")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("] postgres: password *** set\n")
    assert captured.err.startswith("[")


def test_silent_progress_reports_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    SILENT.note("redis", "anything")
    with SILENT.transfer("dump.rdb", 10) as advance:
        advance(10)
    assert capsys.readouterr() == ("", "")


def test_console_progress_prints_each_service_state_as_a_timed_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = ConsoleProgress(Console(Output.json))
    progress.service_state("nginx", "working", "waiting until healthy")
    progress.service_state("nginx", "healthy", "healthy in 0.4s")
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout keeps the JSON document alone
    lines = captured.err.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "nginx: waiting until healthy",
        "nginx: healthy in 0.4s",
    ]
    assert all(re.fullmatch(r"\[ +\d+\.\ds\] .*", line) for line in lines)


def test_apply_shows_timed_lines_off_a_terminal_and_under_json() -> None:
    for output in (Output.text, Output.json):
        with apply_progress(Console(output)) as progress:
            assert isinstance(progress, ConsoleProgress)  # pytest's stderr is no terminal


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_live_display_has_a_line_per_service() -> None:
    clock = StepClock()
    console = Console()
    console.set_redactor(lambda text: text.replace("hunter2", "***"))
    live = LiveApplyProgress(console, clock=clock)
    live.service_state("postgres", "working", "waiting until healthy")
    live.service_state("postgres-exporter", "waiting", "waiting for postgres")
    live.service_state("nginx", "healthy", "healthy in 0.4s")
    live.service_state("redis", "failed", "failed: password hunter2 refused")
    live.service_state("redis-exporter", "skipped", "skipped: it waits for redis, which failed")
    clock.now = 3.0
    screen = RichConsole(file=io.StringIO(), width=100, color_system=None)
    screen.print(live.renderable())
    text = screen.file.getvalue()  # type: ignore[attr-defined]
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0][0] in SPINNERS["dots"]["frames"]  # a spinner while it works
    assert [lines[0][1:], *lines[1:]] == [
        " postgres          waiting until healthy (3s)",
        "· postgres-exporter waiting for postgres",
        "✓ nginx             healthy in 0.4s",
        "✗ redis             failed: password *** refused",
        "- redis-exporter    skipped: it waits for redis, which failed",
    ]
