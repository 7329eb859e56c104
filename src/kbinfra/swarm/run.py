"""``kbinfra plan / apply / status / destroy`` on a Swarm stack: the engine side, in order.

The commands ask the target its kind once and, for a Swarm, call one function here:

- :func:`swarm_plan`: the capacity check (pure, before any connection), then every node's
  connection (strict host keys) and, read from the manager without changing anything, what
  apply would do per Swarm service (create / update, with reasons / nothing), the secrets
  and configs it would create or remove, and whether the Swarm itself must be created;
- :func:`swarm_apply`: the capacity check, the Swarm created or adopted, images put on the
  nodes that lack them, the stack applied, convergence awaited (per service: waiting,
  updating, converged or failed), then the secrets and configs no service uses removed;
- :func:`swarm_status` and :func:`swarm_destroy`: the manager's view, and the stack removed.

Nothing here prints: the command does, from the values returned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.progress import SILENT, Progress, ServiceState

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from docker import DockerClient

    from kbinfra.stack import Stack
    from kbinfra.swarm.capacity import SwarmFit
    from kbinfra.swarm.converge import StackStatus
    from kbinfra.swarm.desired import SwarmService, SwarmStack
    from kbinfra.swarm.destroy import Removal
    from kbinfra.swarm.images import ImageDistribution
    from kbinfra.swarm.state import ServiceState as SwarmServiceState
    from kbinfra.targets.swarm import SwarmTarget

SwarmAction = Literal["create", "update", "remove", "nothing"]
SwarmOutcome = Literal["created", "updated", "removed", "unchanged", "failed"]


# ---------------------------------------------------------------- capacity


def require_swarm_fit(stack: Stack, *, allow: bool, warn: Callable[[str], None]) -> SwarmFit:
    """Every node's declared capacity holds what may land on it, or one line naming each
    over-committed node and its services (exit 2) before anything is changed."""
    from kbinfra.spec.stack import load_stack  # noqa: PLC0415
    from kbinfra.swarm.capacity import swarm_fit  # noqa: PLC0415
    from kbinfra.swarm.placement import stack_placements  # noqa: PLC0415

    _, doc = load_stack(stack.dir)
    fit = swarm_fit(stack, stack_placements(stack, doc))
    if not fit.fits:
        if not allow:
            raise KbinfraError(fit.refusal(), where="swarm", fix=fit.fix())
        warn(f"{fit.refusal()}; deploying it anyway (--allow-oversized-profile)")
    return fit


# ---------------------------------------------------------------- the manager


def desired_swarm_stack(stack: Stack, only: Sequence[str] = ()) -> SwarmStack:
    """The stack on a Swarm; ``only``: just these of its services (``--only``)."""
    from kbinfra.swarm.build import swarm_stack  # noqa: PLC0415
    from kbinfra.swarm.compose import SWARM_STACK_FILE  # noqa: PLC0415

    rendered = [f for f in stack.rendered if f.path != SWARM_STACK_FILE]
    return swarm_stack(stack, rendered, only=only)


def find_manager(target: SwarmTarget) -> str | None:
    """Carry the Swarm API through the manager already in the nodes' Swarm; None when there
    is no Swarm yet. Changes nothing. A node that cannot be reached, or whose engine does
    not answer, is left out of the choice (``status`` must work with a node lost); an
    unknown or changed host key on any node is refused, never skipped."""
    import docker.errors  # noqa: PLC0415

    from kbinfra.swarm.cluster import NodeSwarmView, choose_anchor  # noqa: PLC0415
    from kbinfra.targets.ssh import HostKeyError  # noqa: PLC0415

    views = {}
    unreachable: dict[str, str] = {}
    for node in target.nodes:
        try:
            target.node_target(node.name).connect()
            info = target.node_client(node.name).info()
        except HostKeyError:
            raise
        except (docker.errors.DockerException, OSError, KbinfraError) as error:
            unreachable[node.name] = str(error)
            target.forget(node.name)
            continue
        views[node.name] = NodeSwarmView.from_info(node.name, info)
    answering = [node for node in target.nodes if node.name in views]
    if not answering:
        first = next(iter(unreachable.items()))
        raise KbinfraError(
            f"no node answers; {first[0]}: {first[1]}",
            where=target.name,
            fix="check that the nodes' sshd and dockerd run and the node file's identity",
        )
    anchor = choose_anchor(answering, views)
    if anchor.init:
        return None
    target.use_manager(anchor.name)
    return anchor.name


# ---------------------------------------------------------------- plan

#: What a difference in one part of a service's spec is called in a plan.
_SPEC_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("image", ("TaskTemplate", "ContainerSpec", "Image")),
    ("environment", ("TaskTemplate", "ContainerSpec", "Env")),
    ("command", ("TaskTemplate", "ContainerSpec", "Command")),
    ("arguments", ("TaskTemplate", "ContainerSpec", "Args")),
    ("user", ("TaskTemplate", "ContainerSpec", "User")),
    ("hostname", ("TaskTemplate", "ContainerSpec", "Hostname")),
    ("mounts", ("TaskTemplate", "ContainerSpec", "Mounts")),
    ("health check", ("TaskTemplate", "ContainerSpec", "Healthcheck")),
    ("capabilities", ("TaskTemplate", "ContainerSpec", "CapabilityAdd")),
    ("limits", ("TaskTemplate", "Resources", "Limits")),
    ("placement", ("TaskTemplate", "Placement", "Constraints")),
    ("tasks per node", ("TaskTemplate", "Placement", "MaxReplicas")),
    ("replicas", ("Mode",)),
    ("published ports", ("EndpointSpec", "Ports")),
    ("update config", ("UpdateConfig",)),
)


def _without_defaults(value: Any) -> Any:
    """``value`` without the false, zero and empty fields the Engine leaves out of the
    spec it returns (``"ReadOnly": false``, ``"Delay": 0``): what it sends back compares
    equal to what kbinfra sent."""
    if isinstance(value, Mapping):
        kept = {k: _without_defaults(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, False, 0, "", [], {})}
    if isinstance(value, list):
        return [_without_defaults(v) for v in value]
    return value


def _part(spec: Mapping[str, Any], path: Sequence[str]) -> str:
    value: Any = spec
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return json.dumps(_without_defaults(value) or None, sort_keys=True)


def _objects_by_target(spec: Mapping[str, Any], kind: str) -> dict[str, str]:
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return {
        str((item.get("File") or {}).get("Name")): str(item.get(f"{kind}Name"))
        for item in container.get(f"{kind}s") or []
    }


def update_reasons(live: Mapping[str, Any], built: Mapping[str, Any]) -> list[str]:
    """Why a service whose spec hash differs is updated: the parts of its spec that differ,
    secrets and configs by their path (a new content-versioned name), never their content."""
    from kbinfra.names import LABEL_CONFIG_HASH  # noqa: PLC0415

    reasons = [name for name, path in _SPEC_PARTS if _part(live, path) != _part(built, path)]
    for kind, what in (("Secret", "secret"), ("Config", "file")):
        had, wants = _objects_by_target(live, kind), _objects_by_target(built, kind)
        for path in sorted(set(had) | set(wants)):
            if path not in had:
                reasons.append(f"{what} {path} added")
            elif path not in wants:
                reasons.append(f"{what} {path} removed")
            elif had[path] != wants[path]:
                reasons.append(f"{what} {path} changed")
    if not reasons:
        old = (live.get("Labels") or {}).get(LABEL_CONFIG_HASH)
        new = (built.get("Labels") or {}).get(LABEL_CONFIG_HASH)
        reasons.append(
            "its config hash changed" if old != new else "kbinfra builds its spec differently"
        )
    return reasons


@dataclass(frozen=True)
class SwarmServiceAction:
    service: str  # kbinfra's name, e.g. postgres-replica
    swarm_service: str  # e.g. kb_postgres-replica
    action: SwarmAction
    reasons: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "swarm_service": self.swarm_service,
            "action": self.action,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class SwarmPlan:
    stack: str
    target: str
    create_swarm: bool
    network: str
    create_network: bool
    services: tuple[SwarmServiceAction, ...]
    secrets_to_create: tuple[str, ...]
    secrets_to_remove: tuple[str, ...]
    configs_to_create: tuple[str, ...]
    configs_to_remove: tuple[str, ...]

    @property
    def has_changes(self) -> bool:
        return bool(
            self.create_swarm
            or self.create_network
            or any(a.action != "nothing" for a in self.services)
            or self.secrets_to_create
            or self.secrets_to_remove
            or self.configs_to_create
            or self.configs_to_remove
        )

    def count(self, action: SwarmAction) -> int:
        return sum(1 for a in self.services if a.action == action)

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "target": self.target,
            "has_changes": self.has_changes,
            "create_swarm": self.create_swarm,
            "network": {"name": self.network, "create": self.create_network},
            "services": [a.as_json() for a in self.services],
            "secrets": {
                "create": list(self.secrets_to_create),
                "remove": list(self.secrets_to_remove),
            },
            "configs": {
                "create": list(self.configs_to_create),
                "remove": list(self.configs_to_remove),
            },
        }


def _labelled_names(listing: Any, stack: str) -> set[str]:
    from kbinfra.swarm.apply import stack_filter  # noqa: PLC0415

    return {str(item["Spec"]["Name"]) for item in listing(filters=stack_filter(stack)) or []}


def plan_against(
    stack: SwarmStack,
    target_name: str,
    api: Any | None,
    *,
    create_swarm: bool = False,
    partial: bool = False,
) -> SwarmPlan:
    """What apply would do to ``api``'s Swarm (None: there is no Swarm, all is new).

    ``partial``: ``stack`` is only some of the stack's services (``--only``): the others on
    the Swarm are left as they are, and so are the secrets and configs they use."""
    from kbinfra.swarm.apply import stack_filter  # noqa: PLC0415
    from kbinfra.swarm.service_spec import (  # noqa: PLC0415
        LABEL_SPEC_HASH,
        build_service_spec,
        referenced_objects,
    )

    live: dict[str, Any] = {}
    secrets: set[str] = set()
    configs: set[str] = set()
    network_exists = False
    if api is not None:
        live = {str(s["Spec"]["Name"]): s for s in api.services(filters=stack_filter(stack.stack))}
        secrets = _labelled_names(api.secrets, stack.stack)
        configs = _labelled_names(api.configs, stack.stack)
        network_exists = any(n.get("Name") == stack.network for n in api.networks([stack.network]))
    actions = []
    for service in stack.services:
        built = build_service_spec(service, stack.network)
        current = live.get(service.name)
        if current is None:
            actions.append(SwarmServiceAction(service.service, service.name, "create"))
            continue
        spec = current.get("Spec") or {}
        if (spec.get("Labels") or {}).get(LABEL_SPEC_HASH) == built["Labels"][LABEL_SPEC_HASH]:
            actions.append(SwarmServiceAction(service.service, service.name, "nothing"))
            continue
        reasons = tuple(update_reasons(spec, built))
        actions.append(SwarmServiceAction(service.service, service.name, "update", reasons))
    wanted = {s.name for s in stack.services}
    kept_secrets: set[str] = set()
    kept_configs: set[str] = set()
    for name in sorted(set(live) - wanted):
        if partial:
            secrets_used, configs_used = referenced_objects(live[name].get("Spec") or {})
            kept_secrets |= secrets_used
            kept_configs |= configs_used
            continue
        labels = (live[name].get("Spec") or {}).get("Labels") or {}
        actions.append(
            SwarmServiceAction(
                str(labels.get("io.kbinfra.service") or name),
                name,
                "remove",
                ("no longer in the stack",),
            )
        )
    want_secrets, want_configs = set(stack.secrets()), set(stack.configs())
    return SwarmPlan(
        stack=stack.stack,
        target=target_name,
        create_swarm=create_swarm,
        network=stack.network,
        create_network=not network_exists,
        services=tuple(actions),
        secrets_to_create=tuple(sorted(want_secrets - secrets)),
        secrets_to_remove=tuple(sorted(secrets - want_secrets - kept_secrets)),
        configs_to_create=tuple(sorted(want_configs - configs)),
        configs_to_remove=tuple(sorted(configs - want_configs - kept_configs)),
    )


def swarm_plan(stack: Stack, target: SwarmTarget, *, only: Sequence[str] = ()) -> SwarmPlan:
    """What apply would do (``only``: to just these services); changes nothing."""
    desired = desired_swarm_stack(stack, only)
    manager = find_manager(target)
    if manager is None:
        return plan_against(desired, target.name, None, create_swarm=True)
    return plan_against(desired, target.name, target.docker_client().api, partial=bool(only))


# ---------------------------------------------------------------- apply


@dataclass(frozen=True)
class SwarmServiceResult:
    service: str
    swarm_service: str
    action: SwarmAction
    outcome: SwarmOutcome
    seconds: float = 0.0
    error: str | None = None
    tasks: tuple[dict[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "swarm_service": self.swarm_service,
            "action": self.action,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "tasks": list(self.tasks),
        }


@dataclass
class SwarmApplyResult:
    stack: str
    target: str
    swarm: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    images_copied: dict[str, list[str]] = field(default_factory=dict)
    services: list[SwarmServiceResult] = field(default_factory=list)
    secrets_created: list[str] = field(default_factory=list)
    configs_created: list[str] = field(default_factory=list)
    secrets_removed: list[str] = field(default_factory=list)
    configs_removed: list[str] = field(default_factory=list)
    network_created: bool = False
    failure: str | None = None
    #: e.g. a stale lock that was broken
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None and all(r.outcome != "failed" for r in self.services)

    @property
    def changed(self) -> bool:
        return bool(
            self.network_created
            or self.secrets_created
            or self.configs_created
            or self.secrets_removed
            or self.configs_removed
            or self.images_copied
            or any(r.action != "nothing" for r in self.services)
        )

    def count(self, outcome: SwarmOutcome) -> int:
        return sum(1 for r in self.services if r.outcome == outcome)

    def summary(self) -> str:
        text = (
            f"{self.count('created')} created, {self.count('updated')} updated, "
            f"{self.count('removed')} removed, {self.count('unchanged')} unchanged; "
            f"{len(self.secrets_created)} secrets and {len(self.configs_created)} configs "
            f"created, {len(self.secrets_removed) + len(self.configs_removed)} removed; "
            f"images copied to {len(self.images_copied)} nodes"
        )
        failed = self.count("failed")
        return text + (f", {failed} failed" if failed else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "target": self.target,
            "ok": self.ok,
            "changed": self.changed,
            "summary": self.summary(),
            "swarm": self.swarm,
            "images": self.images,
            "images_copied": self.images_copied,
            "services": [r.as_json() for r in self.services],
            "network_created": self.network_created,
            "secrets_created": self.secrets_created,
            "configs_created": self.configs_created,
            "secrets_removed": self.secrets_removed,
            "configs_removed": self.configs_removed,
            "notes": self.notes,
            "error": self.failure,
        }


class ConvergeProgress:
    """Turns the convergence notes (one per service whenever its tasks change) into each
    service's state — waiting, updating, converged, failed — and remembers when each last
    changed: how long it took to converge."""

    def __init__(self, inner: Progress, actions: Mapping[str, SwarmAction]) -> None:
        self.inner = inner
        self.actions = dict(actions)  # kbinfra service name -> action
        self.started = time.monotonic()
        self.last_change: dict[str, float] = {}
        for service, action in self.actions.items():
            if action != "nothing":
                inner.service_state(service, "waiting", "waiting for Swarm")

    def note(self, source: str, message: str) -> None:
        if source in self.actions:
            self.last_change[source] = time.monotonic() - self.started
            if self.actions[source] == "nothing":
                return
            self.inner.service_state(source, "working", f"updating: {message}")
            return
        self.inner.note(source, message)

    def service_state(self, service: str, state: ServiceState, message: str) -> None:
        self.inner.service_state(service, state, message)

    def transfer(
        self, label: str, total: int | None = None
    ) -> AbstractContextManager[Callable[[int], None]]:
        return self.inner.transfer(label, total)

    def seconds(self, service: str) -> float:
        return self.last_change.get(service, 0.0)


def _local_engine() -> DockerClient | None:
    from kbinfra.targets.local import local_engine  # noqa: PLC0415

    try:
        return local_engine()
    except KbinfraError:
        return None


def _distribute(
    target: SwarmTarget, desired: SwarmStack, progress: Progress
) -> ImageDistribution | None:
    from kbinfra.swarm.converge import read_nodes  # noqa: PLC0415
    from kbinfra.swarm.images import distribute_images  # noqa: PLC0415

    here = _local_engine()
    if here is None:
        progress.note("images", "no Docker Engine on this machine: the nodes must have them")
        return None
    nodes = read_nodes(target.docker_client(), target)
    return distribute_images(here, target, desired, nodes, progress)


def _task_rows(status: StackStatus | None, swarm_service: str) -> tuple[dict[str, Any], ...]:
    if status is None:
        return ()
    for state in status.services:
        if state.name == swarm_service:
            return tuple(t.as_json() for t in state.tasks if t.desired == "running")
    return ()


def _service_error(
    failure: str | None, named: str | None, service: SwarmService, state: SwarmServiceState | None
) -> str | None:
    """A failed service's own error: the apply's failure when it names this service, else
    its newest task error or how many of its tasks run."""
    if named in (service.service, service.name):
        return failure
    if state is None:
        return "not on the Swarm"
    return state.failure() or f"{state.running}/{state.expected} running, not converged"


def swarm_apply(
    stack: Stack,
    target: SwarmTarget,
    *,
    timeout_s: float | None = None,
    force_unlock: bool = False,
    only: Sequence[str] = (),
    progress: Progress = SILENT,
) -> SwarmApplyResult:
    """Create or adopt the Swarm, then under the stack's lock put the images on the nodes,
    apply the stack and wait.

    ``only``: just these services (and their replicas or peers), their images only; the
    stack's other services on the Swarm are left as they are.

    A service Swarm rolled back (or that did not converge in time) is ``failed`` with the
    task's error in :attr:`SwarmApplyResult.failure`; the command exits 1 on it. The lock
    is a Swarm object, so it is taken once the Swarm exists: two first applies racing to
    create one Swarm are not kept apart (the second is refused by ``swarm init``/join).
    """
    from kbinfra.swarm.cluster import ensure_swarm  # noqa: PLC0415
    from kbinfra.swarm.lock import swarm_locked  # noqa: PLC0415

    formation = ensure_swarm(target, progress)
    with swarm_locked(target.docker_client(), stack.spec.name, force=force_unlock) as notes:
        result = _apply_locked(stack, target, timeout_s=timeout_s, only=only, progress=progress)
    result.swarm = formation.as_json()
    result.notes = notes
    return result


def swarm_apply_held(
    stack: Stack,
    target: SwarmTarget,
    *,
    timeout_s: float | None = None,
    progress: Progress = SILENT,
) -> SwarmApplyResult:
    """Apply the whole stack to its Swarm, which exists, under the stack's lock, which the
    caller holds (``kbinfra secrets rotate`` applies once per phase under one lock)."""
    return _apply_locked(stack, target, timeout_s=timeout_s, only=(), progress=progress)


def _apply_locked(
    stack: Stack,
    target: SwarmTarget,
    *,
    timeout_s: float | None,
    only: Sequence[str],
    progress: Progress,
) -> SwarmApplyResult:
    from kbinfra.swarm.apply import apply_stack, prune_objects  # noqa: PLC0415
    from kbinfra.swarm.converge import (  # noqa: PLC0415
        DEFAULT_TIMEOUT_S,
        stack_status,
        wait_converged,
    )

    desired = desired_swarm_stack(stack, only)
    result = SwarmApplyResult(stack.spec.name, target.name)
    copies = _distribute(target, desired, progress)
    if copies is not None:
        result.images = copies.as_json()
        result.images_copied = copies.copied
    manager = target.docker_client()
    changes = apply_stack(manager, desired, progress, partial=bool(only))
    result.network_created = changes.network_created
    result.secrets_created = list(changes.secrets_created)
    result.configs_created = list(changes.configs_created)
    actions: dict[str, SwarmAction] = {}
    for name in changes.created:
        actions[name] = "create"
    for name in changes.updated:
        actions[name] = "update"
    for name in changes.unchanged:
        actions[name] = "nothing"
    kbinfra_name = {s.name: s.service for s in desired.services}
    watcher = ConvergeProgress(
        progress, {kbinfra_name[name]: action for name, action in actions.items()}
    )
    status: StackStatus | None = None
    failed_service: str | None = None
    try:
        status = wait_converged(
            manager,
            target,
            desired.stack,
            changes.intended,
            timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
            progress=watcher,
        )
    except ApplyFailedError as error:
        result.failure = error.what
        where = error.where or ""
        failed_service = where.removeprefix("service ") or None
        status = stack_status(manager, target, desired.stack, changes.intended)
    outcomes: dict[SwarmAction, SwarmOutcome] = {
        "create": "created",
        "update": "updated",
        "nothing": "unchanged",
    }
    for service in desired.services:
        action = actions[service.name]
        state = next((s for s in status.services if s.name == service.name), None)
        failed = result.failure is not None and (
            failed_service in (service.service, service.name)
            or (state is not None and not state.converged and action != "nothing")
        )
        outcome: SwarmOutcome = "failed" if failed else outcomes[action]
        progress.service_state(
            service.service,
            "failed" if failed else "healthy",
            "failed" if failed else ("converged" if action != "nothing" else "unchanged"),
        )
        result.services.append(
            SwarmServiceResult(
                service=service.service,
                swarm_service=service.name,
                action=action,
                outcome=outcome,
                seconds=watcher.seconds(service.service) if action != "nothing" else 0.0,
                error=_service_error(result.failure, failed_service, service, state)
                if failed
                else None,
                tasks=_task_rows(status, service.name),
            )
        )
    for name in changes.removed:
        result.services.append(
            SwarmServiceResult(name.removeprefix(f"{desired.stack}_"), name, "remove", "removed")
        )
    if result.failure is None:
        result.secrets_removed, result.configs_removed = prune_objects(manager, desired.stack)
    return result


# ---------------------------------------------------------------- status and destroy


@dataclass(frozen=True)
class SwarmStatus:
    stack: str
    target: str
    manager: str | None
    status: StackStatus | None
    #: Swarm services of the stack file not on the Swarm (never applied, or removed)
    missing: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        found = self.status.as_json() if self.status is not None else {}
        return {
            "stack": self.stack,
            "target": self.target,
            "swarm": self.manager is not None,
            "manager": self.manager,
            "nodes": found.get("nodes", []),
            # The tasks Swarm wants running (not the history of shut-down ones).
            "services": [
                {**service, "tasks": [t for t in service["tasks"] if t["desired"] == "running"]}
                for service in found.get("services", [])
            ],
            "degraded": found.get("degraded", []),
            "missing": list(self.missing),
        }


def swarm_status(stack: Stack, target: SwarmTarget) -> SwarmStatus:
    """Each service's tasks with the node each runs on and its health, from the manager."""
    from kbinfra.swarm.converge import stack_status  # noqa: PLC0415

    manager = find_manager(target)
    desired = desired_swarm_stack(stack)
    if manager is None:
        return SwarmStatus(
            stack.spec.name, target.name, None, None, tuple(s.name for s in desired.services)
        )
    found = stack_status(target.docker_client(), target, desired.stack)
    present = {s.name for s in found.services}
    missing = tuple(s.name for s in desired.services if s.name not in present)
    return SwarmStatus(stack.spec.name, target.name, manager, found, missing)


def swarm_destroy(
    stack: Stack,
    target: SwarmTarget,
    *,
    delete_data: bool,
    force_unlock: bool = False,
    progress: Progress = SILENT,
) -> Removal:
    """Under the stack's lock, its services, secrets, configs and network removed; its
    volumes on each node only with ``delete_data``."""
    from kbinfra.swarm.destroy import Removal, destroy_stack  # noqa: PLC0415
    from kbinfra.swarm.lock import swarm_locked  # noqa: PLC0415

    if find_manager(target) is None:
        return Removal()
    with swarm_locked(target.docker_client(), stack.spec.name, force=force_unlock) as notes:
        removal = destroy_stack(target, stack.spec.name, volumes=delete_data, progress=progress)
    removal.notes = notes
    return removal
