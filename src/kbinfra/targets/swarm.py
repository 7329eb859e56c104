"""A Docker Swarm reached over SSH: a manager for the Swarm API, every node for the rest.

Each node is an :class:`~kbinfra.targets.ssh.SSHTarget` with the same strict host-key rules
as a single host (``kbinfra ssh trust``): the manager carries the Swarm API (services,
secrets, configs, networks, nodes); a node's own connection carries what only that node can
do (join the Swarm, load an image, remove its node-local volumes, reach its tasks).
Connections are opened on first use and kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from kbinfra.errors import KbinfraError
from kbinfra.targets.base import FileStore, Target
from kbinfra.targets.openssh import SSHAddress, SSHOptions
from kbinfra.targets.ssh import SSHTarget

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.probing.probe import ProbeContext
    from kbinfra.progress import Progress
    from kbinfra.service import Service
    from kbinfra.stack import Stack

NodeRole = Literal["manager", "worker"]
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class SwarmNodeAddress:
    """One node as the node file declares it: how to reach it, its role and its labels.

    ``address.host`` is also the address the node advertises to the Swarm.
    """

    name: str
    address: SSHAddress
    role: NodeRole = "manager"
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)


class SwarmTarget(Target):
    """A Swarm of ``nodes``: the first manager in the list carries the Swarm API."""

    kind = "swarm"

    def __init__(self, nodes: Sequence[SwarmNodeAddress], options: SSHOptions) -> None:
        if not nodes:
            raise KbinfraError("a Swarm target needs at least one node")
        if not any(node.role == "manager" for node in nodes):
            raise KbinfraError(
                "no node has role: manager",
                fix="give at least one node of the node file `role: manager`",
            )
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise KbinfraError(f"two nodes share a name: {', '.join(names)}")
        self.nodes: tuple[SwarmNodeAddress, ...] = tuple(nodes)
        self.options = options
        self._targets: dict[str, SSHTarget] = {}
        self._manager: str | None = None
        self.name = f"swarm://{self.managers[0].address.host}"

    @property
    def managers(self) -> list[SwarmNodeAddress]:
        return [node for node in self.nodes if node.role == "manager"]

    def node(self, name: str) -> SwarmNodeAddress:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KbinfraError(f"no node {name!r} in the node file")

    def node_target(self, name: str) -> SSHTarget:
        """The SSH target of node ``name`` (not yet connected)."""
        target = self._targets.get(name)
        if target is None:
            target = SSHTarget(self.node(name).address, self.options)
            self._targets[name] = target
        return target

    def node_client(self, name: str) -> DockerClient:
        """Node ``name``'s own engine, over its SSH connection (host key checked)."""
        return self.node_target(name).docker_client()

    def connect_all(self) -> None:
        """Open every node's connection: an unknown or changed host key on any node is
        refused (with its fingerprint) before anything is changed."""
        for node in self.nodes:
            self.node_target(node.name).connect()

    def use_manager(self, name: str) -> None:
        """Carry the Swarm API through manager ``name`` (e.g. the one already in a Swarm)."""
        if self.node(name).role != "manager":
            raise KbinfraError(f"node {name} is not a manager")
        self._manager = name

    @property
    def manager_name(self) -> str:
        return self._manager or self.managers[0].name

    def docker_client(self) -> DockerClient:
        """The manager's engine: the Swarm API."""
        return self.node_client(self.manager_name)

    def file_store(self, stack: str) -> FileStore:
        return self.node_target(self.manager_name).file_store(stack)

    @contextmanager
    def tunnel(self, port: int, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        with self.node_target(self.manager_name).tunnel(port, host) as local:
            yield local

    def open_engine(self) -> None:
        """Carry the Swarm API through a manager that answers (the first one may be the node
        that is lost); nodes in no Swarm yet are one error line."""
        from kbinfra.swarm.run import find_manager  # noqa: PLC0415

        if find_manager(self) is None:
            raise KbinfraError(
                "the nodes are in no Swarm yet", where=self.name, fix="run `kbinfra apply` first"
            )

    def probe_context(
        self, stack: Stack, service: Service, *, progress: Progress | None = None
    ) -> ProbeContext:
        """The tasks of the service, reached over the SSH connection of the node of each."""
        from kbinfra.progress import SILENT  # noqa: PLC0415
        from kbinfra.swarm.probe_context import SwarmProbeContext  # noqa: PLC0415

        return SwarmProbeContext(stack, service, self, progress=progress or SILENT)

    def forget(self, name: str) -> None:
        """Drop node ``name``'s connection (its engine restarted, or it is gone)."""
        target = self._targets.pop(name, None)
        if target is not None:
            target.close()

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        self._targets.clear()
