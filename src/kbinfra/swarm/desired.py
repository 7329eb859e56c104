"""What a stack is on a Swarm, as plain values: the contract between building it (pure, from
the stack file and each service's ContainerSpec) and applying it (a manager's Docker API).

Names are versioned by content: a secret or config whose content changes gets a new name
(Swarm objects are immutable), so the services that use it are updated, and therefore rolled,
by Swarm itself. Nothing here talks to Docker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kbinfra.service import HealthCheck

_EMPTY: Mapping[str, str] = MappingProxyType({})

#: Label on every Swarm object kbinfra creates: the stack it belongs to.
LABEL_SWARM_STACK = "io.kbinfra.stack"


@dataclass(frozen=True)
class SwarmSecret:
    """A Docker secret, mounted read-only at ``/run/secrets/<target>`` in a task, or at
    ``target`` itself when it is an absolute path (a rendered 0600 file, where its service
    reads it; Docker 17.06+ on Linux).

    ``data`` never appears in a repr, a plan or JSON output.
    """

    name: str  # versioned: <stack>_<secret>_<first 12 hex of sha256(data)>
    data: bytes = field(repr=False)
    target: str  # file name under /run/secrets
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o400


@dataclass(frozen=True)
class SwarmConfig:
    """A Docker config (a rendered, non-secret file), mounted read-only at ``target``."""

    name: str  # versioned like SwarmSecret
    data: bytes = field(repr=False)
    target: str  # absolute path in the task
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


@dataclass(frozen=True)
class SwarmMount:
    """A named volume (node-local on Swarm: a stateful service is pinned to one node)."""

    source: str
    target: str
    read_only: bool = False
    data: bool = True  # never removed without an explicit, confirmed command
    kind: str = "volume"  # "bind": a folder of the node itself (node-exporter reads /)


@dataclass(frozen=True)
class SwarmPort:
    """A port published in host mode on the node that runs the task (no routing mesh here)."""

    target: int
    published: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class UpdatePolicy:
    """Swarm's update config: a failed health check after an update is rolled back by Swarm."""

    parallelism: int = 1
    order: str = "start-first"  # "stop-first" for a service that owns a pinned volume
    monitor_s: float = 15.0
    failure_action: str = "rollback"
    delay_s: float = 0.0


@dataclass(frozen=True)
class SwarmService:
    """One Swarm service of a stack.

    ``replicas`` None means global mode (one task per eligible node). ``constraints`` are
    Swarm placement constraints (``node.hostname == node1``, ``node.labels.kb.tier == data``).
    """

    stack: str
    service: str  # kbinfra's service name (the folder), e.g. "postgres"
    name: str  # the Swarm service name, e.g. "<stack>_postgres"
    image: str
    cpus: float  # limit, not reservation: a small test node schedules a test profile
    memory_mb: int  # limit
    replicas: int | None = 1
    constraints: Sequence[str] = ()
    max_replicas_per_node: int = 0  # 0: no limit
    hostname: str | None = None  # stable task hostname, e.g. "{{.Node.Hostname}}-qdrant"
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    user: str | None = None
    # never a secret: those are in ``secrets``
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    secrets: Sequence[SwarmSecret] = ()
    configs: Sequence[SwarmConfig] = ()
    mounts: Sequence[SwarmMount] = ()
    tmpfs: Sequence[tuple[str, int]] = ()  # (target, size in MB)
    ports: Sequence[SwarmPort] = ()
    healthcheck: HealthCheck | None = None
    update: UpdatePolicy = UpdatePolicy()
    stop_grace_s: int = 30
    read_only: bool = True
    cap_add: Sequence[str] = ()  # everything else is dropped
    # service labels: stack, service, config hash
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    config_hash: str = ""
    #: Names it answers to on the stack's network besides its Swarm name: its kbinfra
    #: name, which every rendered file uses (``postgres:5432``), as on one host.
    network_aliases: Sequence[str] = ()
    #: Docker's endpoint mode: no IPVS on the nodes kbinfra targets, so never "vip".
    endpoint_mode: str = "dnsrr"


@dataclass(frozen=True)
class SwarmStack:
    """Everything of one stack on a Swarm: its services and the overlay network they share."""

    stack: str
    network: str  # attachable overlay, endpoint mode dnsrr for every service (no IPVS here)
    services: Sequence[SwarmService]

    def secrets(self) -> dict[str, SwarmSecret]:
        return {s.name: s for service in self.services for s in service.secrets}

    def configs(self) -> dict[str, SwarmConfig]:
        return {c.name: c for service in self.services for c in service.configs}
