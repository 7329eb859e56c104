"""Golden files: every rendered file of every profile, byte for byte.

A change to a template or a tuning formula shows up here as a diff a reviewer reads.
Regenerate after an intended change with::

    KBINFRA_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_golden.py
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.render import RENDER_MARKER, render_stack, write_tree
from kbinfra.stack import Stack
from tests.conftest import PROFILES

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("KBINFRA_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_files_match_the_golden_files(
    profile: str, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    files = render_stack(make_stack(profile))
    expected_dir = GOLDEN / profile
    if UPDATE:
        out = tmp_path / "out"
        write_tree(files, out)
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(out, expected_dir, ignore=shutil.ignore_patterns(RENDER_MARKER))
    expected = sorted(
        p.relative_to(expected_dir).as_posix() for p in expected_dir.rglob("*") if p.is_file()
    )
    assert [f.path for f in files] == expected, "files added or removed: regenerate and review"
    for file in files:
        golden = (expected_dir / file.path).read_text(encoding="utf-8")
        assert file.text == golden, f"{file.path} differs from tests/golden/{profile}/{file.path}"


@pytest.mark.parametrize("profile", PROFILES)
def test_only_0600_secret_files_hold_a_secret(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    private_key_body = stack.tls_key.strip().splitlines()[1]
    for file in render_stack(stack):
        holds_secret = "TESTSECRET" in file.text or private_key_body in file.text
        if holds_secret:
            assert file.secret, f"{file.path} holds a secret but is not marked secret"
            assert file.mode == 0o600, f"{file.path} holds a secret but is {file.mode:o}"


def test_the_swarm_stack_file_of_the_minimum_profile_matches_its_golden_file(
    tmp_path: Path,
) -> None:
    """The minimum profile over the test bed's three nodes, as ``kbinfra init --target swarm
    --nodes`` places it: ``rendered/swarm-stack.yml`` byte for byte."""
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.swarm.compose import SWARM_STACK_FILE  # noqa: PLC0415
    from tests.unit.swarm.conftest import write_swarm_stack_dir  # noqa: PLC0415

    stack = open_stack(write_swarm_stack_dir(tmp_path / "swarm"))
    text = next(f.text for f in render_stack(stack) if f.path == SWARM_STACK_FILE)
    golden = GOLDEN / "swarm-minimum" / SWARM_STACK_FILE
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"{SWARM_STACK_FILE} differs from {golden}"
