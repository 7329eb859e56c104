"""`kbinfra images`: mounted on the CLI, and cheap until a command really talks to Docker."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from kbinfra.cli import app


def test_images_lists_build_save_and_load() -> None:
    result = CliRunner().invoke(app, ["images", "--help"])
    assert result.exit_code == 0
    for command in ("build", "save", "load"):
        assert command in result.output


def test_help_never_imports_docker_paramiko_or_torch() -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kbinfra.cli import app\n"
        "for args in (['--help'], ['images', '--help'], ['images', 'build', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in ('docker', 'paramiko', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
