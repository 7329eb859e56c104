"""The stack-wide checks of ``kbinfra check`` on a Swarm, in place of one host's.

One host's checks look at loopback-published ports and the containers of one engine. On a
Swarm nothing is on loopback: the Swarm equivalents are

- every service's tasks run, as many as asked (a row per service that fails naming the
  node its task is, or was, on: the degraded service after a node is lost);
- only what a service publishes beyond loopback on one host (nginx's ports) is published,
  in host mode, and nothing else is (no routing mesh, no internal port);
- every service is on the stack's overlay network and no other;
- no secret value is in any service's spec (its environment, its labels);
- every running task's container, on the node that runs it, is locked down as on one host.
  ``no-new-privileges`` cannot be set per service on a Swarm (docs/security.md): it is set
  daemon-wide, and proven from the task's main process (``NoNewPrivs`` in
  ``/proc/1/status``), not from ``docker inspect``, which does not show the daemon's.

The decisions are pure functions of the Engine's JSON; :func:`checks` gathers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import CheckRow, Checks, require
from kbinfra.probing.stack_checks import (
    STACK,
    AllowedHardening,
    allowed_public,
    hardening_problems,
    local_file_checks,
    secret_age_checks,
)

if TYPE_CHECKING:
    from kbinfra.stack import Stack
    from kbinfra.swarm.converge import StackStatus
    from kbinfra.swarm.state import ServiceState
    from kbinfra.targets.swarm import SwarmTarget

NO_NEW_PRIVILEGES = "no-new-privileges:true"
TASK_ROW = "swarm-tasks-running"


# --------------------------------------------------------------------------- tasks
def tasks_value(state: ServiceState) -> str:
    """``1/1 on node2``, or what is missing and where: ``0/1: node3 running, node down``."""
    from kbinfra.swarm.reach import where_tasks_are  # noqa: PLC0415

    running = sorted(t.node for t in state.tasks if t.running)
    if not state.degraded:
        return f"{state.running}/{state.expected} on {', '.join(running) or '-'}"
    return f"{state.name} {state.running}/{state.expected} running: {where_tasks_are(state)}"


def task_rows(status: StackStatus, wanted: Sequence[str]) -> list[CheckRow]:
    """One row per Swarm service of the stack (named by its kbinfra service); a service of
    the stack file that is not on the Swarm at all fails too."""
    rows: list[CheckRow] = []
    present = {s.name for s in status.services}
    for state in status.services:
        checks = Checks(state.service or state.name)

        def judge(state: ServiceState = state) -> str:
            value = tasks_value(state)
            require(not state.degraded, value)
            return value

        checks.run(
            TASK_ROW,
            "reachable",
            judge,
            fix="see `kbinfra status`: start the node's engine again, then `kbinfra apply`",
        )
        rows += checks.rows
    for name in wanted:
        if name not in present:
            rows.append(
                CheckRow(
                    STACK,
                    TASK_ROW,
                    "reachable",
                    False,
                    f"{name} is not on the Swarm",
                    "run `kbinfra apply`",
                )
            )
    return rows


# --------------------------------------------------------------------------- ports, networks
def published_problems(
    services: Iterable[Mapping[str, Any]], allowed: set[tuple[str, int, int]]
) -> tuple[list[str], list[str]]:
    """(problems, what is published on purpose) from the manager's service list."""
    from kbinfra.swarm.service_spec import LABEL_SERVICE  # noqa: PLC0415

    problems: list[str] = []
    public: list[str] = []
    for service in services:
        spec = service.get("Spec") or {}
        name = str(spec.get("Name") or "?")
        own = str((spec.get("Labels") or {}).get(LABEL_SERVICE) or "")
        for port in (spec.get("EndpointSpec") or {}).get("Ports") or ():
            published = int(port.get("PublishedPort") or 0)
            target = int(port.get("TargetPort") or 0)
            mode = str(port.get("PublishMode") or "ingress")
            described = f"{name} {published}->{target} ({mode})"
            if (own, published, target) not in allowed:
                problems.append(f"{described} is published")
            elif mode != "host":
                problems.append(f"{described}: not in host mode (the routing mesh)")
            else:
                public.append(described)
    return problems, public


def check_published(
    services: Sequence[Mapping[str, Any]], allowed: set[tuple[str, int, int]]
) -> str:
    problems, public = published_problems(services, allowed)
    require(not problems, "; ".join(problems))
    return f"{len(services)} services; published on purpose: {', '.join(public) or 'nothing'}"


def network_problems(services: Iterable[Mapping[str, Any]], network_ids: set[str]) -> list[str]:
    """Services attached to anything but the stack's overlay network (name or ID)."""
    problems = []
    for service in services:
        spec = service.get("Spec") or {}
        attached = {
            str(n.get("Target") or "")
            for n in (spec.get("TaskTemplate") or {}).get("Networks") or ()
        }
        if not attached:
            problems.append(f"{spec.get('Name')}: on no network")
        elif attached - network_ids:
            problems.append(
                f"{spec.get('Name')}: also on {', '.join(sorted(attached - network_ids))}"
            )
    return problems


def check_networks(
    services: Sequence[Mapping[str, Any]], network: Mapping[str, Any] | None, name: str
) -> str:
    require(network is not None, f"network {name} does not exist")
    assert network is not None
    require(network.get("Driver") == "overlay", f"{name} is a {network.get('Driver')} network")
    problems = network_problems(services, {name, str(network.get("Id") or "")})
    require(not problems, "; ".join(problems))
    return f"{len(services)} services on {name} (overlay) only"


def check_no_secret_in_specs(services: Sequence[Mapping[str, Any]], values: Iterable[str]) -> str:
    """No secret value in any service's spec (Docker secrets carry them, as files)."""
    secrets = [value for value in values if len(value) >= 8]
    leaking = sorted(
        str((s.get("Spec") or {}).get("Name") or "?")
        for s in services
        if any(value in str(s.get("Spec")) for value in secrets)
    )
    require(not leaking, f"a secret value is in the spec of {', '.join(leaking)}")
    return f"{len(services)} service specs hold no secret value; secrets are Docker secrets"


# --------------------------------------------------------------------------- hardening
def with_daemon_no_new_privileges(host_config: Mapping[str, Any], proc_status: str) -> Any:
    """``HostConfig`` as the task runs it: a main process with ``NoNewPrivs: 1`` runs with
    no-new-privileges (set daemon-wide, which ``docker inspect`` does not show)."""
    flags = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in proc_status.splitlines())
    }
    if flags.get("NoNewPrivs") != "1":
        return host_config
    return {
        **host_config,
        "SecurityOpt": [*(host_config.get("SecurityOpt") or ()), NO_NEW_PRIVILEGES],
    }


def task_hardening(stack: Stack, target: SwarmTarget, status: StackStatus) -> list[str]:
    """Every running task's container, inspected on its node: what it lacks."""
    from kbinfra.swarm.service_spec import LABEL_SERVICE  # noqa: PLC0415

    allowed = {name: AllowedHardening.of(spec) for name, spec in stack.containers.items()}
    for name in stack.services:
        replica = stack.services[name].replica_container(stack.contexts[name])
        if replica is not None:
            allowed[replica.service] = AllowedHardening.of(replica)
    problems: list[str] = []
    seen = 0
    for state in status.services:
        for task in state.tasks:
            if not (task.running and task.container_id):
                continue
            api: Any = target.node_client(task.node).api
            info = api.inspect_container(task.container_id)
            run = api.exec_create(task.container_id, ["cat", "/proc/1/status"])
            proc_status = api.exec_start(run["Id"]).decode("utf-8", "replace")
            config = info.get("Config") or {}
            service = str((config.get("Labels") or {}).get(LABEL_SERVICE) or state.service)
            seen += 1
            problems += hardening_problems(
                f"{state.name} on {task.node}",
                with_daemon_no_new_privileges(info.get("HostConfig") or {}, proc_status),
                allowed.get(service, AllowedHardening()),
                str(config.get("User") or ""),
            )
    if seen == 0:
        problems.append("no running task to inspect")
    return problems


def check_tasks_hardened(stack: Stack, target: SwarmTarget, status: StackStatus) -> str:
    problems = task_hardening(stack, target, status)
    require(not problems, "; ".join(problems))
    running = sum(1 for s in status.services for t in s.tasks if t.running)
    return f"{running} task containers locked down (no-new-privileges daemon-wide)"


# --------------------------------------------------------------------------- the checks
def checks(stack: Stack, target: SwarmTarget) -> list[CheckRow]:
    import docker.errors  # noqa: PLC0415

    from kbinfra.names import swarm_network_name  # noqa: PLC0415
    from kbinfra.swarm.apply import stack_filter  # noqa: PLC0415
    from kbinfra.swarm.converge import stack_status  # noqa: PLC0415
    from kbinfra.swarm.run import desired_swarm_stack  # noqa: PLC0415

    name = stack.spec.name
    api: Any = target.docker_client().api
    status = stack_status(target.docker_client(), target, name)
    wanted = [s.name for s in desired_swarm_stack(stack).services]
    rows = local_file_checks(stack)
    rows += task_rows(status, wanted)
    services = api.services(filters=stack_filter(name))
    checks = Checks(STACK)
    checks.run(
        "only-nginx-published-host-mode",
        "locked-down",
        lambda: check_published(services, allowed_public(stack)),
        fix="run `kbinfra apply` (it publishes nothing but nginx, in host mode); remove any "
        "port added by hand (docker service update --publish-rm)",
    )
    network_name = swarm_network_name(name)
    try:
        network = api.inspect_network(network_name)
    except docker.errors.NotFound:
        network = None
    checks.run(
        "overlay-network-only",
        "locked-down",
        lambda: check_networks(services, network, network_name),
        fix="run `kbinfra apply`; detach other networks (docker service update --network-rm)",
    )
    checks.run(
        "no-secret-in-service-specs",
        "locked-down",
        lambda: check_no_secret_in_specs(services, stack.secrets.values()),
        fix="run `kbinfra apply` (secrets reach tasks as Docker secrets only)",
    )
    checks.run(
        "tasks-hardened",
        "locked-down",
        lambda: check_tasks_hardened(stack, target, status),
        fix="start each node's dockerd with --no-new-privileges (docs/security.md) and run "
        "`kbinfra apply`",
    )
    return rows + checks.rows + secret_age_checks(stack)


__all__ = ["checks"]
