"""A :class:`~kbinfra.swarm.desired.SwarmService` as the Engine API's service spec (API 1.41).

Pure: the spec is built without a Docker client, and carries a label with the sha256 of
itself, so a re-apply compares one label and leaves an unchanged service alone. Secrets
and configs are named in the spec; their IDs, which the Engine also wants, are filled in
only when the service is sent (:func:`with_object_ids`), after the hash: an ID is not part
of what defines a service (the names are content-versioned).

What Engine 20.10 (API 1.41) takes per service, checked against the test bed's engines:
``CapabilityDrop``/``CapabilityAdd``, ``ReadOnly``, tmpfs mounts, ``Init``, ``Sysctls``,
``Ulimits`` and a PIDs limit (``Resources.Limits.Pids``, applied to the task's container as
``PidsLimit``; docker-py has no argument for it, the spec is sent as the Engine's JSON).
What it cannot set per service: ``no-new-privileges`` (``Privileges.NoNewPrivileges`` exists
from API 1.44 only; 1.41 drops it silently, and there is no ``SecurityOpt``), seccomp and
AppArmor profiles (1.44). Those are daemon-wide (``dockerd --no-new-privileges``). kbinfra
sets limits, not reservations, so a test profile schedules on small nodes.

The contract (``SwarmService``) has no PIDs field yet: every service gets
:data:`~kbinfra.service.DEFAULT_PIDS_LIMIT` unless the caller passes ``pids_limit``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kbinfra.service import DEFAULT_PIDS_LIMIT
from kbinfra.swarm.desired import LABEL_SWARM_STACK, SwarmService

#: Service and container label: the sha256 of the service's spec (this label left out).
LABEL_SPEC_HASH = "io.kbinfra.swarm.spec-hash"
#: Service and container label: kbinfra's service name (the folder).
LABEL_SERVICE = "io.kbinfra.service"
#: Label on the volumes Swarm creates for a stack's mounts: kept unless asked.
LABEL_DATA = "io.kbinfra.data"

_NS = 1_000_000_000
_MB = 2**20
RESTART_DELAY_S = 5


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def _healthcheck(service: SwarmService) -> dict[str, Any] | None:
    check = service.healthcheck
    if check is None:
        return None
    return {
        "Test": list(check.test),
        "Interval": _ns(check.interval_s),
        "Timeout": _ns(check.timeout_s),
        "Retries": check.retries,
        "StartPeriod": _ns(check.start_period_s),
    }


def _mounts(service: SwarmService) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {
            "Type": "volume",
            "Source": mount.source,
            "Target": mount.target,
            "ReadOnly": mount.read_only,
            "VolumeOptions": {
                "Labels": {
                    LABEL_SWARM_STACK: service.stack,
                    LABEL_DATA: "true" if mount.data else "false",
                }
            },
        }
        for mount in service.mounts
    ]
    mounts += [
        {"Type": "tmpfs", "Target": target, "TmpfsOptions": {"SizeBytes": size_mb * _MB}}
        for target, size_mb in service.tmpfs
    ]
    return mounts


def _container_spec(service: SwarmService, labels: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "Image": service.image,
        "Labels": dict(labels),
        "Env": [f"{key}={value}" for key, value in sorted(service.env.items())],
        "Mounts": _mounts(service),
        "ReadOnly": service.read_only,
        "StopGracePeriod": _ns(service.stop_grace_s),
        "CapabilityDrop": ["ALL"],
        "CapabilityAdd": sorted(service.cap_add),
        "Secrets": [
            {
                "File": {"Name": s.target, "UID": s.uid, "GID": s.gid, "Mode": s.mode},
                "SecretName": s.name,
            }
            for s in service.secrets
        ],
        "Configs": [
            {
                "File": {"Name": c.target, "UID": c.uid, "GID": c.gid, "Mode": c.mode},
                "ConfigName": c.name,
            }
            for c in service.configs
        ],
    }
    if service.entrypoint is not None:
        spec["Command"] = list(service.entrypoint)
    if service.command is not None:
        spec["Args"] = list(service.command)
    if service.hostname is not None:
        spec["Hostname"] = service.hostname
    if service.user is not None:
        spec["User"] = service.user
    check = _healthcheck(service)
    if check is not None:
        spec["Healthcheck"] = check
    return spec


def _update_config(service: SwarmService, failure_action: str) -> dict[str, Any]:
    policy = service.update
    return {
        "Parallelism": policy.parallelism,
        "Delay": _ns(policy.delay_s),
        "FailureAction": failure_action,
        "Monitor": _ns(policy.monitor_s),
        "MaxFailureRatio": 0,
        "Order": policy.order,
    }


def build_service_spec(
    service: SwarmService, network: str, *, pids_limit: int = DEFAULT_PIDS_LIMIT
) -> dict[str, Any]:
    """The service's spec, labelled with its own hash; secrets and configs by name only."""
    labels = {
        **service.labels,
        LABEL_SWARM_STACK: service.stack,
        LABEL_SERVICE: service.service,
    }
    placement: dict[str, Any] = {"Constraints": list(service.constraints)}
    if service.max_replicas_per_node:
        placement["MaxReplicas"] = service.max_replicas_per_node
    mode: dict[str, Any] = (
        {"Global": {}}
        if service.replicas is None
        else {"Replicated": {"Replicas": service.replicas}}
    )
    spec: dict[str, Any] = {
        "Name": service.name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": _container_spec(service, labels),
            "Resources": {
                "Limits": {
                    "NanoCPUs": round(service.cpus * _NS),
                    "MemoryBytes": service.memory_mb * _MB,
                    "Pids": pids_limit,
                }
            },
            "RestartPolicy": {"Condition": "any", "Delay": _ns(RESTART_DELAY_S)},
            "Placement": placement,
            "Networks": [{"Target": network, "Aliases": [service.service]}],
        },
        "Mode": mode,
        "UpdateConfig": _update_config(service, service.update.failure_action),
        # A rollback that fails too stops where it is, for a person to look at.
        "RollbackConfig": _update_config(service, "pause"),
        "EndpointSpec": {
            "Mode": "dnsrr",  # no IPVS on every kernel: no VIP, no routing mesh
            "Ports": [
                {
                    "Protocol": port.protocol,
                    "TargetPort": port.target,
                    "PublishedPort": port.published,
                    "PublishMode": "host",
                }
                for port in service.ports
            ],
        },
    }
    digest = spec_hash(spec)
    spec["Labels"][LABEL_SPEC_HASH] = digest
    spec["TaskTemplate"]["ContainerSpec"]["Labels"][LABEL_SPEC_HASH] = digest
    return spec


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of a spec as canonical JSON, its own hash labels left out."""
    bare = copy.deepcopy(dict(spec))
    bare.get("Labels", {}).pop(LABEL_SPEC_HASH, None)
    container = bare.get("TaskTemplate", {}).get("ContainerSpec", {})
    container.get("Labels", {}).pop(LABEL_SPEC_HASH, None)
    text = json.dumps(bare, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def with_object_ids(
    spec: Mapping[str, Any], secret_ids: Mapping[str, str], config_ids: Mapping[str, str]
) -> dict[str, Any]:
    """``spec`` with the ID of every secret and config it names, as the Engine wants them."""
    sent = copy.deepcopy(dict(spec))
    container = sent["TaskTemplate"]["ContainerSpec"]
    for secret in container["Secrets"]:
        secret["SecretID"] = secret_ids[secret["SecretName"]]
    for config in container["Configs"]:
        config["ConfigID"] = config_ids[config["ConfigName"]]
    return sent


def referenced_objects(spec: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The names of the secrets and configs a (live or built) service spec uses."""
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    secrets = {str(s.get("SecretName")) for s in container.get("Secrets") or []}
    configs = {str(c.get("ConfigName")) for c in container.get("Configs") or []}
    return secrets, configs
