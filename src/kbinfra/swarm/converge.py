"""Wait until a stack's services run as asked, and say per task what runs where.

:func:`stack_status` reads the manager once (nodes, the stack's services, their tasks);
:func:`wait_converged` polls it until every service has its replicas running and healthy in
the spec kbinfra sent, Swarm rolled an update back (a failure carrying the task's error,
e.g. "dockerexec: unhealthy container"), or the timeout passes (a failure naming what is
still not running).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.progress import SILENT, Progress
from kbinfra.swarm.apply import stack_filter
from kbinfra.swarm.cluster import swarm_node_names
from kbinfra.swarm.state import NodeFacts, ServiceState, service_state

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.targets.swarm import SwarmTarget

POLL_S = 1.0
DEFAULT_TIMEOUT_S = 300.0
HEALTH_OUTPUT_CHARS = 200
MAX_TASKS_LOOKED_AT = 3


@dataclass(frozen=True)
class StackStatus:
    nodes: tuple[NodeFacts, ...]
    services: tuple[ServiceState, ...]

    @property
    def degraded(self) -> list[ServiceState]:
        return [s for s in self.services if s.degraded]

    def service(self, name: str) -> ServiceState:
        return next(s for s in self.services if name in (s.name, s.service))

    def as_json(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "name": n.name,
                    "hostname": n.hostname,
                    "role": n.role,
                    "state": n.state,
                    "availability": n.availability,
                }
                for n in self.nodes
            ],
            "services": [s.as_json() for s in self.services],
            "degraded": [s.name for s in self.degraded],
        }


def read_nodes(client: DockerClient, target: SwarmTarget) -> tuple[NodeFacts, ...]:
    api: Any = client.api
    names = swarm_node_names(client, target)
    return tuple(
        NodeFacts.from_attrs(attrs, names.get(str(attrs["ID"]), str(attrs["ID"])[:12]))
        for attrs in api.nodes()
    )


def stack_status(
    client: DockerClient,
    target: SwarmTarget,
    stack: str,
    intended: Mapping[str, str] | None = None,
) -> StackStatus:
    """Each service of ``stack`` with its tasks, the node each runs on and its health."""
    api: Any = client.api
    nodes = read_nodes(client, target)
    services = []
    for service in sorted(
        api.services(filters=stack_filter(stack), status=False), key=lambda s: s["Spec"]["Name"]
    ):
        name = str(service["Spec"]["Name"])
        tasks = api.tasks(filters={"service": service["ID"]})
        services.append(
            service_state(service, tasks, nodes, intended_hash=(intended or {}).get(name))
        )
    return StackStatus(nodes, tuple(services))


def _finished(state: ServiceState) -> bool:
    if state.paused:
        return True
    if state.rolled_back:
        return state.update_state != "rollback_started"
    return state.converged


def _summary(state: ServiceState) -> str:
    tasks = ", ".join(
        f"{t.node or '?'} {t.state}" + (f" ({t.error})" if t.error else "")
        for t in state.tasks
        if t.desired == "running"
    )
    return f"{state.name}: {state.running}/{state.expected} running [{tasks}]"


def _unhealthy(target: SwarmTarget, state: ServiceState, message: str) -> str:
    """Why the failed task's container was unhealthy: the last output of its health check,
    read from the node that ran it (Swarm's task error is empty when the container exited
    0 on the stop signal it was sent for being unhealthy)."""
    import docker.errors  # noqa: PLC0415

    for task in state.failed_tasks(message)[:MAX_TASKS_LOOKED_AT]:
        try:
            api: Any = target.node_client(task.node).api
            health = (api.inspect_container(task.container_id).get("State") or {}).get("Health")
        except (docker.errors.DockerException, KbinfraError):
            continue
        if health and health.get("Status") == "unhealthy":
            log = health.get("Log") or [{}]
            output = " ".join(str(log[-1].get("Output") or "").split())[:HEALTH_OUTPUT_CHARS]
            return f"unhealthy container on {task.node}: {output or 'its health check failed'}"
    return ""


def wait_converged(
    client: DockerClient,
    target: SwarmTarget,
    stack: str,
    intended: Mapping[str, str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Progress = SILENT,
) -> StackStatus:
    """Poll until every service in ``intended`` runs its spec, healthy; the final status.

    Raises :class:`ApplyFailedError` (exit 1) when Swarm rolled an update back or paused it
    (with the failed task's error), or when the timeout passes.
    """
    deadline = time.monotonic() + timeout_s
    reported: dict[str, str] = {}
    why: dict[str, str] = {}  # service -> Swarm's message when it began rolling back
    while True:
        status = stack_status(client, target, stack, intended)
        states = [s for s in status.services if s.name in intended]
        for state in states:
            line = _summary(state)
            if reported.get(state.name) != line:
                reported[state.name] = line
                progress.note(state.service or state.name, line)
        for state in states:
            if state.update_state in ("rollback_started", "paused") and state.update_message:
                why[state.name] = state.update_message
        missing = set(intended) - {s.name for s in states}
        failed = [s for s in states if (s.rolled_back or s.paused) and _finished(s)]
        if failed:
            first = failed[0]
            verb = "rolled back by Swarm" if first.rolled_back else "paused by Swarm"
            message = why.get(first.name, "")
            # Swarm's task error ("dockerexec: unhealthy container") and the health check's
            # own output (the cause) when it has both: which one a task carries is a race
            found = (first.failure(), _unhealthy(target, first, message))
            reason = "; ".join(part for part in found if part) or message
            raise ApplyFailedError(
                f"the update of {first.name} was {verb}: {reason or 'Swarm gave no reason'}",
                where=f"service {first.service or first.name}",
                fix="see `kbinfra status` for its tasks; the previous version still runs"
                if first.rolled_back
                else "fix the service and apply again",
            )
        if not missing and all(_finished(s) for s in states):
            return status
        if time.monotonic() >= deadline:
            late = [s for s in states if not _finished(s)]
            detail = "; ".join(_summary(s) for s in late) or f"missing {', '.join(sorted(missing))}"
            raise ApplyFailedError(
                f"not converged after {timeout_s:.0f} s: {detail}",
                fix="see `kbinfra status`; a task that stays pending needs a node that its "
                "placement allows, with the image and room for its limits",
            )
        time.sleep(POLL_S)
