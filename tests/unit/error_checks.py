"""How a user meets an error: run kbinfra as a subprocess, and what every error must be."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import fixed_secret, run_kbinfra

NOWHERE = "unix:///nonexistent/docker.sock"
#: What every test secret starts with (tests.conftest.fixed_secret): none may be printed.
SECRET_MARK = fixed_secret("x").split("-", 1)[0] + "-"


def kbinfra(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """kbinfra with no engine to reach: an error must come before any engine is asked."""
    return run_kbinfra(*args, cwd=cwd, env={"DOCKER_HOST": NOWHERE}, timeout=120)


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], expected: str, *, json_output: bool = False
) -> dict[str, str | None]:
    """Exit 2, one ``error:`` line naming ``expected`` and a fix, no traceback, no secret."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert expected in done.stderr
    assert " — " in done.stderr, f"no fix offered: {done.stderr}"
    assert "Traceback" not in done.stderr + done.stdout
    assert SECRET_MARK not in done.stderr + done.stdout
    if not json_output:
        return {}
    error: dict[str, str | None] = json.loads(done.stdout)["error"]
    assert set(error) == {"what", "where", "fix"}
    assert error["what"] and expected in done.stderr and error["fix"]
    return error
