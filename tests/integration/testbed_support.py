"""Helpers shared by the integration tests and their fixtures (see conftest.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import pytest

if TYPE_CHECKING:
    from docker.models.containers import Container


@dataclass(frozen=True)
class SSHTarget:
    """The test bed's sshd: key-only, its host key pinned in known_hosts_path."""

    user: str
    host: str
    port: int
    key_path: Path
    known_hosts_path: Path

    @property
    def docker_base_url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a test class, whatever its name: pytest must not collect it

    images_file: Path
    images: dict[str, str]
    ssh: SSHTarget
    up_log: str
    #: The test bed's debootstrap'd Debian (`ensure_base_image` in scripts/testbed): the image
    #: a test uses when it needs one that runs no service at all.
    base_image: str
    #: Every recipe's image by recipe name (tests/testbed/images/<recipe>), those the image
    #: map leaves out included (``postgres18``: the second PostgreSQL major).
    recipe_images: dict[str, str] = field(default_factory=dict)


@contextmanager
def paramiko_home(target: SSHTarget, home: Path, known_hosts: Path | None = None) -> Iterator[None]:
    """Point docker-py's paramiko at the test key and known_hosts without touching ~/.ssh.

    docker-py reads only ~/.ssh/config (hostname, port, user, identityfile, proxycommand) and
    loads ~/.ssh/known_hosts as system host keys with RejectPolicy, so a generated HOME is
    enough; SSH_AUTH_SOCK is hidden so no agent key is offered. Only the connection made while
    this is active sees the override: docker-py connects once, in the client's constructor.
    """
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ssh_dir / "config").write_text(f"Host {target.host}\n  IdentityFile {target.key_path}\n")
    (ssh_dir / "known_hosts").write_bytes((known_hosts or target.known_hosts_path).read_bytes())
    saved = {name: os.environ.get(name) for name in ("HOME", "SSH_AUTH_SOCK")}
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ssh_docker_client(
    target: SSHTarget, home: Path, known_hosts: Path | None = None
) -> docker.DockerClient:
    """A docker-py client that reaches the engine through the test bed's sshd (paramiko)."""
    with paramiko_home(target, home, known_hosts):
        return docker.DockerClient(
            base_url=target.docker_base_url, use_ssh_client=False, timeout=120
        )


def wait_for(
    check: Callable[[], Any], what: str, timeout_s: float = 90.0, interval_s: float = 0.5
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` and the last error."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(interval_s)
    pytest.fail(f"timed out waiting for {what}; last error: {last!r}", pytrace=False)


def output_text(output: bytes | Iterator[bytes] | None) -> str:
    """The text of a non-streamed `exec_run` output."""
    return output.decode(errors="replace") if isinstance(output, bytes) else ""


def exec_ok(container: Container, *cmd: str) -> str:
    """Run a command in a container; its output, or a failed test with the output."""
    code, output = container.exec_run(list(cmd), demux=False)
    text = output_text(output)
    assert code == 0, f"{' '.join(cmd)} exited {code}: {text}"
    return text


def published_port(container: Container, port: str) -> int:
    container.reload()
    bindings = container.ports.get(port) or []
    assert bindings, f"{container.name} publishes no {port}: {container.ports}"
    return int(bindings[0]["HostPort"])


@dataclass(frozen=True)
class Node:
    """One node of the test bed's cluster: reached over SSH like a real host, and (for test
    set-up only) through its engine's socket on this machine."""

    name: str
    url: str  # ssh://user@address:port
    socket: str

    @property
    def host(self) -> str:
        """Its address on the cluster's network, as the node file gives it."""
        return self.url.rsplit("@", 1)[1].split(":")[0]


@dataclass(frozen=True)
class Cluster:
    """`scripts/testbed cluster up`: its node file, and the nodes it lists."""

    node_file: Path
    nodes: list[Node]
    known_hosts: Path
    identity: Path


def node_engine(cluster: Cluster, name: str) -> docker.DockerClient:
    """A node's engine through its socket on this machine: for test set-up and checks only
    (kbinfra itself reaches every node over SSH)."""
    node = next(n for n in cluster.nodes if n.name == name)
    return docker.DockerClient(base_url=f"unix://{node.socket}")


def service_versions(cluster: Cluster, stack: str) -> dict[str, int]:
    """Each Swarm service of ``stack`` by name, with its version (an update raises it)."""
    client = node_engine(cluster, "node1")
    try:
        return {
            s["Spec"]["Name"]: s["Version"]["Index"]
            for s in client.api.services(filters={"label": f"io.kbinfra.stack={stack}"})
        }
    finally:
        client.close()


def leave_swarm(cluster: Cluster, *names: str) -> None:
    """``names`` (default: every node, the first manager last) out of any Swarm."""
    import docker.errors  # noqa: PLC0415

    for name in names or [n.name for n in reversed(cluster.nodes)]:
        client = node_engine(cluster, name)
        with suppress(docker.errors.APIError):  # not in a Swarm
            client.swarm.leave(force=True)
        client.close()


def read_cluster(node_file: Path) -> Cluster:
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(node_file.read_text())
    prefix = os.environ.get("KBINFRA_TESTBED_CLUSTER", "kbtb")  # as tests/testbed/cluster.sh
    nodes = [
        Node(str(n["name"]), str(n["address"]), f"/run/{prefix}/{n['name']}/docker.sock")
        for n in data["nodes"]
    ]
    return Cluster(node_file, nodes, Path(data["known_hosts"]), Path(data["identity"]))
