"""restore and backup verify refuse a bad backup before they touch the target.

The Docker Engine these runs would reach does not exist (``DOCKER_HOST`` points nowhere):
a refusal that names the file proves nothing was contacted, let alone changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kbinfra.backup.manifest import Artifact, Manifest, manifest_sum_line
from tests.conftest import write_stack_dir

NOWHERE = "unix:///nonexistent/docker.sock"


def kbinfra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbinfra", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_HOST": NOWHERE, "COLUMNS": "200"},
    )


def write_backup(
    folder: Path,
    files: dict[str, bytes],
    stack: str = "kb",
    when: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
) -> Path:
    folder.mkdir(parents=True)
    artifacts = []
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        service = path.split("/", 1)[0]
        artifacts.append(
            Artifact(
                path=path,
                service=service,
                kind="pg_dump" if service == "postgres" else "redis_rdb",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                counts={"public.docs": 3} if service == "postgres" else {"db0": 1},
                meta={"database": "kb"} if service == "postgres" else {},
            )
        )
    manifest = Manifest(
        kbinfra_version="0.1.0",
        name=folder.name,
        stack=stack,
        profile="minimum",
        target="local",
        created_at=when,
        finished_at=when,
        artifacts=artifacts,
    )
    data = manifest.to_json().encode()
    (folder / "manifest.json").write_bytes(data)
    (folder / "manifest.sha256").write_text(manifest_sum_line(data))
    return folder


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return write_stack_dir(tmp_path / "stack")


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    return write_backup(
        tmp_path / "backups" / "kb-20260102T030405Z",
        {"postgres/kb.dump": b"PGDMP" + bytes(range(200)), "redis/dump.rdb": b"REDIS0011xyz"},
    )


def flip_a_byte(path: Path, offset: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", [["restore", "--yes"], ["backup", "verify"]])
def test_a_flipped_byte_is_refused_naming_the_file(
    command: list[str], stack_dir: Path, backup: Path
) -> None:
    flip_a_byte(backup / "postgres" / "kb.dump")
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
    assert done.returncode == 2, done.stderr
    assert "postgres/kb.dump: sha256 differs from the manifest" in done.stderr
    assert "nothing was changed" in done.stderr
    assert "Docker" not in done.stderr  # refused before any connection
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_or_truncated_artifact_is_refused(stack_dir: Path, backup: Path) -> None:
    (backup / "redis" / "dump.rdb").unlink()
    with (backup / "postgres" / "kb.dump").open("ab") as handle:
        handle.write(b"!")
    done = kbinfra("restore", str(backup), "--dir", str(stack_dir), "--yes")
    assert done.returncode == 2
    assert "postgres/kb.dump: size 206 bytes, manifest says 205 (and 1 more)" in done.stderr


def test_an_edited_manifest_is_refused(stack_dir: Path, backup: Path) -> None:
    manifest = backup / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"public.docs": 3', '"public.docs": 4'))
    done = kbinfra("restore", str(backup), "--dir", str(stack_dir), "--yes")
    assert done.returncode == 2
    assert "manifest.json does not match manifest.sha256" in done.stderr


def test_a_partial_backup_is_refused(stack_dir: Path, tmp_path: Path) -> None:
    partial = write_backup(tmp_path / "kb-20260102T030405Z.partial", {"redis/dump.rdb": b"x"})
    for command in (["restore", "--yes"], ["backup", "verify"]):
        done = kbinfra(*command, str(partial), "--dir", str(stack_dir))
        assert done.returncode == 2
        assert "unfinished (.partial)" in done.stderr


def test_a_folder_without_manifest_is_not_a_backup(stack_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = kbinfra("backup", "verify", str(tmp_path / "empty"), "--dir", str(stack_dir))
    assert done.returncode == 2
    assert "not a kbinfra backup: no manifest.json" in done.stderr


def test_another_stacks_backup_needs_an_explicit_flag(stack_dir: Path, tmp_path: Path) -> None:
    other = write_backup(tmp_path / "other-x", {"redis/dump.rdb": b"x"}, stack="other")
    done = kbinfra("restore", str(other), "--dir", str(stack_dir), "--yes")
    assert done.returncode == 2
    assert "backup of stack 'other', not 'kb'" in done.stderr
    assert "--allow-other-stack" in done.stderr


def test_only_must_name_what_the_backup_holds(stack_dir: Path, backup: Path) -> None:
    done = kbinfra("restore", str(backup), "--dir", str(stack_dir), "--yes", "--only", "qdrant")
    assert done.returncode == 2
    assert "the backup holds no qdrant" in done.stderr
    assert "postgres, redis" in done.stderr


def test_latest_is_the_newest_complete_backup_by_manifest_date(stack_dir: Path) -> None:
    root = stack_dir / "backups"
    files = {"redis/dump.rdb": b"REDIS0011"}
    write_backup(root / "kb-b", files, when=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    newest = write_backup(root / "kb-a", files, when=dt.datetime(2026, 4, 1, tzinfo=dt.UTC))
    write_backup(root / "kb-c.partial", files, when=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    write_backup(
        root / "other-d", files, stack="other", when=dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    )
    flip_a_byte(newest / "redis" / "dump.rdb", 3)
    done = kbinfra("backup", "verify", "latest", "--dir", str(stack_dir))
    assert done.returncode == 2
    assert f"{newest}: redis/dump.rdb: sha256 differs" in done.stderr


def test_latest_without_any_backup_says_so(stack_dir: Path) -> None:
    done = kbinfra("restore", "latest", "--dir", str(stack_dir), "--yes")
    assert done.returncode == 2
    assert "no complete backup of stack kb" in done.stderr
