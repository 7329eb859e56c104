"""The probe context of a Swarm stack: the interface every service's ``probe.py`` uses on one
host (:class:`~kbinfra.probing.probe.ProbeContext`), reaching the tasks of a Swarm instead.

- ``address(port)``: ``port`` is a host port as the stack file gives it (``settings.port``,
  nginx's ``https_port``); on a Swarm nothing but nginx is published, so the service whose
  container publishes that port on one host is asked for the container port behind it, and
  the address is a tunnel to that container port of one of its running tasks, over the SSH
  connection of the node that runs it (:mod:`kbinfra.swarm.reach`);
- ``container()`` and ``exec()``: the task's container, on that node's own engine;
- ``replica()``: the same for the service's streaming replica, when it has one.

A service with no running task (its node is down, its task pending) fails the check that
needed it with one value naming the service and where its task was, not a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError
from kbinfra.probing.probe import CheckFailedError, ProbeContext
from kbinfra.progress import SILENT, Progress

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from kbinfra.service import ContainerSpec, Service
    from kbinfra.stack import Stack
    from kbinfra.swarm.reach import TaskAddress
    from kbinfra.targets.swarm import SwarmTarget


def container_port_of(
    containers: Mapping[str, ContainerSpec], host_port: int, prefer: str
) -> tuple[str, int]:
    """``(service, container port)`` behind ``host_port``: the port as the service's own
    container spec publishes it on one host (``prefer``'s first: a probe asks for its own
    service's ports, and sometimes another's, as the app's probe asks for the database's)."""
    ordered = [prefer, *(name for name in containers if name != prefer)]
    for name in ordered:
        spec = containers.get(name)
        if spec is None:
            continue
        for binding in spec.ports:
            if binding.host_port == host_port:
                return name, binding.container_port
    raise CheckFailedError(f"no service of the stack publishes port {host_port}")


class SwarmProbeContext(ProbeContext):
    """A :class:`ProbeContext` whose connections reach a running task of a Swarm service.

    ``task_service`` is the kbinfra name of the Swarm service whose task is reached for the
    service's own ports and container: the service itself, or ``<name>-replica``.
    """

    target: SwarmTarget

    def __init__(
        self,
        stack: Stack,
        service: Service,
        target: SwarmTarget,
        *,
        progress: Progress = SILENT,
        task_service: str | None = None,
    ) -> None:
        super().__init__(stack, service, target, progress=progress)
        self.task_service = task_service or service.name
        self._tasks: dict[str, TaskAddress] = {}

    def task(self, service: str | None = None) -> TaskAddress:
        """The running task reached for ``service`` (default: this context's), found once."""
        from kbinfra.swarm.reach import running_task  # noqa: PLC0415

        name = service or self.task_service
        if name not in self._tasks:
            try:
                self._tasks[name] = running_task(self.target, self.stack.spec.name, name)
            except KbinfraError as error:
                raise CheckFailedError(error.what) from None
        return self._tasks[name]

    def address(self, port: int | None = None) -> tuple[str, int]:
        """A local ``(host, port)`` reaching the container port behind host port ``port``
        (default: the service's) of a running task, through its node's SSH connection."""
        if port is None:
            port = self.settings.port
            if port is None:
                raise CheckFailedError(f"{self.service.name} has no port: nothing to connect to")
        if port not in self._addresses:
            owner, container_port = container_port_of(
                self.stack.containers, port, self.service.name
            )
            reached = self.task_service if owner == self.service.name else owner
            task = self.task(reached)
            tunnel = self.target.node_target(task.node).tunnel(container_port, task.address)
            self._addresses[port] = self._exits.enter_context(tunnel)
        return self._addresses[port]

    def docker(self) -> DockerClient:
        """The engine of the node that runs the task (the manager's has no container)."""
        return self.target.node_client(self.task().node)

    def container_name(self) -> str:
        """How messages name the container: a task has no container name of kbinfra's."""
        task = self.task()
        return f"{task.service} task {task.container_id[:12]} on {task.node}"

    def container(self) -> Container | None:
        import docker.errors  # noqa: PLC0415

        try:
            return self.docker().containers.get(self.task().container_id)
        except docker.errors.NotFound:
            return None

    def replica(self) -> SwarmProbeContext | None:
        """The service's streaming replica's task, when its folder builds one for the stack."""
        if self.service.replica_container(self.ctx) is None:
            return None
        replica = SwarmProbeContext(
            self.stack,
            self.service,
            self.target,
            progress=self._progress,
            task_service=f"{self.service.name}-replica",
        )
        self._exits.callback(replica.close)
        return replica


__all__ = ["SwarmProbeContext", "container_port_of"]
