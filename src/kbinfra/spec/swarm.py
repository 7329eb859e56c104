"""The ``swarm:`` section of a stack file (``target: swarm``), and the node file it comes from.

A node file (``scripts/testbed cluster up`` writes one, ``kbinfra init --target swarm
--nodes FILE`` reads it) holds the nodes of a cluster: how each is reached over SSH, its
role, its declared capacity (nodes sharing one host all report that host's CPUs, so kbinfra
never trusts what an engine says of itself here) and its labels. The stack file's ``swarm:``
section is the same shape plus ``services:``, where each service says where it runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kbinfra.spec.values import TextLine, parse_ssh_target

NodeRole = Literal["manager", "worker"]
_NODE_NAME = r"[a-z0-9][a-z0-9-]{0,62}"
#: Docker's label keys are free text; kbinfra keeps them to what a constraint
#: (``node.labels.KEY == VALUE``) and a YAML key carry without quoting.
_LABEL_KEY = r"[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?"
_LABEL_VALUE = r"[A-Za-z0-9._-]{0,128}"


def _matches(pattern: str, value: str) -> bool:
    # re caches compiled patterns: compiled on first use, not at import.
    return re.fullmatch(pattern, value, re.ASCII) is not None


def check_node_name(value: str) -> str:
    """A node's host name as Swarm reports it: what ``node.hostname ==`` constraints match."""
    if not _matches(_NODE_NAME, value):
        raise ValueError(
            f"{value!r} is not a node name: lowercase letters, digits and -, starting with a "
            "letter or digit, at most 63 characters (the node's host name)"
        )
    return value


def check_label_key(value: str) -> str:
    if not _matches(_LABEL_KEY, value):
        raise ValueError(
            f"label key {value!r} is not usable: lowercase letters, digits, . _ -, starting "
            "and ending with a letter or digit (like kb.tier)"
        )
    return value


def check_label_value(value: str) -> str:
    if not _matches(_LABEL_VALUE, value):
        raise ValueError(
            f"label value {value!r} is not usable: letters, digits, . _ - only, at most 128"
        )
    return value


def check_node_address(value: str) -> str:
    """``ssh://user@host[:port]``: the same parser as a stack's ``ssh://`` target."""
    parse_ssh_target(value)
    return value


NodeName = Annotated[str, AfterValidator(check_node_name)]
LabelKey = Annotated[str, AfterValidator(check_label_key)]
LabelValue = Annotated[str, AfterValidator(check_label_value)]
NodeAddress = Annotated[str, AfterValidator(check_node_address)]
Labels = dict[LabelKey, LabelValue]


class _Strict(BaseModel):
    # Built on first use, not at import: every command imports the stack file's models, and
    # only Swarm stacks and node files validate these (~8 ms of each start otherwise).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class SwarmNode(_Strict):
    """One node of the cluster, as the node file declares it."""

    name: NodeName = Field(description="The node's host name (what Swarm reports)")
    address: NodeAddress = Field(description="ssh://user@host[:port] of the node's sshd")
    role: NodeRole = "worker"
    cpus: Annotated[float, Field(gt=0, le=1024)]
    memory_gb: Annotated[float, Field(gt=0, le=65536)]
    storage_gb: Annotated[float, Field(gt=0, le=1_000_000)]
    # Not default_factory=dict: see BackupSettings.volumes (pydantic copies mutable defaults).
    labels: Labels = Field({}, description="Node labels kbinfra sets, for placement by label")

    @property
    def memory_mb(self) -> int:
        return int(self.memory_gb * 1024)


def _unique_names(nodes: list[SwarmNode]) -> list[SwarmNode]:
    names = [node.name for node in nodes]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise ValueError(f"node name {twice!r} is used twice: give each node its own name")
    addresses = [parse_ssh_target(node.address)[1:] for node in nodes]
    same = next((a for a in addresses if addresses.count(a) > 1), None)
    if same is not None:
        host, port = same
        raise ValueError(f"two nodes have the address {host} port {port}: one sshd is one node")
    if not any(node.role == "manager" for node in nodes):
        raise ValueError("no node has role: manager; a Swarm needs at least one manager")
    return nodes


class SwarmNodes(_Strict):
    """A node file: the cluster's nodes and how kbinfra reaches them over SSH."""

    known_hosts: TextLine | None = Field(
        None, description="known_hosts file holding every node's host key (kbinfra ssh trust)"
    )
    identity: TextLine | None = Field(None, description="SSH private key for every node")
    nodes: Annotated[list[SwarmNode], Field(min_length=1), AfterValidator(_unique_names)]

    def node(self, name: str) -> SwarmNode:
        return next(node for node in self.nodes if node.name == name)

    @property
    def managers(self) -> list[SwarmNode]:
        return [node for node in self.nodes if node.role == "manager"]


class NodeChoice(_Strict):
    """Where a service's tasks may run: named nodes, or nodes carrying all these labels."""

    nodes: list[NodeName] | None = None
    labels: Labels | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.nodes is None) == (self.labels is None):
            raise ValueError("say either nodes: [NAME, ...] or labels: {KEY: VALUE}, not both")
        if self.nodes is not None and not self.nodes:
            raise ValueError("nodes: is empty; name at least one node")
        if self.nodes is not None and len(set(self.nodes)) != len(self.nodes):
            raise ValueError("nodes: names a node twice")
        if self.labels is not None and not self.labels:
            raise ValueError("labels: is empty; give at least one KEY: VALUE")
        return self


class ReplicaChoice(_Strict):
    """A streaming replica of a store (PostgreSQL, Redis) on a node of its own."""

    node: NodeName


def _distinct_peers(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("peers: names a node twice; one peer per node")
    return value


class ServicePlacement(_Strict):
    """``swarm.services.<name>``: where one service runs and how many tasks it has."""

    placement: NodeChoice | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] | None = None
    replica: ReplicaChoice | None = None
    #: A store that clusters by itself (Qdrant): one pinned peer on each of these nodes.
    peers: Annotated[
        list[NodeName] | None, Field(min_length=2, max_length=64), AfterValidator(_distinct_peers)
    ] = None


class PlacementsBase(_Strict):
    """Subclassed at run time with one optional field per registered service."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    def of(self, service: str) -> ServicePlacement:
        found: ServicePlacement | None = getattr(self, service, None)
        return found if found is not None else ServicePlacement()

    def named(self) -> dict[str, ServicePlacement]:
        """The services the stack file says something of."""
        return {
            name: value
            for name in type(self).model_fields
            if (value := getattr(self, name)) is not None
        }


class SwarmSettings(SwarmNodes):
    """The stack file's ``swarm:`` section: the nodes, and each service's placement."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    services: PlacementsBase = Field(default_factory=PlacementsBase)
