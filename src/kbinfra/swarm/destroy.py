"""Remove a stack from a Swarm: everything carrying its label, volumes only when asked.

Services first (their tasks' containers then go away on each node), then the secrets,
configs and overlay network they used, retried while a container that is shutting down still
holds them. Volumes are node-local on a Swarm: with ``volumes=True`` they are removed on each
node over that node's own SSH connection; without it they are kept and listed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.progress import SILENT, Progress
from kbinfra.swarm.apply import stack_filter

if TYPE_CHECKING:
    from kbinfra.targets.swarm import SwarmTarget

POLL_S = 0.5
DEFAULT_TIMEOUT_S = 120.0


@dataclass
class Removal:
    services: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes_removed: dict[str, list[str]] = field(default_factory=dict)  # node -> names
    volumes_kept: dict[str, list[str]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> why
    notes: list[str] = field(default_factory=list)  # e.g. a stale lock that was broken

    def as_json(self) -> dict[str, Any]:
        return {
            "services": self.services,
            "secrets": self.secrets,
            "configs": self.configs,
            "networks": self.networks,
            "volumes_removed": self.volumes_removed,
            "volumes_kept": self.volumes_kept,
            "unreachable": self.unreachable,
            "notes": self.notes,
        }


def _retry(what: str, remove: Any, deadline: float) -> None:
    import docker.errors  # noqa: PLC0415

    while True:
        try:
            remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            if time.monotonic() >= deadline:
                raise KbinfraError(
                    f"cannot remove {what}: {getattr(error, 'explanation', None) or error}",
                    fix="run destroy again once the stack's tasks have stopped",
                ) from None
        time.sleep(POLL_S)


def destroy_stack(
    target: SwarmTarget,
    stack: str,
    *,
    volumes: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Progress = SILENT,
) -> Removal:
    """Remove ``stack``'s services, secrets, configs and network; its volumes if asked."""
    api: Any = target.docker_client().api
    deadline = time.monotonic() + timeout_s
    removal = Removal()
    labelled = stack_filter(stack)
    for service in api.services(filters=labelled):
        name = str(service["Spec"]["Name"])
        progress.note("swarm", f"removing service {name}")
        _retry(f"service {name}", lambda s=service: api.remove_service(s["ID"]), deadline)
        removal.services.append(name)
    for secret in api.secrets(filters=labelled) or []:
        name = str(secret["Spec"]["Name"])
        _retry(f"secret {name}", lambda s=secret: api.remove_secret(s["ID"]), deadline)
        removal.secrets.append(name)
    for config in api.configs(filters=labelled) or []:
        name = str(config["Spec"]["Name"])
        _retry(f"config {name}", lambda c=config: api.remove_config(c["ID"]), deadline)
        removal.configs.append(name)
    for network in api.networks(filters=labelled):
        name = str(network["Name"])
        _retry(f"network {name}", lambda n=network: api.remove_network(n["Id"]), deadline)
        removal.networks.append(name)
    # The manager removes a network once the tasks' endpoints on it are gone: after it
    # accepted the removal, the network is listed a little longer.
    while api.networks(filters=labelled):
        if time.monotonic() >= deadline:
            raise KbinfraError(
                f"network {', '.join(removal.networks)} still exists",
                fix="run destroy again once the stack's tasks have stopped",
            )
        time.sleep(POLL_S)
    for node in target.nodes:
        try:
            node_api: Any = target.node_client(node.name).api
            found = node_api.volumes(filters=labelled).get("Volumes") or []
        except (KbinfraError, OSError) as error:
            removal.unreachable[node.name] = str(error)
            continue
        names = sorted(str(v["Name"]) for v in found)
        if not names:
            continue
        if not volumes:
            removal.volumes_kept[node.name] = names
            continue
        for name in names:
            progress.note("swarm", f"{node.name}: removing volume {name}")
            _retry(
                f"volume {name} on {node.name}",
                lambda n=name, a=node_api: a.remove_volume(n),
                deadline,
            )
        removal.volumes_removed[node.name] = names
    return removal
