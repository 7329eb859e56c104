"""``kbinfra render --check``: validate rendered files with the real tools, where installed.

Each service validates its own files (``services/<name>/render_check.py``, whose
``check_rendered(ctx, out)`` returns a list of :class:`CheckResult`) with the helpers here;
every YAML and JSON file is at least parsed. A tool that is not installed is reported as
skipped, never as passed (``--strict`` makes a skip fail the run), and every result names
the version of what checked it: the local tool's, which may be older than the pinned image.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import yaml

from kbinfra import __version__
from kbinfra.registry import service_part
from kbinfra.service import CheckResult

if TYPE_CHECKING:
    from kbinfra.service import ServiceContext
    from kbinfra.stack import Stack

from kbinfra.stack_folder import STACK_FILE

RenderCheck = Callable[["ServiceContext", Path], list[CheckResult]]


@dataclass(frozen=True)
class ToolRun:
    returncode: int
    output: str  # stdout and stderr together

    @property
    def ok(self) -> bool:
        return self.returncode == 0


#: The Debian 12 package that provides each validator ``render --check`` runs.
DEBIAN_PACKAGES = {
    "nginx": "nginx-light",
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "redis-server": "redis-server",
    "postgres": "postgresql-15",
    "docker-compose": "docker-compose",
}

#: Open :func:`tools_found` records: each gets every tool :func:`find_tool` finds, by name.
_recorders: list[dict[str, str]] = []


@contextmanager
def tools_found() -> Iterator[dict[str, str]]:
    """The tools :func:`find_tool` finds inside the block, by name → path."""
    found: dict[str, str] = {}
    _recorders.append(found)
    try:
        yield found
    finally:
        _recorders.remove(found)


def find_tool(name: str, *extra_dirs: str) -> str | None:
    """``name`` on PATH or in one of ``extra_dirs`` (e.g. /usr/lib/postgresql/15/bin)."""
    found = shutil.which(name)
    if not found:
        for folder in extra_dirs:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    for record in _recorders:
        if found:
            record[name] = found
    return found


_VERSION = re.compile(r"\d+(?:\.\d+)+")


@cache
def tool_version(path: str) -> str:
    """``nginx 1.22.1``: the program's name and the version it reports (``--version``, or
    ``-v`` as nginx has it); the name alone when it reports none."""
    name = Path(path).name
    for flag in ("--version", "-v"):
        run = run_tool([path, flag], timeout=10)
        found = _VERSION.search(run.output) if run.ok else None
        if found:
            return f"{name} {found[0]}"
    return name


def program_of(tool: str) -> str:
    """``promtool`` of ``promtool check config``: the program a result's tool label names."""
    return tool.split(maxsplit=1)[0]


def checked_by(result: CheckResult, found: Mapping[str, str]) -> str:
    """What checked ``result``, given the tools its service ``found``: the local tool it
    names (or one next to it, as initdb is next to postgres), Python's own YAML, JSON or
    OpenSSL, else kbinfra's own schema."""
    if result.outcome == "skipped":
        return ""
    program = program_of(result.tool)
    if program in found:
        return tool_version(found[program])
    if program == "yaml":
        return f"PyYAML {getattr(yaml, '__version__', '')}".strip()
    if program == "json":
        return f"Python {platform.python_version()}"
    if program == "openssl":
        import ssl  # noqa: PLC0415 (only render --check needs it)

        return " ".join(ssl.OPENSSL_VERSION.split()[:2])
    for path in found.values():
        sibling = Path(path).resolve().parent / program
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return tool_version(str(sibling))
    return f"kbinfra {__version__}"


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
    package = DEBIAN_PACKAGES.get(program_of(tool))
    where = f" (Debian package {package})" if package else ""
    return CheckResult(path, tool, "skipped", f"{tool} is not installed{where}")


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
    with tools_found() as compose_tools:
        results.append(compose_check(out))
        if stack.spec.swarm is not None:
            results.append(swarm_stack_check(out))
    results = [result._replace(version=checked_by(result, compose_tools)) for result in results]
    enabled = frozenset(stack.services)
    for name, service in stack.services.items():
        missing = missing_requirements(name, service.requires, enabled)
        results.extend(result._replace(version=checked_by(result, {})) for result in missing)
        check = service_part(name, "render_check")
        if check is None:
            continue
        rendered_check = cast(RenderCheck, check.check_rendered)
        with tools_found() as found:
            checked = rendered_check(stack.contexts[name], out)
        results.extend(result._replace(version=checked_by(result, found)) for result in checked)
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


def swarm_stack_check(out: Path) -> CheckResult:
    """``swarm-stack.yml``, checked by the real ``docker-compose config -q`` (which reads the
    compose v3 schema ``docker stack deploy`` uses) when installed, else skipped."""
    from kbinfra.swarm.compose import SWARM_STACK_FILE  # noqa: PLC0415

    compose = find_tool("docker-compose")
    if compose is None:
        return CheckResult(SWARM_STACK_FILE, "docker-compose", "skipped", "not installed")
    folder = out.resolve()
    run = run_tool([compose, "-f", str(folder / SWARM_STACK_FILE), "config", "-q"], cwd=folder)
    if not run.ok:
        why = run.output.splitlines()[-1] if run.output else f"exit {run.returncode}"
        return CheckResult(SWARM_STACK_FILE, "docker-compose", "failed", why)
    return CheckResult(SWARM_STACK_FILE, "docker-compose", "ok", "compose v3.8 for stack deploy")


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
