"""Back up a Swarm stack: each store on the node that holds it, through its own handler.

A stateful service on a Swarm is pinned to one node (its volume is node-local), so its
backup is taken there: the manager says which node runs the service's task and which
container it is; that node's own engine (over its SSH connection) carries the exec and
archive streams the handlers use, and ``reach(port)`` is a tunnel over the same connection
to the container's ``docker_gwbridge`` address (:mod:`kbinfra.swarm.reach`). The handlers
cannot tell a task from a one-host container: the manifest, its signature and the
artifacts are those of a one-host backup, with ``target: swarm://…``.

A restore goes through the same handlers; where one stops its service's container to
replace the data on its volume (Redis), the service is scaled to no task instead and back
after (:meth:`SwarmTaskInstance.stopped`).

Backup and restore hold the stack's Swarm lock (:mod:`kbinfra.swarm.lock`), as one on one host
holds the engine's, so no apply rolls a store while it is dumped or restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kbinfra.backup.handler import BackupError, Instance
from kbinfra.errors import KbinfraError
from kbinfra.names import swarm_service_name
from kbinfra.targets.swarm import SwarmTarget

if TYPE_CHECKING:
    from kbinfra.stack import Stack
    from kbinfra.swarm.converge import StackStatus
    from kbinfra.swarm.reach import TaskAddress
    from kbinfra.targets.ssh import SSHTarget

POLL_S = 1.0
#: How long a scaled service has to stop its task, or to start a new one.
SCALE_TIMEOUT_S = 120.0


@dataclass
class SwarmTaskInstance(Instance):
    """A data service's running task: its container on ``node``, reached through it."""

    node: str = ""
    #: The container's address on its node's docker_gwbridge (the node's host routes to it).
    gateway_address: str = ""
    node_target: SSHTarget | None = None

    @contextmanager
    def _tunnel(self, port: int) -> Iterator[tuple[str, int]]:
        assert self.node_target is not None
        with self.node_target.tunnel(port, self.gateway_address) as local:
            yield local

    def reach(self, port: int) -> AbstractContextManager[tuple[str, int]]:
        """A local address of the task's container ``port``, over its node's SSH."""
        return self._tunnel(port)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The service scaled to no task for the block, then back to its count.

        Stopping a task's container would not do: Swarm would start a new task on the same
        volume while the restore writes it. Scaled to 0, Swarm runs nothing on the volume;
        scaled back, its new task (pinned: on the same node, the same volume) is the one
        this instance then reaches, for the health wait and the content check.
        """
        from kbinfra.swarm.reach import running_task  # noqa: PLC0415

        target = self.target
        assert isinstance(target, SwarmTarget)
        name = swarm_service_name(self.stack.spec.name, self.service)
        replicas = _scale(target, name, 0)
        _poll(
            lambda: True if _stopped(self) else None,
            late=f"the task of {self.service} on {self.node} still runs after its service "
            "was scaled to 0",
            where=self.target.name,
        )
        try:
            yield
        finally:
            _scale(target, name, replicas)
            old = self.container_id

            def new_task() -> TaskAddress | None:
                try:
                    task = running_task(target, self.stack.spec.name, name, self.node)
                except KbinfraError:
                    return None  # not scheduled yet
                return task if task.container_id != old else None

            task = _poll(
                new_task,
                late=f"{name} has no new task on {self.node} after it was scaled back to "
                f"{replicas}",
                where=self.target.name,
            )
            self.container_id, self.gateway_address = task.container_id, task.address


T = TypeVar("T")


def _poll(found: Callable[[], T | None], *, late: str, where: str) -> T:
    """``found()`` once it is not None, asked every POLL_S; a BackupError after the timeout."""
    deadline = time.monotonic() + SCALE_TIMEOUT_S
    while True:
        value = found()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise BackupError(
                f"{late} ({SCALE_TIMEOUT_S:.0f}s)",
                where=where,
                fix="see `kbinfra status`; `kbinfra apply` scales it back",
            )
        time.sleep(POLL_S)


def _scale(target: SwarmTarget, name: str, replicas: int) -> int:
    """Set Swarm service ``name``'s task count, its spec otherwise as it is; the count it had."""
    api: Any = target.docker_client().api
    current = api.inspect_service(name)
    spec = current["Spec"]
    had = int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))
    api.update_service(
        current["ID"],
        current["Version"]["Index"],
        task_template=spec["TaskTemplate"],
        name=spec["Name"],
        labels=spec.get("Labels"),
        mode={"Replicated": {"Replicas": replicas}},
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"),
        fetch_current_spec=False,
    )
    return had


def _stopped(instance: SwarmTaskInstance) -> bool:
    """Whether the task's container no longer runs (Swarm stops it, then removes it)."""
    import docker.errors  # noqa: PLC0415

    try:
        state = instance.engine.inspect(instance.container_id)["State"]
    except docker.errors.NotFound:
        return True
    return not state.get("Running")


def swarm_instances(
    stack: Stack, target: SwarmTarget, services: Iterable[str]
) -> dict[str, Instance]:
    """Each data service's running task (the primary's, never its replica's), with the
    engine of the node that runs it. The stack's tasks are read from the manager once."""
    from kbinfra.plan import desired_services  # noqa: PLC0415
    from kbinfra.swarm.converge import stack_status  # noqa: PLC0415
    from kbinfra.swarm.reach import running_task  # noqa: PLC0415
    from kbinfra.targets.engine import Engine  # noqa: PLC0415

    services = list(services)
    desired = desired_services(stack, stack.rendered)
    refuse_peers(stack, services)
    instances: dict[str, Instance] = {}
    status: StackStatus | None = None
    for service in services:
        try:
            if status is None:
                status = stack_status(target.docker_client(), target, stack.spec.name)
            task = running_task(target, stack.spec.name, service, status=status)
        except KbinfraError as error:
            raise BackupError(
                f"{service} cannot be backed up: {error.what}",
                where=target.name,
                fix="see `kbinfra status`; run `kbinfra apply` so its task runs",
            ) from None
        instances[service] = SwarmTaskInstance(
            service,
            stack,
            target,
            Engine(target.node_client(task.node), stack.spec.name),
            task.container_id,
            desired[service],
            node=task.node,
            gateway_address=task.address,
            node_target=target.node_target(task.node),
        )
    return instances


def volume_node(target: SwarmTarget, volume: str, recorded: str | None = None) -> str:
    """The node that holds named volume ``volume`` (``backup.volumes``), asked of every node:
    Swarm volumes are node-local and the stack file does not say where one is.

    A volume that several nodes hold is refused (which copy is the data is the user's
    call); one that no node holds (a restore after ``destroy --delete-data``) is the node
    ``recorded`` in the backup, when it is a node of the node file.
    """
    import docker.errors  # noqa: PLC0415

    from kbinfra.targets.ssh import HostKeyError  # noqa: PLC0415

    holders: list[str] = []
    silent: list[str] = []
    for node in target.nodes:
        try:
            target.node_client(node.name).api.inspect_volume(volume)
        except docker.errors.NotFound:
            continue
        except HostKeyError:
            raise
        except (docker.errors.DockerException, OSError, KbinfraError):
            silent.append(node.name)
            target.forget(node.name)
            continue
        holders.append(node.name)
    if len(holders) == 1:
        return holders[0]
    if holders:
        raise BackupError(
            f"volume {volume} exists on {len(holders)} nodes ({', '.join(holders)}): a volume "
            "of backup.volumes on a Swarm must be on one node",
            where="backup.volumes",
            fix="remove the copies that are not the data (`docker volume rm` on those nodes), "
            "or take the volume out of backup.volumes",
        )
    known = {node.name for node in target.nodes}
    if recorded is not None and recorded in known and not silent:
        return recorded
    down = f"; {', '.join(silent)} did not answer" if silent else ""
    raise BackupError(
        f"volume {volume} exists on no node of the Swarm{down}",
        where="backup.volumes",
        fix="create it on the node that should hold it, or take it out of backup.volumes"
        if not silent
        else "start the node that holds it (`kbinfra status`), then try again",
    )


def store_nodes(stack: Stack, services: Iterable[str]) -> dict[str, str]:
    """The node each store is pinned to by the stack file (its volume is there): where the
    restore drill runs its throwaway container. A store of Qdrant peers: the first peer's."""
    from kbinfra.swarm.placement import stack_placements  # noqa: PLC0415

    placements = stack_placements(stack)
    return {
        service: (placements[service].peers or placements[service].nodes)[0] for service in services
    }


def refuse_peers(stack: Stack, services: Iterable[str]) -> None:
    """A store that runs as peers (Qdrant's distributed mode) is refused: each peer's
    snapshot holds only the shards on that peer, and restoring them is not built; one task's
    would look like a whole backup and not be one."""
    from kbinfra.swarm.placement import stack_placements  # noqa: PLC0415

    placements = stack_placements(stack)
    for service in services:
        peers = placements[service].peers
        if peers:
            raise BackupError(
                f"{service} runs as {len(peers)} peers ({', '.join(peers)}): a backup of each "
                "peer's shards is not built, and one peer's snapshot is not the whole collection",
                where=f"swarm.services.{service}.peers",
                fix=f"disable {service} for the backup, or take Qdrant's own snapshots of "
                "each peer (docs/swarm.md, Qdrant)",
            )
