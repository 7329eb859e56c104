"""Does a Swarm stack fit its nodes? A pure decision from the stack file, before any change.

Each node's capacity is what the node file declares (nodes sharing one machine all report
that machine's CPUs and memory, so an engine's own ``docker info`` says nothing here). A
node is charged, for every service that may run on it, that service's allocation (CPUs,
memory and storage under the profile) times the tasks it may hold there: one for a pinned
or global service, ``ceil(replicas / nodes it may use)`` for a replicated one (Swarm spreads
a service's tasks evenly). Tasks get limits, not reservations (Swarm would refuse to
schedule them on a small node): this check is what keeps the limits honest.

Unlike one host, where CPUs handed out beyond the engine's are a warning, every resource is
a shortfall here: the operator declared the budget of each node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kbinfra.capacity import gib
from kbinfra.spec.swarm import SwarmNode

if TYPE_CHECKING:
    from kbinfra.stack import Stack
    from kbinfra.swarm.placement import Placement


class NodeLoad(NamedTuple):
    """What the services that may run on one node are given there, and what it has."""

    node: SwarmNode
    services: tuple[tuple[str, int], ...]  # (service, tasks it may hold on this node)
    cpus: float
    memory_mb: int
    storage_gb: float

    def shortfalls(self) -> list[str]:
        node = self.node
        found = []
        if self.memory_mb > node.memory_mb:
            found.append(f"memory {gib(self.memory_mb)} of {gib(node.memory_mb)}")
        if round(self.cpus, 2) > node.cpus:
            found.append(f"{round(self.cpus, 2):g} CPUs of {node.cpus:g}")
        if self.storage_gb > node.storage_gb:
            found.append(f"storage {self.storage_gb:g} GB of {node.storage_gb:g} GB")
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "services": {name: tasks for name, tasks in self.services},
            "cpus": round(self.cpus, 2),
            "memory_mb": self.memory_mb,
            "storage_gb": self.storage_gb,
            "capacity": {
                "cpus": self.node.cpus,
                "memory_mb": self.node.memory_mb,
                "storage_gb": self.node.storage_gb,
            },
            "shortfalls": self.shortfalls(),
        }


class SwarmFit(NamedTuple):
    """The decision for one Swarm stack on its declared nodes."""

    profile: str
    loads: tuple[NodeLoad, ...]

    @property
    def fits(self) -> bool:
        return not any(load.shortfalls() for load in self.loads)

    def refusals(self) -> list[str]:
        """One line for each over-committed node: the node, what is short, the services."""
        lines = []
        for load in self.loads:
            short = load.shortfalls()
            if short:
                services = ", ".join(
                    name if tasks == 1 else f"{name} x{tasks}" for name, tasks in load.services
                )
                lines.append(
                    f"node {load.node.name} is over-committed ({'; '.join(short)}) by {services}"
                )
        return lines

    def refusal(self) -> str:
        return f"profile {self.profile} does not fit the Swarm's nodes: " + "; ".join(
            self.refusals()
        )

    def fix(self) -> str:
        return (
            "place services on other nodes (swarm.services.NAME.placement), lower replicas, "
            "or use a smaller profile; or pass --allow-oversized-profile to deploy it anyway"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "fits": self.fits,
            "nodes": [load.as_json() for load in self.loads],
        }


class _Allocation(NamedTuple):
    cpus: float
    memory_mb: int
    storage_gb: float


def _of(allocations: Mapping[str, _Allocation], held: str) -> _Allocation:
    """A replica is given what its primary is."""
    return allocations.get(held) or allocations[held.removesuffix("-replica")]


def assess_swarm_fit(
    profile: str,
    nodes: Sequence[SwarmNode],
    placements: Mapping[str, Placement],
    allocations: Mapping[str, _Allocation],
) -> SwarmFit:
    loads = []
    for node in nodes:
        held = [
            (name, placement.tasks_on_each_node())
            for name, placement in placements.items()
            if node.name in placement.nodes
        ]
        held += [
            (f"{name}-replica", 1)
            for name, placement in placements.items()
            if placement.replica == node.name
        ]
        loads.append(
            NodeLoad(
                node=node,
                services=tuple(held),
                cpus=sum(_of(allocations, name).cpus * tasks for name, tasks in held),
                memory_mb=sum(_of(allocations, name).memory_mb * tasks for name, tasks in held),
                storage_gb=sum(_of(allocations, name).storage_gb * tasks for name, tasks in held),
            )
        )
    return SwarmFit(profile=profile, loads=tuple(loads))


def swarm_fit(stack: Stack, placements: Mapping[str, Placement]) -> SwarmFit:
    """:func:`assess_swarm_fit` for a stack's enabled services under its profile: the
    allocation of a service is its container's limits and its profile storage."""
    assert stack.spec.swarm is not None
    allocations = {
        name: _Allocation(spec.cpus, spec.memory_mb, stack.contexts[name].resources.storage_gb)
        for name, spec in stack.containers.items()
    }
    return assess_swarm_fit(stack.profile.name, stack.spec.swarm.nodes, placements, allocations)
