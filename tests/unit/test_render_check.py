"""``kbinfra render --check``: it never passes what it did not check, and names what checked.

``--strict`` fails a run where a validator is not installed; every row names the version of
the tool that checked it, in the table and in ``--output json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.services.postgres.render_check import postgres_bin_dirs
from kbinfra.validation import (
    DEBIAN_PACKAGES,
    CheckResult,
    checked_by,
    find_tool,
    tool_version,
    tools_found,
)
from tests.conftest import run_kbinfra, write_stack_dir

REPO = Path(__file__).resolve().parents[2]


def kbinfra(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """``path``: the PATH kbinfra sees, to hide validators."""
    return run_kbinfra(*args, columns=250, env=None if path is None else {"PATH": path})


def path_without(hidden: str, farm: Path) -> str:
    """A PATH of one folder that links every program on today's PATH except ``hidden``."""
    farm.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = farm / entry.name
            if entry.name != hidden and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    return str(farm)


def fake_tool(folder: Path, name: str, version_output: str, flag: str = "--version") -> str:
    """An executable that prints ``version_output`` for ``flag`` and fails for anything else."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "{flag}" ]; then echo "{version_output}"; exit 0; fi\n'
        'echo "invalid option 1.2.3" >&2; exit 1\n'
    )
    script.chmod(0o755)
    return str(script)


def test_tool_version_reads_the_version_each_tool_prints(tmp_path: Path) -> None:
    promtool = fake_tool(tmp_path, "promtool", "promtool, version 2.42.0+ds (branch: debian)")
    nginx = fake_tool(tmp_path, "nginx", "nginx version: nginx/1.22.1", flag="-v")
    silent = fake_tool(tmp_path, "quiet", "no number here")
    assert tool_version(promtool) == "promtool 2.42.0"
    assert tool_version(nginx) == "nginx 1.22.1"  # --version fails, so -v is asked
    assert tool_version(silent) == "quiet"


def test_each_result_is_named_by_what_checked_it(tmp_path: Path) -> None:
    postgres = fake_tool(tmp_path / "bin", "postgres", "postgres (PostgreSQL) 15.10")
    fake_tool(tmp_path / "bin", "initdb", "initdb (PostgreSQL) 15.10")
    found = {"postgres": postgres}
    assert checked_by(CheckResult("p.conf", "postgres", "ok"), found) == "postgres 15.10"
    # initdb sits next to the postgres that was found
    assert checked_by(CheckResult("p.conf", "initdb", "failed"), found) == "initdb 15.10"
    assert checked_by(CheckResult("a.yml", "yaml parse", "ok"), {}).startswith("PyYAML ")
    assert checked_by(CheckResult("a.json", "json parse", "ok"), {}).startswith("Python 3.")
    assert checked_by(CheckResult("s.conf", "openssl ciphers", "ok"), {}).startswith("OpenSSL")
    assert checked_by(CheckResult("q.yaml", "qdrant schema", "ok"), found).startswith("kbinfra ")
    assert checked_by(CheckResult("p.conf", "postgres", "skipped"), found) == ""


def test_find_tool_reports_what_it_found_to_the_open_record(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "frobnicate", "frobnicate 1.0")
    with tools_found() as found:
        assert find_tool("frobnicate", str(tmp_path)) == tool
        assert find_tool("not-a-tool-anywhere") is None
    assert found == {"frobnicate": tool}


def test_a_skipped_validator_names_its_debian_package(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra(
        "render",
        "--dir",
        str(stack),
        "--check",
        "--output",
        "json",
        path=path_without("amtool", tmp_path / "bin"),
    )
    assert done.returncode == 0, done.stderr  # without --strict a skip is reported, not fatal
    report = json.loads(done.stdout)
    (amtool,) = [c for c in report["checks"] if c["tool"] == "amtool"]
    assert amtool["outcome"] == "skipped"
    assert amtool["version"] is None
    assert f"Debian package {DEBIAN_PACKAGES['amtool']}" in amtool["detail"]
    assert report["ok"] is True
    assert report["strict"] is False
    assert report["skipped"] >= 1


@pytest.mark.validators
def test_strict_fails_when_a_validator_is_not_installed(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    hidden = path_without("amtool", tmp_path / "bin")
    done = kbinfra("render", "--dir", str(stack), "--strict", "--output", "json", path=hidden)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "--strict" in done.stderr
    assert "amtool is not installed" in done.stderr
    assert str(stack / "rendered" / "alertmanager" / "alertmanager.yml") in done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["strict"] is True

    text = kbinfra("render", "--dir", str(stack), "--check", "--strict", path=hidden)
    assert text.returncode == 2
    assert "amtool" in text.stdout  # the table still shows every row


@pytest.mark.validators
def test_strict_passes_and_names_every_tools_version_when_all_are_installed(
    tmp_path: Path, require_tool: Callable[..., str]
) -> None:
    for tool in ("promtool", "amtool", "redis-server"):
        require_tool(tool)
    require_tool("nginx", "/usr/sbin", "/usr/local/sbin")
    require_tool("postgres", *postgres_bin_dirs())
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra("render", "--dir", str(stack), "--check", "--strict", "--output", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["skipped"] == 0
    by_tool = {c["tool"]: c["version"] for c in report["checks"]}
    assert all(by_tool.values()), by_tool
    assert by_tool["nginx -t"].startswith("nginx 1.")
    assert by_tool["amtool check-config"].startswith("amtool 0.")
    assert by_tool["redis-server"].startswith("redis-server 7.")
    assert by_tool["postgres"].startswith("postgres 1")

    table = kbinfra("render", "--dir", str(stack), "--check", "--strict")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "result" in line)
    assert "version" in header
    assert by_tool["promtool check config"] in table.stdout


def test_every_validator_package_is_installed_by_ci_and_named_in_the_readme() -> None:
    ci = {
        line.strip()
        for line in (REPO / ".ci" / "apt-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    readme = (REPO / "README.md").read_text()
    for tool, package in DEBIAN_PACKAGES.items():
        assert package in ci, f"{package} (for {tool}) is missing from .ci/apt-packages.txt"
        assert f"| `{package}` |" in readme, f"README's Validators table lacks {package}"
