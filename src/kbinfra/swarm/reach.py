"""Reach a port of an internal service on a Swarm from this machine, without publishing it.

Neither this machine nor a manager's host can route to overlay addresses. But every task
container on an overlay network also has an address on its own node's ``docker_gwbridge``,
which that node's host reaches. So: find a running task of the service (the manager knows
its node and container), ask that node's engine for the container's ``docker_gwbridge``
address, and forward a local port over *that node's* SSH connection (strict host keys) to
it — a real TCP connection, as for a single SSH host's loopback-published ports.

Why this and not the alternatives: ``exec`` into the container would need each service's
client tools in its image and passes credentials on a command line, and gives no socket for
psycopg, redis-py, httpx or a backup stream; a forwarder container on an attachable overlay
would need one more image put on every node and something left running. The gateway bridge
is node-local: nothing becomes reachable from outside the cluster. A service must listen on
all its container's interfaces (they do: 0.0.0.0 inside the container) for this to work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.swarm.converge import StackStatus, stack_status

if TYPE_CHECKING:
    from kbinfra.swarm.state import ServiceState
    from kbinfra.targets.swarm import SwarmTarget

GATEWAY_BRIDGE = "docker_gwbridge"


@dataclass(frozen=True)
class TaskAddress:
    """Where one running task of a service is: its node, container and gateway address."""

    service: str
    node: str
    container_id: str
    address: str


def running_task(
    target: SwarmTarget,
    stack: str,
    service: str,
    node: str | None = None,
    *,
    status: StackStatus | None = None,
) -> TaskAddress:
    """A running task of ``service`` (its Swarm or kbinfra name), on ``node`` if given.
    ``status``: the stack's, when already read (one read serves several services)."""
    if status is None:
        status = stack_status(target.docker_client(), target, stack)
    try:
        state = status.service(service)
    except StopIteration:
        raise KbinfraError(f"stack {stack} has no service {service}") from None
    for task in state.tasks:
        if not (task.running and task.container_id):
            continue  # a task of a node that is down is skipped: its engine cannot answer
        if node is not None and task.node != node:
            continue
        api: Any = target.node_client(task.node).api
        containers = api.inspect_network(GATEWAY_BRIDGE).get("Containers") or {}
        entry = containers.get(task.container_id)
        if entry is None:
            continue
        address = str(entry.get("IPv4Address") or "").split("/")[0]
        if address:
            return TaskAddress(state.name, task.node, task.container_id, address)
    where = f" on {node}" if node else ""
    raise KbinfraError(
        f"no running task of {state.name}{where} to connect to ({where_tasks_are(state)})",
        fix="see `kbinfra status`: the service has no healthy task yet",
    )


def where_tasks_are(state: ServiceState) -> str:
    """Where the tasks Swarm wants running are (``pending, no node yet``), and the nodes
    that are down with its task: ``pending, no node yet; node3 down``."""
    wanted = [
        f"{task.state} on {task.node}" if task.node else f"{task.state}, no node yet"
        for task in state.tasks
        if task.desired == "running" and task.node_ready
    ]
    parts = [*wanted, *(f"{node} down" for node in state.lost_on)]
    return "; ".join(parts) or "no task is scheduled"


@contextmanager
def task_port(
    target: SwarmTarget, stack: str, service: str, port: int, *, node: str | None = None
) -> Iterator[tuple[str, int]]:
    """A ``(host, port)`` on this machine connected to ``port`` of a running task of
    ``service``, through the SSH connection of the node that runs it."""
    task = running_task(target, stack, service, node)
    with target.node_target(task.node).tunnel(port, task.address) as local:
        yield local
