"""What a stack's services are doing on a Swarm, judged from the manager's facts alone.

Pure: nodes, services and tasks come in as the Engine's JSON; out come per-task reports and,
per service, whether it runs as asked (``converged``), runs below its count (``degraded``:
Swarm's own ``service ls`` shows 3/3 while a task is pending after a node is lost), or had
its update rolled back by Swarm. A task counts as running only in its own current spec (the
spec-hash label on its container) with the state ``running``: for a service with a health
check Swarm keeps a task ``starting`` until its container's first healthy check, and fails
it ("dockerexec: unhealthy container") when the container turns unhealthy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kbinfra.swarm.service_spec import LABEL_SERVICE, LABEL_SPEC_HASH

ROLLED_BACK = ("rollback_started", "rollback_completed", "rollback_paused")


@dataclass(frozen=True)
class NodeFacts:
    """One Swarm node, as the manager sees it."""

    id: str
    name: str  # node file name
    hostname: str
    role: str
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], name: str) -> NodeFacts:
        spec = attrs.get("Spec") or {}
        description = attrs.get("Description") or {}
        engine = description.get("Engine") or {}
        return cls(
            id=str(attrs["ID"]),
            name=name,
            hostname=str(description.get("Hostname") or ""),
            role=str(spec.get("Role") or ""),
            state=str((attrs.get("Status") or {}).get("State") or "unknown"),
            availability=str(spec.get("Availability") or "active"),
            labels=dict(spec.get("Labels") or {}),
            engine_labels=dict(engine.get("Labels") or {}),
        )

    @property
    def schedulable(self) -> bool:
        return self.state == "ready" and self.availability == "active"


_CONSTRAINT = re.compile(r"^\s*(?P<key>[\w.\-/]+)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")


def _attribute(node: NodeFacts, key: str) -> str | None:
    if key in ("node.hostname",):
        return node.hostname
    if key == "node.id":
        return node.id
    if key == "node.role":
        return node.role
    for prefix, labels in (("node.labels.", node.labels), ("engine.labels.", node.engine_labels)):
        if key.startswith(prefix):
            return labels.get(key[len(prefix) :], "")
    return None


def satisfies(node: NodeFacts, constraints: Sequence[str]) -> bool:
    """Whether Swarm may place a task with ``constraints`` on ``node``.

    An attribute kbinfra does not model (``node.platform.*``) counts as satisfied: an image
    is then put on a node that may not run it, never left off one that will.
    """
    for constraint in constraints:
        match = _CONSTRAINT.match(constraint)
        if match is None:
            continue
        actual = _attribute(node, match["key"])
        if actual is None:
            continue
        equal = actual == match["value"]
        if equal != (match["op"] == "=="):
            return False
    return True


def eligible_nodes(nodes: Sequence[NodeFacts], constraints: Sequence[str]) -> list[NodeFacts]:
    return [node for node in nodes if satisfies(node, constraints)]


@dataclass(frozen=True)
class TaskReport:
    """One task: where it runs, its state, and Swarm's error when it has one."""

    service: str
    task_id: str
    slot: int | None
    node: str
    state: str
    desired: str
    current: bool  # runs the service's current spec
    error: str = ""
    container_id: str = ""
    node_ready: bool = True  # the manager hears from the task's node (else: last known state)

    @property
    def running(self) -> bool:
        """Running, in its current spec, on a node that is up: what counts for a service."""
        return (
            self.current
            and self.desired == "running"
            and self.state == "running"
            and (self.node_ready)
        )

    @property
    def health(self) -> str:
        return health_of(self.state) if self.node_ready else "unknown: its node is down"

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task_id[:12],
            "slot": self.slot,
            "node": self.node,
            "state": self.state,
            "desired": self.desired,
            "health": self.health,
            "current": self.current,
            "error": self.error,
        }


def health_of(state: str) -> str:
    """A task's health as its state shows it (Swarm holds a checked task in ``starting``)."""
    if state == "running":
        return "healthy"
    if state in ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting"):
        return "starting"
    return "unhealthy" if state in ("failed", "rejected", "orphaned") else state


def task_report(
    task: Mapping[str, Any], service: str, spec_hash: str, nodes: Mapping[str, NodeFacts]
) -> TaskReport:
    status = task.get("Status") or {}
    container = (task.get("Spec") or {}).get("ContainerSpec") or {}
    labels = container.get("Labels") or {}
    node_id = str(task.get("NodeID") or "")
    node = nodes.get(node_id)
    return TaskReport(
        service=service,
        task_id=str(task.get("ID") or ""),
        slot=task.get("Slot"),
        node=node.name if node is not None else node_id[:12],
        state=str(status.get("State") or ""),
        desired=str(task.get("DesiredState") or ""),
        current=labels.get(LABEL_SPEC_HASH) == spec_hash,
        error=str(status.get("Err") or ""),
        container_id=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
        # A task not yet given a node waits in the scheduler, not on a lost node.
        node_ready=not node_id or (node is not None and node.state == "ready"),
    )


@dataclass(frozen=True)
class ServiceState:
    """One service of the stack: what it was asked and what runs."""

    name: str
    service: str
    expected: int
    running: int
    update_state: str
    update_message: str
    rolled_back: bool
    paused: bool
    updating: bool
    tasks: tuple[TaskReport, ...]

    @property
    def degraded(self) -> bool:
        return self.running < self.expected

    @property
    def lost_on(self) -> list[str]:
        """The nodes that are down with a task of this service last seen running there, or
        where a slot's newest placed task is: a node's agent may report its task's exit (its
        dockerd stopping) before the manager marks the node down, and a pinned slot's new
        task then waits with no node."""
        newest: dict[object, TaskReport] = {}
        for task in self.tasks:  # newest first
            if task.node:
                newest.setdefault(task.slot if task.slot is not None else task.node, task)
        lost = {t.node for t in newest.values() if not t.node_ready}
        lost |= {t.node for t in self.tasks if t.node and not t.node_ready and t.state == "running"}
        return sorted(lost)

    @property
    def converged(self) -> bool:
        stale = any(t.desired == "running" and not t.current for t in self.tasks)
        return (
            not self.updating
            and not self.rolled_back
            and not self.paused
            and not stale
            and self.running == self.expected
        )

    def failed_tasks(self, message: str = "") -> list[TaskReport]:
        """The tasks of the intended spec that ran a container and stopped (failed, or were
        stopped by Swarm when they turned unhealthy): first the one Swarm's update message
        names, then the newest."""
        stopped = [t for t in self.tasks if t.current and t.state != "running" and t.container_id]
        return sorted(stopped, key=lambda t: t.task_id not in message)

    def failure(self) -> str:
        """Swarm's error for this service's newest failed task in its intended spec, if any."""
        for task in self.tasks:
            if task.error and task.current:
                return f"{task.state} on {task.node or '?'}: {task.error}"
        return ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.service,
            "expected": self.expected,
            "running": self.running,
            "degraded": self.degraded,
            "lost_on": self.lost_on,
            "converged": self.converged,
            "update": self.update_state,
            "rolled_back": self.rolled_back,
            "tasks": [task.as_json() for task in self.tasks],
        }


def service_state(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeFacts],
    *,
    intended_hash: str | None = None,
) -> ServiceState:
    """Judge one service from its JSON and its tasks' (newest first in the report).

    ``intended_hash`` is the spec kbinfra sent; a service whose spec no longer carries it
    while its update state says rollback was rolled back by Swarm. Without it, the service's
    own current spec is the one judged (``status``).
    """
    spec = service.get("Spec") or {}
    live_hash = str((spec.get("Labels") or {}).get(LABEL_SPEC_HASH) or "")
    wanted = intended_hash or live_hash
    update_status = service.get("UpdateStatus") or {}
    update_state = str(update_status.get("State") or "")
    mode = spec.get("Mode") or {}
    by_id = {node.id: node for node in nodes}
    reports = tuple(
        task_report(task, str(spec.get("Name") or ""), wanted, by_id)
        for task in sorted(
            tasks, key=lambda t: str((t.get("Status") or {}).get("Timestamp") or ""), reverse=True
        )
    )
    running = sum(1 for t in reports if t.running)
    if "Global" in mode:
        constraints = ((spec.get("TaskTemplate") or {}).get("Placement") or {}).get(
            "Constraints"
        ) or []
        eligible = eligible_nodes(nodes, constraints)
        expected = len([n for n in eligible if n.availability == "active"])
    else:
        expected = int((mode.get("Replicated") or {}).get("Replicas") or 0)
    rolled_back = update_state in ROLLED_BACK and live_hash != wanted
    return ServiceState(
        name=str(spec.get("Name") or ""),
        service=str((spec.get("Labels") or {}).get(LABEL_SERVICE) or ""),
        expected=expected,
        running=running,
        update_state=update_state,
        update_message=str(update_status.get("Message") or ""),
        rolled_back=rolled_back,
        paused=update_state == "paused",
        updating=(update_state in ("updating", "rollback_started"))
        or (live_hash != wanted and not rolled_back),
        tasks=reports,
    )
