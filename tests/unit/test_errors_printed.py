"""The one error printer: a line on stderr, JSON on stdout with --output json, every
loaded secret redacted, and files that cannot be read named with a fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kbinfra import cli
from kbinfra.secrets import load_secrets
from kbinfra.ui import Console, Output
from tests.conftest import fixed_secret, write_stack_dir
from tests.unit.error_checks import assert_one_line_error, kbinfra


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return write_stack_dir(tmp_path / "kb")


def test_a_directory_where_the_image_map_belongs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    done = kbinfra("init", "--dir", str(tmp_path / "kb"), "--images", str(tmp_path / "images"))
    assert_one_line_error(done, "image map is a directory")
    assert not (tmp_path / "kb" / "secrets.yaml").exists()


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("kbinfra.yaml", "stack file is a directory"),
        ("secrets.yaml", "secrets file is a directory"),
        ("tls/key.pem", "cannot read the TLS key: Is a directory"),
    ],
)
def test_a_directory_where_a_stack_file_belongs(
    stack_dir: Path, relative: str, expected: str
) -> None:
    (stack_dir / relative).unlink()
    (stack_dir / relative).mkdir()
    done = kbinfra("render", "--dir", str(stack_dir), "-o", "json")
    assert_one_line_error(done, expected, json_output=True)
    assert not (stack_dir / "rendered").exists()


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_secret_that_reads_as_a_yaml_tag_is_never_echoed(stack_dir: Path, output: str) -> None:
    secrets = stack_dir / "secrets.yaml"
    value = fixed_secret("redis_app_password")
    text = secrets.read_text().replace(
        f"redis_app_password: {value}", f"redis_app_password: !{value}"
    )
    assert f"!{value}" in text
    secrets.write_text(text)
    done = kbinfra("render", "--dir", str(stack_dir), "--output", output)
    error = assert_one_line_error(
        done, "secrets file is not valid YAML", json_output=output == "json"
    )
    assert value not in done.stderr + done.stdout
    if error:
        assert str(error["where"]).startswith(f"{secrets}:")


# ---------------------------------------------------------------- redaction at the top
def test_an_unexpected_error_is_redacted_of_every_loaded_secret(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_secrets(stack_dir, ())
    value = loaded["postgres_password"]

    def buggy_command() -> None:
        raise RuntimeError(f"could not use {value}\nsecond line")

    monkeypatch.setattr(cli, "app", buggy_command)
    monkeypatch.setattr(sys, "argv", ["kbinfra"])  # no command named: main() runs `app`
    monkeypatch.setitem(cli._state, "debug", False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert value not in captured.err + captured.out
    assert captured.err.count("\n") == 1
    assert "RuntimeError: could not use *** second line" in captured.err


def test_an_error_after_the_result_document_keeps_stdout_one_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = Console(Output.json)
    console.emit_json({"ok": False})
    console.fail("1 check failed", "out/x.conf:3", "fix it", line="out/x.conf:3: 1 check failed")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"ok": False}
    assert captured.err == "error: out/x.conf:3: 1 check failed\n"
