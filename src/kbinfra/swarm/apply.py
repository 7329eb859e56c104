"""Apply a :class:`~kbinfra.swarm.desired.SwarmStack` through a manager's Docker API.

In order: the stack's attachable overlay network, its secrets and configs (created when
missing: their names are content-versioned, so an existing name holds the same data), its
services (created, or updated when their spec-hash label differs; an equal one is not
touched, so a no-op re-apply changes nothing), then services of the stack no longer in it
removed. :func:`prune_objects` removes, once the services have moved off them, the stack's
secrets and configs no service uses any more. Secret data is sent to the Engine only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.progress import SILENT, Progress
from kbinfra.swarm.desired import LABEL_SWARM_STACK, SwarmStack
from kbinfra.swarm.service_spec import (
    LABEL_SPEC_HASH,
    build_service_spec,
    referenced_objects,
    with_object_ids,
)

if TYPE_CHECKING:
    from docker import DockerClient


@dataclass(frozen=True)
class StackChanges:
    """What an apply changed, by name (never by content)."""

    network_created: bool
    secrets_created: tuple[str, ...]
    configs_created: tuple[str, ...]
    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    intended: Mapping[str, str]  # service name -> the spec hash sent

    @property
    def changed(self) -> bool:
        return bool(
            self.network_created
            or self.secrets_created
            or self.configs_created
            or self.created
            or self.updated
            or self.removed
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "network_created": self.network_created,
            "secrets_created": list(self.secrets_created),
            "configs_created": list(self.configs_created),
            "created": list(self.created),
            "updated": list(self.updated),
            "unchanged": list(self.unchanged),
            "removed": list(self.removed),
        }


def stack_filter(stack: str) -> dict[str, Any]:
    return {"label": f"{LABEL_SWARM_STACK}={stack}"}


def _refuse_foreign(kind: str, name: str, labels: Mapping[str, str] | None, stack: str) -> None:
    if (labels or {}).get(LABEL_SWARM_STACK) != stack:
        raise KbinfraError(
            f"a {kind} named {name} exists that is not stack {stack}'s",
            fix=f"rename the stack, or remove that {kind} if it is left over",
        )


def ensure_network(client: DockerClient, stack: str, name: str) -> bool:
    """The stack's attachable overlay network; True when it was created now."""
    api: Any = client.api
    for network in api.networks(names=[name]):
        if network.get("Name") == name:
            _refuse_foreign("network", name, network.get("Labels"), stack)
            if network.get("Driver") != "overlay":
                raise KbinfraError(f"network {name} exists with driver {network.get('Driver')}")
            return False
    api.create_network(name, driver="overlay", attachable=True, labels={LABEL_SWARM_STACK: stack})
    return True


def _ensure_objects(
    client: DockerClient, kind: str, stack: str, wanted: Mapping[str, bytes]
) -> tuple[dict[str, str], list[str]]:
    """Name -> ID of every wanted secret (or config), creating the missing ones."""
    api: Any = client.api
    listing = api.secrets if kind == "secret" else api.configs
    create = api.create_secret if kind == "secret" else api.create_config
    existing = {}
    for item in listing(filters={"name": list(wanted)} if wanted else None) or []:
        name = item["Spec"]["Name"]
        if name in wanted:
            _refuse_foreign(kind, name, item["Spec"].get("Labels"), stack)
            existing[name] = str(item["ID"])
    created = []
    for name, data in wanted.items():
        if name not in existing:
            result = create(name, data, labels={LABEL_SWARM_STACK: stack})
            existing[name] = str(result["ID"])
            created.append(name)
    return existing, created


def apply_stack(
    client: DockerClient, stack: SwarmStack, progress: Progress = SILENT, *, partial: bool = False
) -> StackChanges:
    """Make the manager's Swarm hold ``stack``; does not wait for tasks (see converge).

    ``partial``: ``stack`` is only some of the stack's services (``--only``): the stack's
    other services on the Swarm stay as they are instead of being removed."""
    import docker.errors  # noqa: PLC0415

    api: Any = client.api
    network_created = ensure_network(client, stack.stack, stack.network)
    secret_ids, secrets_created = _ensure_objects(
        client, "secret", stack.stack, {n: s.data for n, s in stack.secrets().items()}
    )
    config_ids, configs_created = _ensure_objects(
        client, "config", stack.stack, {n: c.data for n, c in stack.configs().items()}
    )
    live = {str(s["Spec"]["Name"]): s for s in api.services(filters=stack_filter(stack.stack))}
    created, updated, unchanged, intended = [], [], [], {}
    for service in stack.services:
        if service.stack != stack.stack:
            raise KbinfraError(
                f"service {service.name} is of stack {service.stack}, not {stack.stack}"
            )
        spec = build_service_spec(service, stack.network)
        intended[service.name] = spec["Labels"][LABEL_SPEC_HASH]
        current = live.get(service.name)
        if current is None:
            foreign = [
                s
                for s in api.services(filters={"name": service.name})
                if s["Spec"]["Name"] == service.name
            ]
            if foreign:
                _refuse_foreign(
                    "service", service.name, foreign[0]["Spec"].get("Labels"), stack.stack
                )
        if (
            current is not None
            and (current["Spec"].get("Labels") or {}).get(LABEL_SPEC_HASH) == intended[service.name]
        ):
            unchanged.append(service.name)
            continue
        sent = with_object_ids(spec, secret_ids, config_ids)
        try:
            if current is None:
                progress.note(service.service, f"creating Swarm service {service.name}")
                api.create_service(
                    sent["TaskTemplate"],
                    name=sent["Name"],
                    labels=sent["Labels"],
                    mode=sent["Mode"],
                    update_config=sent["UpdateConfig"],
                    rollback_config=sent["RollbackConfig"],
                    endpoint_spec=sent["EndpointSpec"],
                )
                created.append(service.name)
            else:
                progress.note(service.service, f"updating Swarm service {service.name}")
                api.update_service(
                    current["ID"],
                    current["Version"]["Index"],
                    task_template=sent["TaskTemplate"],
                    name=sent["Name"],
                    labels=sent["Labels"],
                    mode=sent["Mode"],
                    update_config=sent["UpdateConfig"],
                    rollback_config=sent["RollbackConfig"],
                    endpoint_spec=sent["EndpointSpec"],
                    fetch_current_spec=False,
                )
                updated.append(service.name)
        except docker.errors.APIError as error:
            raise KbinfraError(
                f"the Swarm refused service {service.name}: "
                f"{getattr(error, 'explanation', None) or error}",
                where=f"service {service.service}",
            ) from None
    removed = []
    for name, current in live.items():
        if name not in intended and not partial:
            progress.note("swarm", f"removing Swarm service {name} (no longer in the stack)")
            api.remove_service(current["ID"])
            removed.append(name)
    return StackChanges(
        network_created=network_created,
        secrets_created=tuple(secrets_created),
        configs_created=tuple(configs_created),
        created=tuple(created),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        removed=tuple(removed),
        intended=intended,
    )


def prune_objects(client: DockerClient, stack: str) -> tuple[list[str], list[str]]:
    """Remove the stack's secrets and configs that no service of the Swarm uses any more
    (a rolled-back service keeps using its old ones); the names removed."""
    import docker.errors  # noqa: PLC0415

    api: Any = client.api
    used_secrets: set[str] = set()
    used_configs: set[str] = set()
    for service in api.services():
        secrets, configs = referenced_objects(service["Spec"])
        used_secrets |= secrets
        used_configs |= configs
    removed: dict[str, list[str]] = {"secret": [], "config": []}
    for kind, used, listing, remove in (
        ("secret", used_secrets, api.secrets, api.remove_secret),
        ("config", used_configs, api.configs, api.remove_config),
    ):
        for item in listing(filters=stack_filter(stack)) or []:
            name = str(item["Spec"]["Name"])
            if name in used:
                continue
            try:
                remove(item["ID"])
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError:
                continue  # still in use by a task that is shutting down: the next apply
            removed[kind].append(name)
    return removed["secret"], removed["config"]


def stack_service_names(client: DockerClient, stack: str) -> list[str]:
    api: Any = client.api
    return sorted(str(s["Spec"]["Name"]) for s in api.services(filters=stack_filter(stack)))
