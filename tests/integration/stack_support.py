"""A stack folder deployed on the test bed (local or over its sshd), driven by the real CLI.

Shared by the integration tests that need running services: the images come from the test
bed's image map, every secret is the fixed ``TESTSECRET-…`` value, every host port is free,
and every run asserts that no secret reached stdout or stderr.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:
    from .testbed_support import Testbed
except ImportError:  # pragma: no cover - plain modules
    from testbed_support import Testbed  # type: ignore[no-redef]

SECRET_MARK = "TESTSECRET"
#: How long a followed log or a command on a terminal may take to show what is awaited.
WAIT_S = 60.0
KBINFRA = [sys.executable, "-c", "from kbinfra.cli import main; main()"]


def fixed_secret(name: str) -> str:
    return f"{SECRET_MARK}-{name}-0123456789"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, and never one this process handed out before:
    the kernel may give the same free port to two binds in a row, and a stack file with
    two services on one port is refused (test_fit saw ``qdrant and redis both use``)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Deployment:
    """A stack folder and how to run kbinfra on it."""

    dir: Path
    name: str
    kind: str  # local or ssh
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [*KBINFRA, *args, "--dir", str(self.dir)]

    def run(self, *args: str, timeout: float = 600) -> Run:
        proc = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        for text in (proc.stdout, proc.stderr):
            assert SECRET_MARK not in text, f"a secret leaked into the output of {args}"
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    @property
    def spec(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.dir / "kbinfra.yaml").read_text())
        return data

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        path = self.dir / "kbinfra.yaml"
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def port(self, service: str) -> int:
        port: int = self.spec["services"][service]["port"]
        return port

    def container(self, service: str) -> str:
        return f"{self.name}-{service}"

    def postgres(self, database: str = "kb", user: str = "kb", password: str | None = None) -> Any:
        """A psycopg connection (autocommit) to the stack's PostgreSQL on its loopback port,
        as the stack's user unless told."""
        import psycopg  # noqa: PLC0415

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port("postgres"),
            user=user,
            password=password or fixed_secret("postgres_password"),
            dbname=database,
            autocommit=True,
            connect_timeout=20,
        )


def new_deployment(
    kind: str, folder: Path, testbed: Testbed, services: Iterable[str], prefix: str = "kbt"
) -> Deployment:
    """``kbinfra init`` with the test bed's images; only ``services`` enabled; free ports."""
    name = f"{prefix}{kind[0]}{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    target = "local"
    if kind == "ssh":
        ssh = testbed.ssh
        target = f"ssh://{ssh.user}@{ssh.host}:{ssh.port}"
        env["KBINFRA_KNOWN_HOSTS"] = str(ssh.known_hosts_path)
        env["KBINFRA_SSH_IDENTITY"] = str(ssh.key_path)
    deployment = Deployment(folder, name, kind, env)
    init = subprocess.run(
        [*KBINFRA, "init", "--profile", "minimum", "--images", str(testbed.images_file),
         "--target", target, "--dir", str(folder)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    wanted = set(services)

    def configure(data: dict[str, Any]) -> None:
        data["name"] = name
        for service, settings in data["services"].items():
            settings["enabled"] = service in wanted
            if settings.get("port"):
                settings["port"] = free_port()
            if "grpc_port" in settings:
                settings["grpc_port"] = None

    deployment.edit(configure)
    secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
    (folder / "secrets.yaml").write_text(yaml.safe_dump({k: fixed_secret(k) for k in secrets}))
    return deployment


#: The reference app's worker on its one queue: ``app.workers[]`` of the app tier's tests.
DOCUMENTS_WORKER: dict[str, Any] = {
    "name": "documents",
    "command": ["worker"],
    "replicas": 1,
    "queues": ["documents"],
}


def nginx_on_free_ports(data: dict[str, Any]) -> None:
    """A stack file edit: nginx's two public ports (it has no ``port``) free ones."""
    nginx = data["services"]["nginx"]
    nginx["http_port"], nginx["https_port"] = free_port(), free_port()


@contextmanager
def applied_deployment(
    testbed: Testbed,
    folder: Path,
    services: Iterable[str],
    prefix: str,
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[Deployment]:
    """A local :func:`new_deployment` of ``services`` (nginx on free ports, then
    ``configure``'s edits of the stack file), applied for the block and destroyed with its
    data after it."""
    deployment = new_deployment("local", folder, testbed, services, prefix=prefix)
    deployment.edit(nginx_on_free_ports)
    if configure is not None:
        deployment.edit(configure)
    applied = deployment.run("apply", "--yes", "-o", "json", timeout=900)
    try:
        assert applied.code == 0, applied.out + applied.err
        yield deployment
    finally:
        deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)


def container_url(docker_client: Any, deployment: Deployment, service: str, port: int) -> str:
    """``http://IP:port`` of a service's container on the stack network: around nginx."""
    inspected = docker_client.api.inspect_container(deployment.container(service))
    address: str = next(iter(inspected["NetworkSettings"]["Networks"].values()))["IPAddress"]
    return f"http://{address}:{port}"


def app_deployment(
    kind: str,
    folder: Path,
    testbed: Testbed,
    services: Iterable[str],
    app: dict[str, Any],
    *,
    prefix: str = "kbt",
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> Deployment:
    """:func:`new_deployment` with the stack file's ``app:`` section set to ``app`` (the
    reference app's image unless it names one), nginx on free ports and ``configure``'s
    edits; then ``kbinfra init`` again, which adds the secrets the app tier needs, and every
    secret the fixed value."""
    assert "app" in testbed.images, "the test bed's image map has no app: run scripts/testbed up"
    deployment = new_deployment(kind, folder, testbed, services, prefix=prefix)

    def with_app(data: dict[str, Any]) -> None:
        nginx_on_free_ports(data)
        data["app"] = {"image": testbed.images["app"], **app}
        if configure is not None:
            configure(data)

    deployment.edit(with_app)
    completed = deployment.run("init")
    assert completed.code == 0, completed.err
    secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
    (folder / "secrets.yaml").write_text(yaml.safe_dump({k: fixed_secret(k) for k in secrets}))
    return deployment


def swarm_deployment(
    folder: Path,
    stack: str,
    node_file: Path,
    images_file: Path,
    services: Iterable[str],
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> Deployment:
    """``kbinfra init --target swarm --nodes`` over the test bed's cluster, only ``services``
    enabled, the fixed secrets; ``configure`` edits the stack file further."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    init = subprocess.run(
        [*KBINFRA, "init", "--profile", "minimum", "--target", "swarm",
         "--nodes", str(node_file), "--images", str(images_file), "--dir", str(folder)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    deployment = Deployment(folder, stack, "swarm", env)
    enabled = set(services)

    def edit(data: dict[str, Any]) -> None:
        data["name"] = stack
        for service, settings in data["services"].items():
            settings["enabled"] = service in enabled
        if configure is not None:
            configure(data)

    deployment.edit(edit)
    secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
    (folder / "secrets.yaml").write_text(yaml.safe_dump({k: fixed_secret(k) for k in secrets}))
    return deployment


def build_image(client: Any, dockerfile: str, tag: str) -> str:
    """An image built here from ``dockerfile`` alone (no other context), tagged ``tag``: its
    id. No registry can be reached: a test's own image variant is built from a test bed one."""
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return str(image.id)


# ---------------------------------------------------------------- secrets rotate, followed
#: The unfinished rotation's state file in a stack folder (its ``new`` values included).
ROTATION_STATE = Path(".kbinfra") / "rotation.json"


def stack_secrets(deployment: Deployment) -> dict[str, str]:
    values: dict[str, str] = yaml.safe_load((deployment.dir / "secrets.yaml").read_text())
    return values


def pending_new_values(deployment: Deployment) -> dict[str, str]:
    values: dict[str, str] = json.loads((deployment.dir / ROTATION_STATE).read_text())["new"]
    return values


def rotate_following(
    deployment: Deployment,
    moved: Callable[[dict[str, str]], None],
    *args: str,
    kill_after: str = "",
) -> tuple[int, str, str]:
    """Run ``secrets rotate ARGS``; when it says it moves the clients (``phase moved:``),
    give ``moved`` the new values (what the clients a test stands for move to); with
    ``kill_after``, kill -9 it once that line is printed. No value, old or new, may be in
    its output. Returns (exit code, stderr, stdout)."""
    process = deployment.popen("secrets", "rotate", *args)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "phase moved:" in line:
            moved(pending_new_values(deployment))
        if kill_after and kill_after in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    code = process.wait(timeout=900)
    out = process.stdout.read() if process.stdout else ""
    text = "".join(lines)
    shown = [*stack_secrets(deployment).values()]
    if (deployment.dir / ROTATION_STATE).exists():
        shown += pending_new_values(deployment).values()
    for value in shown:
        for part in value.split():
            assert part not in text + out, "a secret value reached the output"
    return code, text, out


def restic(
    repository: Path, password: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """restic itself on ``repository``, with ``password`` (by environment), no cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env |= {"RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD": password}
    return subprocess.run(
        ["restic", "--no-cache", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )


#: The file the snapshot of :func:`add_offsite_repository` holds.
OFFSITE_SNAPSHOT_FILE = "rows.txt"


def add_offsite_repository(deployment: Deployment, root: Path, name: str = "disk") -> Path:
    """A real local restic repository under ``root``, configured as the stack's offsite
    ``name`` (its password, fixed, added to secrets.yaml as ``offsite_<name>_password``),
    holding one kbinfra-tagged snapshot of one file. Changes no rendered file."""
    repository = root / "repo"
    deployment.edit(
        lambda d: d["backup"].update({"offsite": [{"name": name, "repository": str(repository)}]})
    )
    secret = f"offsite_{name}_password"
    password = fixed_secret(secret)
    path = deployment.dir / "secrets.yaml"
    path.write_text(yaml.safe_dump({**stack_secrets(deployment), secret: password}))
    data = root / "backup"
    data.mkdir()
    (data / OFFSITE_SNAPSHOT_FILE).write_text("".join(f"row {i}\n" for i in range(1000)))
    tags = ("--tag", "kbinfra", "--tag", f"stack={deployment.name}")
    for args in (("init",), ("backup", *tags, "backup")):
        done = restic(repository, password, *args, cwd=root)
        assert done.returncode == 0, done.stderr
    return repository


# ---------------------------------------------------------------- followed output, terminals
def read_until(process: subprocess.Popen[str], wanted: list[str]) -> str:
    """stdout lines of ``process`` until every one of ``wanted`` was seen (a follow)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + WAIT_S
    while not all(w in seen for w in wanted):
        assert time.monotonic() < deadline, f"not followed within {WAIT_S}s: {seen!r}"
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            assert line, f"the follow ended early: {seen!r}"
            seen += line
    return seen


def reap(pid: int) -> int:
    """The child's exit code; one that has not exited by then is killed (the test fails)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"still running after {WAIT_S}s: killed")


def read_terminal(fd: int) -> str:
    """Everything the child writes to its terminal until it closes it."""
    seen = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(fd)
    return seen.decode("utf-8", "replace")


def interrupt_follow(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C to a ``kbinfra logs -f``: it must end with exit 130, no traceback and no
    secret in what it printed; its stdout and stderr."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and SECRET_MARK not in out + err
    return out, err
