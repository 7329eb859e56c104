"""``rendered/swarm-stack.yml``: the Swarm stack as a compose v3.8 file for
``docker stack deploy``, written from the same :class:`SwarmStack` kbinfra applies.

It reads no ``.env`` and holds no secret value: every secret is ``external: true`` under its
versioned name, so a hand deploy uses the secrets kbinfra created (or ones made by hand with
``docker secret create NAME -``), and rendered/ gains no secret file it did not have.
Configs are ``file:`` entries pointing at the rendered files next to it, under the same
versioned names kbinfra gives them, so either way of deploying rolls the same services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kbinfra.service import RenderedFile
from kbinfra.spec.yamlfile import dump_yaml
from kbinfra.swarm.build import swarm_stack, versioned_name
from kbinfra.swarm.desired import SwarmService, SwarmStack, UpdatePolicy

if TYPE_CHECKING:
    from kbinfra.stack import Stack

SWARM_STACK_FILE = "swarm-stack.yml"
COMPOSE_VERSION = "3.8"
#: The stack's network as the compose file names it; ``name:`` gives its real name.
NETWORK_KEY = "kbinfra"
_HEADER = (
    "# Docker Swarm stack of kbinfra stack {stack!r}, for `docker stack deploy -c "
    "swarm-stack.yml --resolve-image never {stack}`\n"
    "# in this folder. `kbinfra apply` is the supported way to deploy; this file is for\n"
    "# people who prefer the docker CLI. It reads no .env and holds no secret: the secrets\n"
    "# are external (kbinfra apply creates them under these names). Configs are the rendered\n"
    "# files next to it. Endpoint mode dnsrr and host-mode ports: no IPVS routing mesh.\n"
)


def _escaped(parts: Sequence[str]) -> list[str]:
    """Compose interpolates ``$`` everywhere; ``$$`` is a literal one."""
    return [part.replace("$", "$$") for part in parts]


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _update(policy: UpdatePolicy) -> dict[str, Any]:
    return {
        "parallelism": policy.parallelism,
        "delay": _seconds(policy.delay_s),
        "failure_action": policy.failure_action,
        "monitor": _seconds(policy.monitor_s),
        "order": policy.order,
    }


def _rollback(policy: UpdatePolicy) -> dict[str, Any]:
    return {
        "parallelism": policy.parallelism,
        "delay": _seconds(policy.delay_s),
        "failure_action": "pause",
        "monitor": _seconds(policy.monitor_s),
        "order": policy.order,
    }


def _deploy(service: SwarmService) -> dict[str, Any]:
    deploy: dict[str, Any] = {"endpoint_mode": service.endpoint_mode}
    if service.replicas is None:
        deploy["mode"] = "global"
    else:
        deploy["mode"] = "replicated"
        deploy["replicas"] = service.replicas
    placement: dict[str, Any] = {}
    if service.constraints:
        placement["constraints"] = list(service.constraints)
    if service.max_replicas_per_node:
        placement["max_replicas_per_node"] = service.max_replicas_per_node
    if placement:
        deploy["placement"] = placement
    deploy["resources"] = {
        "limits": {"cpus": f"{service.cpus:g}", "memory": f"{service.memory_mb}M"}
    }
    deploy["update_config"] = _update(service.update)
    deploy["rollback_config"] = _rollback(service.update)
    deploy["restart_policy"] = {"condition": "any"}
    deploy["labels"] = dict(service.labels)
    return deploy


def _service_entry(service: SwarmService) -> dict[str, Any]:
    entry: dict[str, Any] = {"image": service.image}
    if service.hostname is not None:
        entry["hostname"] = service.hostname
    if service.entrypoint is not None:
        entry["entrypoint"] = _escaped(service.entrypoint)
    if service.command is not None:
        entry["command"] = _escaped(service.command)
    if service.user is not None:
        entry["user"] = service.user
    if service.env:
        entry["environment"] = {k: v.replace("$", "$$") for k, v in service.env.items()}
    if service.secrets:
        entry["secrets"] = [
            {"source": s.name, "target": s.target, "uid": s.uid, "gid": s.gid, "mode": s.mode}
            for s in service.secrets
        ]
    if service.configs:
        entry["configs"] = [
            {"source": c.name, "target": c.target, "uid": c.uid, "gid": c.gid, "mode": c.mode}
            for c in service.configs
        ]
    volumes: list[dict[str, Any]] = [
        {"type": m.kind, "source": m.source, "target": m.target, "read_only": m.read_only}
        for m in service.mounts
    ]
    volumes += [
        {"type": "tmpfs", "target": target, "tmpfs": {"size": size_mb * 1024 * 1024}}
        for target, size_mb in service.tmpfs
    ]
    if volumes:
        entry["volumes"] = volumes
    if service.ports:
        entry["ports"] = [
            {"target": p.target, "published": p.published, "protocol": p.protocol, "mode": "host"}
            for p in service.ports
        ]
    if service.healthcheck is not None:
        check = service.healthcheck
        entry["healthcheck"] = {
            "test": _escaped(check.test),
            "interval": f"{check.interval_s}s",
            "timeout": f"{check.timeout_s}s",
            "retries": check.retries,
            "start_period": f"{check.start_period_s}s",
        }
    entry["stop_grace_period"] = f"{service.stop_grace_s}s"
    entry["read_only"] = service.read_only
    entry["cap_drop"] = ["ALL"]
    if service.cap_add:
        entry["cap_add"] = list(service.cap_add)
    entry["networks"] = {NETWORK_KEY: {"aliases": list(service.network_aliases)}}
    entry["deploy"] = _deploy(service)
    return entry


def config_files(stack: str, rendered: Sequence[RenderedFile]) -> dict[str, str]:
    """Versioned config name → the rendered file it is made of (relative to rendered/)."""
    return {
        versioned_name(stack, file.path, file.text.encode("utf-8")): file.path
        for file in rendered
        if not file.secret
    }


def swarm_stack_document(swarm: SwarmStack, config_paths: Mapping[str, str]) -> dict[str, Any]:
    """The compose v3.8 document of ``swarm``; ``config_paths`` maps each config's name to
    the rendered file it is read from."""
    volumes = {
        m.source: {"name": m.source}
        for service in swarm.services
        for m in service.mounts
        if m.kind == "volume"
    }
    return {
        "version": COMPOSE_VERSION,
        "services": {
            service.name.removeprefix(f"{swarm.stack}_"): _service_entry(service)
            for service in swarm.services
        },
        "networks": {NETWORK_KEY: {"driver": "overlay", "attachable": True, "name": swarm.network}},
        "volumes": dict(sorted(volumes.items())),
        "secrets": {name: {"external": True, "name": name} for name in sorted(swarm.secrets())},
        "configs": {
            name: {"file": f"./{config_paths[name]}", "name": name}
            for name in sorted(swarm.configs())
        },
    }


def swarm_stack_text(swarm: SwarmStack, config_paths: Mapping[str, str]) -> str:
    header = _HEADER.format(stack=swarm.stack)
    return header + dump_yaml(swarm_stack_document(swarm, config_paths))


def swarm_stack_file(stack: Stack, rendered: Sequence[RenderedFile]) -> RenderedFile:
    """``swarm-stack.yml`` of ``stack`` (target: swarm), from its other rendered files."""
    swarm = swarm_stack(stack, rendered)
    return RenderedFile(
        path=SWARM_STACK_FILE,
        text=swarm_stack_text(swarm, config_files(stack.spec.name, rendered)),
    )
