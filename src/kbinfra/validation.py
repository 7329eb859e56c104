"""``kbinfra render --check``: validate rendered files with the real tools, where installed.

Each service validates its own files (``services/<name>/render_check.py``, whose
``check_rendered(ctx, out)`` returns a list of :class:`CheckResult`) with the helpers here;
every YAML and JSON file is at least parsed. A tool that is not installed is reported as
skipped, never as passed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import yaml

from kbinfra.registry import service_part
from kbinfra.service import CheckResult

if TYPE_CHECKING:
    from kbinfra.service import ServiceContext
    from kbinfra.stack import Stack

STACK_FILE = "kbinfra.yaml"

RenderCheck = Callable[["ServiceContext", Path], list[CheckResult]]


@dataclass(frozen=True)
class ToolRun:
    returncode: int
    output: str  # stdout and stderr together

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def find_tool(name: str, *extra_dirs: str) -> str | None:
    """``name`` on PATH or in one of ``extra_dirs`` (e.g. /usr/lib/postgresql/15/bin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` through setpriv when we are root; unchanged otherwise."""
    command = list(argv)
    if user is not None and os.geteuid() == 0:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *command]
    return command


def run_tool(
    argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 60, user: str | None = None
) -> ToolRun:
    """Run a validator; ``user`` drops root privileges (postgres refuses to run as root)."""
    command = as_user(argv, user)
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ToolRun(124, f"{argv[0]} did not finish within {timeout:.0f}s")
    return ToolRun(done.returncode, (done.stdout + done.stderr).strip())


@contextmanager
def server_process(
    argv: Sequence[str],
    *,
    log: Path,
    user: str | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    stop_timeout: float = 15,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started for a check, its output in ``log``; stopped (then killed) on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            as_user(argv, user), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(stop_signal)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll ``ready`` until it holds, ``process`` exits, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def skipped(path: str, tool: str) -> CheckResult:
    return CheckResult(path, tool, "skipped", f"{tool} is not installed")


def parse_check(out: Path, relative: str) -> CheckResult:
    """YAML and JSON files must at least parse."""
    path = out / relative
    try:
        if relative.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
            return CheckResult(relative, "json parse", "ok")
        yaml.safe_load(path.read_text(encoding="utf-8"))
        return CheckResult(relative, "yaml parse", "ok")
    except json.JSONDecodeError as error:
        return CheckResult(relative, "json parse", "failed", error.msg, error.lineno)
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        return CheckResult(relative, "yaml parse", "failed", str(error.problem), line)


def validate_tree(stack: Stack, out: Path) -> list[CheckResult]:
    """Parse every YAML/JSON file, then let each service run its real validators."""
    results = []
    for relative in sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()):
        if relative.endswith((".yml", ".yaml", ".json")):
            results.append(parse_check(out, relative))
    results.append(compose_check(out))
    enabled = frozenset(stack.services)
    for name, service in stack.services.items():
        results.extend(missing_requirements(name, service.requires, enabled))
        check = service_part(name, "render_check")
        if check is not None:
            rendered_check = cast(RenderCheck, check.check_rendered)
            results.extend(rendered_check(stack.contexts[name], out))
    return results


def missing_requirements(
    name: str, requires: Sequence[str], enabled: frozenset[str]
) -> list[CheckResult]:
    """A failed check for each service ``name`` requires that is not enabled.

    ``kbinfra.stack`` enables services one by one, so an exporter left on after its
    service was switched off would run and report nothing but ``*_up 0``.
    """
    return [
        CheckResult(
            STACK_FILE,
            "kbinfra",
            "failed",
            f"services.{name} is enabled but {needed} is not: set "
            f"services.{name}.enabled: false, or enable {needed}",
        )
        for needed in requires
        if needed not in enabled
    ]


def compose_check(out: Path) -> CheckResult:
    """The compose export, checked by the real ``docker-compose config -q`` when installed
    (with the ``.env`` beside it), else against what compose accepts."""
    from kbinfra.exports import COMPOSE_FILE, compose_problems  # noqa: PLC0415

    compose = find_tool("docker-compose")
    if compose is not None:
        folder = out.resolve()
        argv = [compose, "--project-directory", str(folder), "-f", str(folder / COMPOSE_FILE)]
        run = run_tool([*argv, "config", "-q"], cwd=folder)
        if not run.ok:
            why = run.output.splitlines()[-1] if run.output else f"exit {run.returncode}"
            return CheckResult(COMPOSE_FILE, "docker-compose", "failed", why)

    try:
        document = yaml.safe_load((out / COMPOSE_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        return CheckResult(COMPOSE_FILE, "compose schema", "failed", str(error))
    problems = compose_problems(document)
    if problems:
        return CheckResult(COMPOSE_FILE, "compose schema", "failed", "; ".join(problems))
    tool = "docker-compose" if compose is not None else "compose schema"
    return CheckResult(COMPOSE_FILE, tool, "ok", f"{len(document['services'])} services")
