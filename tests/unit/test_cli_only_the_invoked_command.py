"""``kbinfra CMD`` builds only CMD's click parameters (``cli.app_for``): the same command, the
same help and errors, for every command; the whole app where a command is not named."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from kbinfra import cli

EVERY_COMMAND = sorted(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]


def _commands(app: typer.Typer) -> list[str]:
    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_the_app_has_the_commands_a_user_reaches_for() -> None:
    assert {"apply", "check", "plan", "profiles", "images", "init", "secrets"} <= set(EVERY_COMMAND)


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_a_named_command_alone_is_built_and_helps_as_in_the_whole_app(name: str) -> None:
    only = cli.app_for([name, "--whatever"])
    assert _commands(only) == [name]
    runner = CliRunner()
    whole = runner.invoke(cli.app, [name, "--help"], prog_name="kbinfra")
    alone = runner.invoke(only, [name, "--help"], prog_name="kbinfra")
    assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output)
    assert whole.exit_code == 0


@pytest.mark.parametrize(
    "args", [["--no-color", "--debug", "status"], ["--debug", "status", "--output", "json"]]
)
def test_the_root_flags_may_come_before_the_command(args: list[str]) -> None:
    assert _commands(cli.app_for(args)) == ["status"]


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"], ["--version"], ["no-such-command"]])
def test_without_a_known_command_the_whole_app_answers(args: list[str]) -> None:
    assert cli.app_for(args) is cli.app


def test_shell_completion_gets_the_whole_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_KBINFRA_COMPLETE", "complete_bash")
    assert cli.app_for(["apply"]) is cli.app


def test_an_unknown_option_of_the_command_is_the_same_usage_error() -> None:
    runner = CliRunner()
    whole = runner.invoke(cli.app, ["apply", "--no-such"], prog_name="kbinfra")
    alone = runner.invoke(cli.app_for(["apply"]), ["apply", "--no-such"], prog_name="kbinfra")
    assert whole.exit_code == alone.exit_code == 2
    assert alone.output == whole.output
