"""restore and backup verify refuse a bad backup before they touch the target.

The Docker Engine these runs would reach does not exist (``DOCKER_HOST`` points nowhere):
a refusal that names the file proves nothing was contacted, let alone changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kbinfra.backup.manifest import Artifact, Manifest, manifest_sum_line
from kbinfra.backup.signing import signature_line
from tests.conftest import fixed_secret, write_stack_dir

NOWHERE = "unix:///nonexistent/docker.sock"
KEY = fixed_secret("backup_hmac_key")


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
    key: str | None = KEY,
) -> Path:
    """A backup as ``kbinfra backup`` writes it, signed with ``key`` (None: unsigned)."""
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
    if key is not None:
        (folder / "manifest.hmac").write_text(signature_line(data, key))
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
    assert "manifest.hmac matches no backup key of this stack" in done.stderr


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


# ---------------------------------------------------------------- authentication
def rehash_manifest(backup: Path, edit: bytes, replacement: bytes) -> None:
    """What an attacker who can write the folder but not secrets.yaml can do to a manifest."""
    data = (backup / "manifest.json").read_bytes().replace(edit, replacement)
    (backup / "manifest.json").write_bytes(data)
    (backup / "manifest.sha256").write_text(manifest_sum_line(data))


def add_secrets(stack_dir: Path, **values: str) -> None:
    path = stack_dir / "secrets.yaml"
    path.write_text(path.read_text() + "".join(f"{k}: '{v}'\n" for k, v in values.items()))


@pytest.mark.parametrize("command", [["restore", "--yes"], ["backup", "verify"]])
def test_a_forged_artifact_with_a_rehashed_manifest_is_refused(
    command: list[str], stack_dir: Path, backup: Path
) -> None:
    dump = backup / "postgres" / "kb.dump"
    forged = dump.read_bytes() + b"\\! touch /tmp/pwned\n"
    dump.write_bytes(forged)
    old = json.loads((backup / "manifest.json").read_text())["artifacts"][0]
    rehash_manifest(
        backup,
        f'"sha256": "{old["sha256"]}"'.encode(),
        f'"sha256": "{hashlib.sha256(forged).hexdigest()}"'.encode(),
    )
    rehash_manifest(backup, f'"size": {old["size"]}'.encode(), f'"size": {len(forged)}'.encode())
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
    assert done.returncode == 2, done.stderr
    assert "manifest.hmac matches no backup key of this stack" in done.stderr
    assert "nothing was changed" in done.stderr
    assert "Docker" not in done.stderr  # refused before any connection
    assert len(done.stderr.strip().splitlines()) == 1
    assert KEY not in done.stderr


@pytest.mark.parametrize("command", [["restore", "--yes"], ["backup", "verify"]])
def test_an_unsigned_backup_needs_allow_unsigned_and_a_warning_says_so(
    command: list[str], stack_dir: Path, tmp_path: Path
) -> None:
    unsigned = write_backup(tmp_path / "old", {"redis/dump.rdb": b"REDIS0011"}, key=None)
    flip_a_byte(unsigned / "redis" / "dump.rdb", 3)
    refused = kbinfra(*command, str(unsigned), "--dir", str(stack_dir))
    assert refused.returncode == 2
    assert "the backup is not signed (no manifest.hmac)" in refused.stderr
    assert "pass --allow-unsigned" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    allowed = kbinfra(*command, str(unsigned), "--dir", str(stack_dir), "--allow-unsigned")
    assert allowed.returncode == 2
    assert "--allow-unsigned: an unsigned backup is used as it is" in allowed.stderr
    # past the signature, the next check still runs: the flipped byte is caught
    assert "redis/dump.rdb: sha256 differs from the manifest" in allowed.stderr


def test_allow_unsigned_never_accepts_a_wrong_signature(stack_dir: Path, tmp_path: Path) -> None:
    other = write_backup(tmp_path / "b", {"redis/dump.rdb": b"REDIS0011"}, key="not-our-key")
    done = kbinfra("restore", str(other), "--dir", str(stack_dir), "--yes", "--allow-unsigned")
    assert done.returncode == 2
    assert "manifest.hmac matches no backup key of this stack" in done.stderr


def test_a_backup_signed_with_a_previous_key_still_verifies(
    stack_dir: Path, tmp_path: Path
) -> None:
    older = write_backup(tmp_path / "b", {"redis/dump.rdb": b"REDIS0011"}, key="old-key-1234")
    flip_a_byte(older / "redis" / "dump.rdb", 3)
    refused = kbinfra("backup", "verify", str(older), "--dir", str(stack_dir))
    assert "manifest.hmac matches no backup key" in refused.stderr
    add_secrets(stack_dir, backup_hmac_keys_previous="older-key-5678 old-key-1234")
    done = kbinfra("backup", "verify", str(older), "--dir", str(stack_dir))
    assert done.returncode == 2
    assert "redis/dump.rdb: sha256 differs from the manifest" in done.stderr  # signature passed


def test_a_stack_without_its_backup_key_refuses_signed_backups(
    stack_dir: Path, backup: Path
) -> None:
    secrets = stack_dir / "secrets.yaml"
    secrets.write_text(
        "".join(x for x in secrets.read_text().splitlines(True) if "backup_hmac" not in x)
    )
    done = kbinfra("backup", "verify", str(backup), "--dir", str(stack_dir))
    assert done.returncode == 2
    assert "secrets.yaml holds no backup_hmac_key" in done.stderr
    assert "safe copy" in done.stderr


def test_latest_skips_backups_this_stack_did_not_sign(stack_dir: Path) -> None:
    root = stack_dir / "backups"
    files = {"redis/dump.rdb": b"REDIS0011"}
    ours = write_backup(root / "kb-a", files, when=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    write_backup(root / "kb-b", files, when=dt.datetime(2026, 4, 1, tzinfo=dt.UTC), key="x1234")
    write_backup(root / "kb-c", files, when=dt.datetime(2026, 5, 1, tzinfo=dt.UTC), key=None)
    flip_a_byte(ours / "redis" / "dump.rdb", 3)
    done = kbinfra("backup", "verify", "latest", "--dir", str(stack_dir))
    assert done.returncode == 2
    assert f"{ours}: redis/dump.rdb: sha256 differs" in done.stderr


# ---------------------------------------------------------------- what restore reads of it
def resign(backup: Path, change: Any) -> None:
    """Edit the manifest and sign it with the stack's key: what its owner could write."""
    manifest = json.loads((backup / "manifest.json").read_text())
    change(manifest)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (backup / "manifest.json").write_bytes(data)
    (backup / "manifest.sha256").write_text(manifest_sum_line(data))
    (backup / "manifest.hmac").write_text(signature_line(data, KEY))


def test_backup_verify_refuses_another_stacks_backup_too(stack_dir: Path, tmp_path: Path) -> None:
    other = write_backup(tmp_path / "other-x", {"redis/dump.rdb": b"x"}, stack="other")
    done = kbinfra("backup", "verify", str(other), "--dir", str(stack_dir))
    assert done.returncode == 2
    assert "backup of stack 'other', not 'kb'" in done.stderr
    assert "Docker" not in done.stderr


@pytest.mark.parametrize("command", [["restore", "--yes"], ["backup", "verify"]])
def test_a_manifest_without_what_restore_needs_is_refused_before_any_service(
    command: list[str], stack_dir: Path, backup: Path
) -> None:
    resign(backup, lambda m: m["artifacts"][0]["meta"].pop("database"))
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
    assert done.returncode == 2, done.stderr
    assert "manifest.json: postgres has no entry in the manifest's services" in done.stderr
    resign(backup, lambda m: m["services"].update({"postgres": {}, "redis": {}}))
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
    assert "manifest.json: postgres/kb.dump lacks meta.database" in done.stderr
    assert "Traceback" not in done.stderr and "KeyError" not in done.stderr
    assert "Docker" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def volume_backup(folder: Path, members: list[tarfile.TarInfo], volume: str) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    backup = write_backup(folder, {f"volumes/{volume}.tar": buffer.getvalue()})
    resign(
        backup,
        lambda m: m["artifacts"][0].update(
            {"service": "volumes", "kind": "volume_tar", "meta": {"volume": "kb-postgres-data"}}
        ),
    )
    return backup


@pytest.mark.parametrize("command", [["restore", "--yes"], ["backup", "verify"]])
def test_a_volume_tar_is_restored_only_into_a_volume_the_stack_lists(
    command: list[str], tmp_path: Path
) -> None:
    stack_dir = write_stack_dir(tmp_path / "s", overrides={"backup": {"volumes": ["uploads"]}})
    member = tarfile.TarInfo("kbinfra-volume/a.txt")
    member.size = 3
    backup = volume_backup(tmp_path / "b", [member], "other")
    done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
    assert done.returncode == 2, done.stderr
    assert "volumes/other.tar, a volume that backup.volumes of this stack does not list" in (
        done.stderr
    )
    assert "Docker" not in done.stderr


@pytest.mark.parametrize(
    ("name", "kind", "link", "problem"),
    [
        ("kbinfra-volume/../../etc/cron.d/x", tarfile.REGTYPE, "", "is not inside the volume"),
        ("kbinfra-volume/l", tarfile.SYMTYPE, "/etc", "points to the absolute path '/etc'"),
        ("kbinfra-volume/dev", tarfile.CHRTYPE, "", "is a device"),
    ],
)
def test_a_volume_tar_with_a_member_leaving_the_volume_is_refused(
    name: str, kind: bytes, link: str, problem: str, tmp_path: Path
) -> None:
    stack_dir = write_stack_dir(tmp_path / "s", overrides={"backup": {"volumes": ["uploads"]}})
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    backup = volume_backup(tmp_path / "b", [member], "uploads")
    for command in (["restore", "--yes"], ["backup", "verify"]):
        done = kbinfra(*command, str(backup), "--dir", str(stack_dir))
        assert done.returncode == 2, done.stderr
        assert f"volumes/uploads.tar: member {name!r}" in done.stderr or problem in done.stderr
        assert problem in done.stderr
        assert "Docker" not in done.stderr
