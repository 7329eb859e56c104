"""``kbinfra render --out``: it replaces only a folder it wrote itself, and never loses one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.errors import KbinfraError
from kbinfra.render import RENDER_MARKER, render_stack, write_tree
from kbinfra.stack import Stack
from tests.conftest import run_kbinfra, write_stack_dir

kbinfra = run_kbinfra


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, or the target of a symlink, or "dir"."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            entries[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = path.read_bytes()
    return entries


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    """A stack folder holding the user's own files next to kbinfra.yaml."""
    stack = write_stack_dir(tmp_path / "kb")
    (stack / "backups" / "2026-11-30").mkdir(parents=True)
    (stack / "backups" / "2026-11-30" / "manifest.json").write_text("{}\n")
    return stack


def test_out_dot_in_the_stack_folder_is_refused_and_deletes_nothing(stack_dir: Path) -> None:
    before = snapshot(stack_dir)
    done = kbinfra("render", "--out", ".", cwd=stack_dir)
    refused(done, "is the stack folder")
    assert snapshot(stack_dir) == before


@pytest.mark.parametrize("how", ["parent", "symlink", "dotdot", "symlink-parent"])
def test_out_that_is_or_contains_the_stack_folder_is_refused(
    stack_dir: Path, tmp_path: Path, how: str
) -> None:
    if how == "parent":
        out = tmp_path
    elif how == "symlink":
        out = tmp_path / "link"
        out.symlink_to(stack_dir)
    elif how == "dotdot":
        out = stack_dir / "tls" / ".."
    else:
        out = tmp_path / "up"
        out.symlink_to(tmp_path)
    before = snapshot(tmp_path)
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(out))
    refused(done, "stack folder")
    assert snapshot(tmp_path) == before


def test_out_that_is_a_file_is_refused(stack_dir: Path) -> None:
    before = snapshot(stack_dir)
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(stack_dir / "kbinfra.yaml"))
    refused(done, "is a file, not a folder")
    assert snapshot(stack_dir) == before


@pytest.mark.parametrize("folder", ["tls", "backups", "elsewhere"])
def test_out_that_is_a_folder_render_did_not_write_is_refused(
    stack_dir: Path, tmp_path: Path, folder: str
) -> None:
    if folder == "elsewhere":
        out = tmp_path / "notes"
        out.mkdir()
        (out / "todo.txt").write_text("mine\n")
    else:
        out = stack_dir / folder
    before = snapshot(tmp_path)
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(out))
    refused(done, "is not empty and has no .kbinfra-rendered", str(out))
    assert snapshot(tmp_path) == before


def test_a_folder_render_wrote_is_replaced_whole(stack_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert kbinfra("render", "--dir", str(stack_dir), "--out", str(out)).returncode == 0
    assert (out / RENDER_MARKER).is_file()
    (out / "stale.conf").write_text("left over\n")
    again = kbinfra("render", "--dir", str(stack_dir), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert not (out / "stale.conf").exists()
    assert (out / "docker-compose.yml").is_file()


def test_an_empty_folder_is_used(stack_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "docker-compose.yml").is_file()


def _legacy_rendered(stack_dir: Path) -> Path:
    """The stack's ``rendered/`` as a render from before the marker left it."""
    assert kbinfra("render", "--dir", str(stack_dir)).returncode == 0
    rendered = stack_dir / "rendered"
    (rendered / RENDER_MARKER).unlink()
    return rendered


def test_the_stacks_own_rendered_folder_from_before_the_marker_is_adopted(
    stack_dir: Path,
) -> None:
    rendered = _legacy_rendered(stack_dir)
    done = kbinfra("render", "--dir", str(stack_dir))
    assert done.returncode == 0, done.stderr
    assert (rendered / RENDER_MARKER).is_file()


@pytest.mark.parametrize("extra", ["notes.txt", "postgres/my-tuning.conf", "mine/"])
def test_an_old_rendered_folder_with_a_file_render_does_not_write_is_refused(
    stack_dir: Path, extra: str
) -> None:
    rendered = _legacy_rendered(stack_dir)
    if extra.endswith("/"):
        (rendered / extra).mkdir()
    else:
        (rendered / extra).write_text("mine\n")
    before = snapshot(rendered)
    done = kbinfra("render", "--dir", str(stack_dir))
    refused(done, "holds files this render does not write", extra)
    assert snapshot(rendered) == before


def test_a_folder_of_the_same_files_elsewhere_is_not_adopted(
    stack_dir: Path, tmp_path: Path
) -> None:
    """Adoption is only for the stack's own ``rendered/``: a user's folder that happens to
    hold a docker-compose.yml must not be taken for render's output."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "docker-compose.yml").write_text("services: {}\n")
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(out))
    refused(done, "has no .kbinfra-rendered")
    assert (out / "docker-compose.yml").read_text() == "services: {}\n"


def test_out_through_a_symlink_writes_the_real_folder_and_keeps_the_link(
    stack_dir: Path, tmp_path: Path
) -> None:
    real = tmp_path / "releases" / "one"
    assert kbinfra("render", "--dir", str(stack_dir), "--out", str(real)).returncode == 0
    link = tmp_path / "current"
    link.symlink_to(real)
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()
    assert (real / RENDER_MARKER).is_file()


def test_a_dangling_symlink_is_refused(stack_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    done = kbinfra("render", "--dir", str(stack_dir), "--out", str(link))
    refused(done, "symlink to nothing")
    assert not (tmp_path / "nowhere").exists()


def test_a_failed_swap_puts_the_previous_output_back(
    make_stack: Callable[..., Stack], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = render_stack(make_stack())
    out = tmp_path / "out"
    write_tree(files, out)
    before = snapshot(out)
    real_replace = os.replace

    def replace_fails_for_staging(source: str | Path, target: str | Path) -> None:
        if ".out.new-" in str(source):
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_fails_for_staging)
    with pytest.raises(OSError, match="disk full"):
        write_tree(files[:3], out)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_write_tree_alone_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    with pytest.raises(KbinfraError, match=r"has no \.kbinfra-rendered"):
        write_tree([], out)
    assert (out / "keep.txt").read_text() == "mine\n"


def test_a_previous_output_that_cannot_be_put_back_is_kept_not_deleted(
    make_stack: Callable[..., Stack], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = render_stack(make_stack())
    out = tmp_path / "out"
    write_tree(files, out)
    before = snapshot(out)
    real_replace = os.replace

    def only_the_first_move_works(source: str | Path, target: str | Path) -> None:
        if ".out.new-" in str(source) or ".out.old-" in str(source):
            raise OSError("disk gone")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", only_the_first_move_works)
    with pytest.raises(OSError, match="disk gone"):
        write_tree(files[:3], out)
    monkeypatch.undo()
    (kept,) = tmp_path.glob(".out.old-*/out")
    assert snapshot(kept) == before
