"""The console script starts without the cyclic GC; every long-running command turns it on."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kbinfra.cli
from kbinfra import entry
from kbinfra.cli import app


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_console_script_runs_the_cli_with_the_collector_off_and_freezes_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(kbinfra.cli, "main", lambda: seen.append(gc.isenabled()))
    try:
        entry.main()
        frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.enable()
    assert seen == [False]
    assert frozen > 0  # the exit's full collection has nothing left to walk


def test_the_console_script_keeps_the_exit_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kbinfra", "render", "--dir", "/nonexistent"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "collecting"),
    [
        (["render"], False),
        (["init", "--profile", "nope"], False),
        (["profiles", "list"], False),
        (["plan"], True),
        (["apply"], True),
        (["check"], True),
        (["backup"], True),
        (["restore", "somewhere"], True),
        (["images", "load"], True),  # missing FILE: fails before touching Docker
        (["ssh", "trust"], True),
    ],
)
def test_only_short_commands_run_without_the_collector(
    tmp_path: Path, collector_off: None, argv: list[str], collecting: bool
) -> None:
    """Each command fails fast here (no stack folder); the root callback has run by then."""
    args = [*argv, "--dir", str(tmp_path)] if argv[0] not in {"profiles", "images", "ssh"} else argv
    CliRunner().invoke(app, args)
    assert gc.isenabled() is collecting


PLUGIN_PROBE = """
import os, sys
from kbinfra.entry import main
sys.argv = ["kbinfra", "profiles", "show", "minimum"]
try:
    main()
except SystemExit:
    pass
from pydantic.plugin import _loader
scanned = "scanned" if _loader._plugins is not None else "not"
print(os.environ.get("PYDANTIC_DISABLE_PLUGINS"), scanned)
"""


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "__all__ not"), ("some_plugin", "some_plugin scanned")]
)
def test_pydantic_looks_for_no_plugins_unless_the_user_says(
    given: str | None, expected: str
) -> None:
    """Looking for plugins reads every installed distribution's entry points (~2% of a no-op
    apply); a profile builds models, so the look would have happened."""
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if given is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = given
    done = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == expected
