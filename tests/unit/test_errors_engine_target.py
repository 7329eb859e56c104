"""A missing engine, a bad --target, an unknown image recipe; and every command that
takes --output answers an error in JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from kbinfra import cli
from tests.conftest import write_stack_dir
from tests.unit.error_checks import NOWHERE, assert_one_line_error, kbinfra


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return write_stack_dir(tmp_path / "kb")


@pytest.mark.parametrize("output", ["text", "json"])
def test_plan_with_a_target_that_is_not_one(stack_dir: Path, output: str) -> None:
    done = kbinfra("plan", "--dir", str(stack_dir), "--target", "foo", "--output", output)
    error = assert_one_line_error(done, "'foo' is not a target", json_output=output == "json")
    if error:
        assert error["where"] == "--target"


def test_images_save_without_an_engine_writes_nothing(stack_dir: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "images.tar"
    done = kbinfra("images", "save", str(tarball), "--dir", str(stack_dir), "-o", "json")
    error = assert_one_line_error(done, "cannot reach the Docker Engine", json_output=True)
    assert error["where"] == NOWHERE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_images_build_without_an_engine() -> None:
    assert_one_line_error(kbinfra("images", "build"), "cannot reach the Docker Engine")


def test_images_build_of_an_unknown_recipe() -> None:
    assert_one_line_error(kbinfra("images", "build", "nosuch"), "no image recipe 'nosuch'")


# ---------------------------------------------------------------- every --output command
#: Each command that takes --output, with arguments that make it fail on bad input.
FAILING_WITH_OUTPUT: dict[str, list[str]] = {
    "profiles list": [],  # cannot fail on input; listed so the table stays complete
    "profiles show": ["nosuch"],
    "init": ["--profile", "nosuch"],
    "render": [],
    "plan": [],
    "apply": ["--yes"],
    "status": [],
    "destroy": ["--yes"],
    "check": [],
    "bench": [],
    "backup": [],
    "backup verify": ["latest"],
    "backup list": [],
    "backup schedule": [],
    "restore": ["latest", "--yes"],
    "images build": ["nosuch"],
    "images save": ["images.tar"],
    "images load": ["images.tar"],
    "images copy": [],
    "secrets list": [],
    "secrets rotate": ["--all", "--yes"],
    "history": [],
    "rollback": ["--yes"],
    "upgrade": ["--yes"],
}


def _commands_taking_output() -> set[str]:
    found: set[str] = set()

    def walk(command: Any, path: str) -> None:  # typer ships its own click
        if any(param.name == "output" for param in command.params):
            found.add(path)  # a group may run itself too (`kbinfra backup`)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(cli.app), "")
    return found


def test_the_table_names_every_command_that_takes_output() -> None:
    assert _commands_taking_output() == set(FAILING_WITH_OUTPUT)


@pytest.mark.parametrize(
    "command", sorted(name for name, args in FAILING_WITH_OUTPUT.items() if name != "profiles list")
)
def test_every_command_reports_an_error_as_json(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    words = command.split()
    args = [*words, *FAILING_WITH_OUTPUT[command], "--output", "json"]
    if words[0] not in ("profiles", "init") and command != "images build":
        args += ["--dir", str(empty)]
    if words[0] == "init":
        args += ["--dir", str(tmp_path / "new")]
    done = kbinfra(*args, cwd=tmp_path)
    error = assert_one_line_error(done, "", json_output=True)
    assert error["what"] in done.stderr


def test_images_load_of_a_directory_is_refused_before_the_engine(
    stack_dir: Path, tmp_path: Path
) -> None:
    done = kbinfra("images", "load", str(tmp_path), "--dir", str(stack_dir), "-o", "json")
    error = assert_one_line_error(done, "is a directory, not an image archive", json_output=True)
    assert error["where"] == str(tmp_path)
