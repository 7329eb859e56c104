"""A manifest no kbinfra wrote (100,000 levels deep), and --only checked before the
engine is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbinfra.backup.manifest import manifest_sum_line
from kbinfra.backup.signing import signature_line
from tests.conftest import write_stack_dir
from tests.unit.commands.test_backup import KEY, write_backup
from tests.unit.error_checks import assert_one_line_error, kbinfra


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return write_stack_dir(tmp_path / "kb")


def _deep_manifest(folder: Path, depth: int = 100_000) -> Path:
    folder.mkdir()
    data = ('{"format": ' + '{"a": ' * depth + "1" + "}" * depth + "}").encode()
    (folder / "manifest.json").write_bytes(data)
    (folder / "manifest.sha256").write_text(manifest_sum_line(data))
    # Signed with the stack's key: it passes authentication and reaches the parser.
    (folder / "manifest.hmac").write_text(signature_line(data, KEY))
    return folder


@pytest.mark.parametrize("command", [["backup", "verify"], ["restore", "--yes"]])
def test_a_manifest_nested_100000_deep(stack_dir: Path, tmp_path: Path, command: list[str]) -> None:
    backup = _deep_manifest(tmp_path / "kb-20260102T030405Z")
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir), "-o", "json")
    assert_one_line_error(done, "nested too deeply", json_output=True)


@pytest.mark.parametrize("command", ["check", "bench"])
def test_only_is_checked_before_the_engine_is_asked(stack_dir: Path, command: str) -> None:
    done = kbinfra(command, "--dir", str(stack_dir), "--only", "nosuch", "-o", "json")
    error = assert_one_line_error(done, "--only nosuch", json_output=True)
    assert "Docker" not in str(error)


def test_restore_only_is_checked_before_the_engine_is_asked(
    stack_dir: Path, tmp_path: Path
) -> None:
    backup = write_backup(tmp_path / "kb-20260102T030405Z", {"redis/dump.rdb": b"x"})
    done = kbinfra("restore", str(backup), "--dir", str(stack_dir), "--only", "nosuch", "--yes")
    assert_one_line_error(done, "the backup holds no nosuch")


def test_bench_refuses_a_textfile_that_is_a_directory_before_benchmarking(
    stack_dir: Path, tmp_path: Path
) -> None:
    done = kbinfra("bench", "--dir", str(stack_dir), "--prometheus-textfile", str(tmp_path))
    assert_one_line_error(done, f"{tmp_path}: the Prometheus textfile is a directory")
