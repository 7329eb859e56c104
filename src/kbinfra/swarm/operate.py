"""``kbinfra logs`` and ``kbinfra exec`` on a Swarm stack: which task containers, on which
node, reached through which engine.

A task's container lives on its node, whose engine only that node's SSH connection reaches
(the manager knows the tasks but not their logs' lines, and cannot exec): every container is
read or entered through its own node's engine, never the manager's. The lines and the exec
stream are then handled exactly as on one host (:mod:`kbinfra.targets.streams`), with the
stack's secrets redacted by the same console.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError

if TYPE_CHECKING:
    from docker import APIClient

    from kbinfra.stack import Stack
    from kbinfra.targets.swarm import SwarmTarget


@dataclass
class TaskLogSources:
    """Label (``<service>@<node>``) → the task's container, and the engine of its node."""

    containers: dict[str, str] = field(default_factory=dict)
    apis: dict[str, APIClient] = field(default_factory=dict)
    #: Swarm services of the named ones with no task to read, each with why.
    missing: list[str] = field(default_factory=list)


def task_label(stack: str, swarm_service: str, node: str) -> str:
    """``postgres-replica@node1``: the service without the stack's prefix, and its node."""
    return f"{swarm_service.removeprefix(f'{stack}_')}@{node}"


def task_log_sources(stack: Stack, target: SwarmTarget, services: Sequence[str]) -> TaskLogSources:
    """Every task Swarm wants running of ``services`` (each with its streaming replica or
    its peers), whose node answers: what ``kbinfra logs`` reads, node by node."""
    from kbinfra.swarm.converge import stack_status  # noqa: PLC0415
    from kbinfra.swarm.reach import where_tasks_are  # noqa: PLC0415
    from kbinfra.swarm.run import desired_swarm_stack  # noqa: PLC0415

    name = stack.spec.name
    desired = desired_swarm_stack(stack, only=services)
    status = stack_status(target.docker_client(), target, name)
    by_name = {state.name: state for state in status.services}
    sources = TaskLogSources()
    for wanted in desired.services:
        state = by_name.get(wanted.name)
        if state is None:
            sources.missing.append(f"{wanted.name} (not on the Swarm)")
            continue
        tasks = [
            task
            for task in state.tasks
            if task.desired == "running" and task.container_id and task.node_ready
        ]
        if not tasks:
            sources.missing.append(f"{wanted.name} ({where_tasks_are(state)})")
        for task in sorted(tasks, key=lambda t: (t.node, t.slot or 0)):
            label = task_label(name, wanted.name, task.node)
            if label in sources.containers:  # two tasks of one service on one node
                label = f"{label}.{task.slot or task.task_id[:6]}"
            sources.containers[label] = task.container_id
            sources.apis[label] = target.node_client(task.node).api
    return sources


def task_for_exec(
    stack: Stack, target: SwarmTarget, service: str, node: str | None = None
) -> tuple[APIClient, str, str]:
    """A running task of ``service`` (on ``node`` if given): its node's engine, its
    container's id, and the node's name."""
    from kbinfra.names import swarm_service_name  # noqa: PLC0415
    from kbinfra.swarm.reach import running_task  # noqa: PLC0415

    name = swarm_service_name(stack.spec.name, service)
    try:
        task = running_task(target, stack.spec.name, name, node)
    except KbinfraError as error:
        raise KbinfraError(
            f"{service} has no running task to exec into: {error.what}",
            where=target.name,
            fix=error.fix or "see `kbinfra status`",
        ) from None
    return target.node_client(task.node).api, task.container_id, task.node
