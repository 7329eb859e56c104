"""One Progress protocol, one silent implementation, one console rendering of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kbinfra.progress import SILENT, ConsoleProgress
from kbinfra.ui import Console

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
