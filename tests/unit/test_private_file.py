"""The one writer of files holding secrets (secrets.yaml, the rotation state, the render
cache, the no-op record, plan files): 0600, atomic, and nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kbinfra.private_file import write_private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_0600_and_a_made_folder_takes_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / ".kbinfra" / "record.json"
    write_private_file(path, "{}", durable=False, folder_mode=0o700)
    assert path.read_text() == "{}"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_a_file_others_could_read_is_replaced_by_a_0600_one(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, "new")
    assert (path.read_text(), mode(path)) == ("new", 0o600)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secrets.yaml"
    write_private_file(path, "kept")

    def refuse(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_private_file(path, "lost")
    assert path.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.yaml"]
