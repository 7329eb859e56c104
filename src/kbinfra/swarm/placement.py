"""Where each service of a Swarm stack runs: a pure decision from the stack file and the
service folders.

The rules (docs/swarm.md explains why):

- a service that keeps state (:meth:`Service.keeps_state`: it has a data volume) is pinned
  to exactly one node, with one task: Swarm volumes are node-local, and a task rescheduled
  elsewhere would come up on an empty volume;
- a service that publishes a port (nginx, host mode: there is no routing mesh) runs at most
  one task per node, so it cannot have more replicas than the nodes it may run on;
- a service that binds folders of its host (node-exporter) observes that host: one task on
  every node it may run on (global mode), unless the stack file gives it a replica count;
- every other service is replicated: ``replicas`` tasks (1 unless told) over the nodes it may
  run on (all of them unless told). Exporters of a store are such services: they reach the
  store over the overlay network by its name, so they need not share its node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kbinfra.errors import SpecError
from kbinfra.spec.swarm import NodeChoice, SwarmNode, SwarmNodes

if TYPE_CHECKING:
    from kbinfra.service import ContainerSpec, PortBinding
    from kbinfra.spec.yamlfile import YamlDocument
    from kbinfra.stack import Stack


class Placement(NamedTuple):
    """Where one service's tasks run."""

    service: str
    nodes: tuple[str, ...]  # the nodes its tasks may land on
    constraints: tuple[str, ...]  # Swarm placement constraints saying exactly that
    replicas: int | None  # None: global, one task on each of ``nodes``
    pinned: bool  # keeps state: one task, on one node
    max_per_node: int = 0  # 0: no limit
    #: A store that clusters by itself: one pinned Swarm service on each of these nodes.
    peers: tuple[str, ...] = ()
    #: The node of its streaming replica (a store that has one), if the stack file asks.
    replica: str | None = None

    def tasks_on_each_node(self) -> int:
        """The tasks one of ``nodes`` may hold on a healthy cluster (Swarm spreads tasks of a
        service evenly over the nodes it may use)."""
        if self.replicas is None:
            return 1
        return -(-self.replicas // len(self.nodes))


def published_ports(spec: ContainerSpec) -> list[PortBinding]:
    """The ports a Swarm task publishes (in host mode): those its container publishes beyond
    loopback on one host; a loopback one is for that host's own tools only."""
    return [port for port in spec.ports if port.host_ip != "127.0.0.1"]


def _where(doc: YamlDocument | None, service: str, *keys: str | int) -> str | None:
    return doc.where(("swarm", "services", service, *keys)) if doc is not None else None


def candidate_nodes(choice: NodeChoice | None, nodes: Sequence[SwarmNode]) -> list[SwarmNode]:
    """The nodes ``choice`` allows, in the node file's order (all nodes when it is None)."""
    if choice is None:
        return list(nodes)
    if choice.nodes is not None:
        return [node for node in nodes if node.name in choice.nodes]
    wanted = choice.labels or {}
    return [n for n in nodes if all(n.labels.get(k) == v for k, v in wanted.items())]


def constraints_for(
    choice: NodeChoice | None, candidates: Sequence[SwarmNode], nodes: Sequence[SwarmNode]
) -> tuple[str, ...]:
    """Swarm constraints for ``choice``: labels stay labels; one node is a hostname rule;
    several nodes are "none of the others" (Swarm constraints are ANDed, there is no OR)."""
    if choice is None:
        return ()
    if choice.labels is not None:
        return tuple(f"node.labels.{k} == {v}" for k, v in sorted(choice.labels.items()))
    if len(candidates) == 1:
        return (f"node.hostname == {candidates[0].name}",)
    names = {node.name for node in candidates}
    return tuple(f"node.hostname != {n.name}" for n in nodes if n.name not in names)


def stack_placements(stack: Stack, doc: YamlDocument | None = None) -> dict[str, Placement]:
    """Every enabled service's placement, in deployment order; a rule broken is a one-line
    :class:`SpecError` naming the line of the stack file (when ``doc`` is given)."""
    swarm = stack.spec.swarm
    if swarm is None:
        raise SpecError(
            "this stack has no swarm: section (target is not swarm)",
            where=str(stack.dir / "kbinfra.yaml"),
            fix="set target: swarm and a swarm: section (kbinfra init --target swarm --nodes)",
        )
    return {name: service_placement(stack, name, swarm, doc) for name in stack.services}


def service_placement(
    stack: Stack, name: str, swarm: SwarmNodes, doc: YamlDocument | None = None
) -> Placement:
    service = stack.services[name]
    spec = stack.containers[name]
    asked = stack.spec.placement(name)
    _check_named_nodes(name, asked.placement, swarm, doc)
    if asked.peers is not None:
        return _peers(
            stack, name, asked.peers, swarm, doc, has_placement=asked.placement is not None
        )
    candidates = candidate_nodes(asked.placement, swarm.nodes)
    if not candidates:
        wanted = asked.placement.labels if asked.placement else None
        labels = ", ".join(f"{k}={v}" for k, v in sorted((wanted or {}).items()))
        raise SpecError(
            f"swarm.services.{name}: no node carries the labels {labels}",
            where=_where(doc, name, "placement"),
            fix="set those labels on a node in swarm.nodes, or place it by nodes: [NAME]",
        )
    names = tuple(node.name for node in candidates)
    constraints = constraints_for(asked.placement, candidates, swarm.nodes)
    if asked.replica is not None:
        return _with_replica(stack, name, asked.replica.node, swarm, doc)
    if service.keeps_state(stack.contexts[name]):
        return _pinned(
            name,
            asked.replicas,
            choice=asked.placement,
            names=names,
            constraints=constraints,
            doc=doc,
        )
    publishes = bool(published_ports(spec))
    if asked.replicas is None and spec.binds:
        return Placement(name, names, constraints, None, pinned=False)
    replicas = asked.replicas or 1
    if publishes and replicas > len(names):
        raise SpecError(
            f"swarm.services.{name}: {replicas} replicas on {len(names)} node(s), but it "
            "publishes its ports in host mode: one task per node at most",
            where=_where(doc, name, "replicas"),
            fix=f"set replicas: {len(names)} or fewer, or let it run on more nodes",
        )
    return Placement(
        name, names, constraints, replicas, pinned=False, max_per_node=1 if publishes else 0
    )


def _with_replica(
    stack: Stack, name: str, node: str, swarm: SwarmNodes, doc: YamlDocument | None
) -> Placement:
    """A pinned primary and its streaming replica on another node."""
    asked = stack.spec.placement(name)
    if stack.services[name].replica_container(stack.contexts[name]) is None:
        raise SpecError(
            f"swarm.services.{name}.replica: {name} has no streaming replica",
            where=_where(doc, name, "replica"),
            fix="remove replica: (PostgreSQL and Redis have one)",
        )
    known = [n.name for n in swarm.nodes]
    if node not in known:
        raise SpecError(
            f"swarm.services.{name}.replica names node {node!r}, which is not one of "
            f"swarm.nodes ({', '.join(known)})",
            where=_where(doc, name, "replica", "node"),
            fix="name a node of swarm.nodes, or add that node there",
        )
    candidates = candidate_nodes(asked.placement, swarm.nodes)
    names = tuple(n.name for n in candidates)
    primary = _pinned(
        name,
        asked.replicas,
        choice=asked.placement,
        names=names,
        constraints=constraints_for(asked.placement, candidates, swarm.nodes),
        doc=doc,
    )
    if node == primary.nodes[0]:
        raise SpecError(
            f"swarm.services.{name}.replica is on {node}, the primary's node: a replica is "
            "there to survive the loss of that node",
            where=_where(doc, name, "replica", "node"),
            fix="put the replica on another node",
        )
    return primary._replace(replica=node)


def _peers(
    stack: Stack,
    name: str,
    peers: Sequence[str],
    swarm: SwarmNodes,
    doc: YamlDocument | None,
    *,
    has_placement: bool,
) -> Placement:
    service = stack.services[name]
    if service.peer_arguments(list(peers), 0) is None:
        raise SpecError(
            f"swarm.services.{name}.peers: {name} does not cluster by itself",
            where=_where(doc, name, "peers"),
            fix="remove peers: and pin it with placement: {nodes: [NODE]}",
        )
    if has_placement:
        raise SpecError(
            f"swarm.services.{name}: peers: pins one peer on each node it names; "
            "placement: says the same thing again",
            where=_where(doc, name, "placement"),
            fix="keep peers: and remove placement:",
        )
    known = [node.name for node in swarm.nodes]
    for index, node in enumerate(peers):
        if node not in known:
            raise SpecError(
                f"swarm.services.{name}.peers names node {node!r}, which is not one of "
                f"swarm.nodes ({', '.join(known)})",
                where=_where(doc, name, "peers", index),
                fix="name a node of swarm.nodes, or add that node there",
            )
    return Placement(name, tuple(peers), (), 1, pinned=True, peers=tuple(peers))


def _check_named_nodes(
    name: str, choice: NodeChoice | None, swarm: SwarmNodes, doc: YamlDocument | None
) -> None:
    known = [node.name for node in swarm.nodes]
    for index, node in enumerate(choice.nodes or [] if choice else []):
        if node not in known:
            raise SpecError(
                f"swarm.services.{name}.placement names node {node!r}, which is not one of "
                f"swarm.nodes ({', '.join(known)})",
                where=_where(doc, name, "placement", "nodes", index),
                fix="name a node of swarm.nodes, or add that node there",
            )


def _pinned(
    name: str,
    replicas: int | None,
    *,
    choice: NodeChoice | None,
    names: tuple[str, ...],
    constraints: tuple[str, ...],
    doc: YamlDocument | None,
) -> Placement:
    why = "it keeps its data in a volume, and Swarm volumes are node-local"
    if choice is None or len(names) != 1:
        said = "no placement" if choice is None else f"{len(names)} nodes ({', '.join(names)})"
        raise SpecError(
            f"swarm.services.{name}: {name} must be pinned to exactly one node, not {said}: "
            f"{why} (a task rescheduled to another node would start on an empty volume)",
            where=_where(doc, name, "placement") if choice else _where(doc, name),
            fix=f"set swarm.services.{name}.placement: {{nodes: [NODE]}}",
        )
    if replicas not in (None, 1):
        raise SpecError(
            f"swarm.services.{name}: replicas {replicas}, but {why}: it runs one task",
            where=_where(doc, name, "replicas"),
            fix="remove replicas (a store's replica is swarm.services.NAME.replica, "
            "where the service supports one)",
        )
    return Placement(name, names, constraints, 1, pinned=True)


def spread_by_capacity(nodes: Sequence[SwarmNode], demands: Mapping[str, int]) -> dict[str, str]:
    """A node for each service of ``demands`` (memory in MiB), largest first, each onto the
    node with the most memory still free: how init spreads the stateful services."""
    free = {node.name: node.memory_mb for node in nodes}
    order = {node.name: index for index, node in enumerate(nodes)}
    chosen: dict[str, str] = {}
    for service, memory in sorted(demands.items(), key=lambda item: (-item[1], item[0])):
        node = max(free, key=lambda n: (free[n], -order[n]))
        chosen[service] = node
        free[node] -= memory
    return chosen


def replacement_gap(stack: Stack, name: str, placement: Placement) -> str | None:
    """Why a new task of ``name`` cannot take over from its old one with no failed request
    (as a new value of a secret it reads asks), or None: its new task starts beside the
    old one, which is taken out of DNS before it stops (start-first, no host port)."""
    if placement.pinned or placement.peers:
        return f"{name} keeps its data on one node, so its one task stops before the new one starts"
    if published_ports(stack.containers[name]):
        return (
            f"{name} publishes its ports in host mode, so its task on a node stops before the "
            "new one takes the ports"
        )
    return None
