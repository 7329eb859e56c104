"""Create the Swarm of a node file, or adopt the one its nodes already form.

What to do is decided from each node's own view (``docker info``'s ``Swarm`` part) and the
adopted Swarm's member list, without touching a node (:func:`choose_anchor`,
:func:`plan_joins`, :func:`node_spec_change`); :func:`ensure_swarm` gathers those facts and
does it: ``swarm init`` on the first manager (advertising its node address) when no node is
in a Swarm, a join for every node not in it yet (tokens read from the manager, never shown),
and each node's role and labels set from the node file. A node that is in another Swarm is
refused before anything is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.progress import SILENT, Progress

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.targets.swarm import SwarmNodeAddress, SwarmTarget

SWARM_PORT = 2377


@dataclass(frozen=True)
class NodeSwarmView:
    """What one node's engine says of its Swarm membership."""

    name: str
    state: str  # LocalNodeState: inactive, pending, active, error, locked
    node_id: str = ""
    cluster_id: str = ""  # known to managers only
    is_manager: bool = False  # ControlAvailable
    error: str = ""

    @classmethod
    def from_info(cls, name: str, info: Mapping[str, Any]) -> NodeSwarmView:
        swarm = info.get("Swarm") or {}
        cluster = swarm.get("Cluster") or {}
        return cls(
            name=name,
            state=str(swarm.get("LocalNodeState") or "inactive"),
            node_id=str(swarm.get("NodeID") or ""),
            cluster_id=str(cluster.get("ID") or ""),
            is_manager=bool(swarm.get("ControlAvailable")),
            error=str(swarm.get("Error") or ""),
        )


@dataclass(frozen=True)
class Anchor:
    """The manager that carries the Swarm: one already in it, or the one to ``init``."""

    name: str
    init: bool


def choose_anchor(nodes: Sequence[SwarmNodeAddress], views: Mapping[str, NodeSwarmView]) -> Anchor:
    """The first manager of the node file already managing a Swarm, else the first manager
    (to ``swarm init``). A node stuck joining or locked is refused."""
    for node in nodes:
        view = views[node.name]
        if view.state not in ("inactive", "active"):
            detail = f": {view.error}" if view.error else ""
            raise KbinfraError(
                f"node {node.name}'s engine is in Swarm state {view.state!r}{detail}",
                where=str(node.address.url),
                fix="unlock it (`docker swarm unlock`) or take it out (`docker swarm leave "
                "--force`) on that node, then run it again",
            )
    for node in nodes:
        view = views[node.name]
        if node.role == "manager" and view.state == "active" and view.is_manager:
            return Anchor(node.name, init=False)
    active = [node.name for node in nodes if views[node.name].state == "active"]
    if active:
        raise KbinfraError(
            f"{', '.join(active)} in a Swarm whose managers are not in the node file",
            fix="add a manager of that Swarm to the node file, or `docker swarm leave` on "
            "those nodes",
        )
    first = next(node for node in nodes if node.role == "manager")
    return Anchor(first.name, init=True)


def plan_joins(
    nodes: Sequence[SwarmNodeAddress],
    views: Mapping[str, NodeSwarmView],
    anchor: str,
    members: frozenset[str],
    cluster_id: str,
) -> list[SwarmNodeAddress]:
    """The nodes to join to the anchor's Swarm (``members``: its node IDs). A node in another
    Swarm is an error naming it, before any node is changed."""
    joins = []
    for node in nodes:
        view = views[node.name]
        if node.name == anchor:
            continue
        if view.state == "inactive":
            joins.append(node)
        elif view.node_id not in members or (view.cluster_id and view.cluster_id != cluster_id):
            other = f" (cluster {view.cluster_id[:12]})" if view.cluster_id else ""
            raise KbinfraError(
                f"node {node.name} is in another Swarm{other}, not in {anchor}'s "
                f"(cluster {cluster_id[:12]})",
                where=str(node.address.url),
                fix=f"run `docker swarm leave --force` on {node.name} to let kbinfra join it, "
                "or take it out of the node file",
            )
    return joins


def node_spec_change(spec: Mapping[str, Any], node: SwarmNodeAddress) -> dict[str, Any] | None:
    """The node spec that gives ``node`` its role and labels from the node file (labels it
    has beyond those are kept), or None when it has them already."""
    labels = dict(spec.get("Labels") or {})
    wanted = {**labels, **node.labels}
    if spec.get("Role") == node.role and labels == wanted:
        return None
    return {**spec, "Role": node.role, "Labels": wanted}


@dataclass(frozen=True)
class SwarmFormation:
    """What :func:`ensure_swarm` found and did."""

    cluster_id: str
    manager: str
    created: bool
    joined: tuple[str, ...]
    updated: tuple[str, ...]  # nodes whose role or labels were set
    node_ids: Mapping[str, str]  # node file name -> Swarm node ID

    def as_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster_id,
            "manager": self.manager,
            "created": self.created,
            "joined": list(self.joined),
            "updated": list(self.updated),
            "nodes": dict(self.node_ids),
        }


def _api_error(what: str, node: SwarmNodeAddress, error: Exception, *secrets: str) -> KbinfraError:
    message = str(getattr(error, "explanation", None) or error)
    for secret in secrets:
        message = message.replace(secret, "<token>")
    return KbinfraError(f"{what}: {message}", where=node.address.url)


def ensure_swarm(target: SwarmTarget, progress: Progress = SILENT) -> SwarmFormation:
    """Create or adopt the Swarm of ``target``'s nodes; every node must be reachable."""
    import docker.errors  # noqa: PLC0415

    target.connect_all()
    views = {
        node.name: NodeSwarmView.from_info(node.name, target.node_client(node.name).info())
        for node in target.nodes
    }
    anchor = choose_anchor(target.nodes, views)
    anchor_node = target.node(anchor.name)
    manager = target.node_client(anchor.name)
    host = anchor_node.address.host
    if anchor.init:
        progress.note("swarm", f"swarm init on {anchor.name} ({host})")
        try:
            manager.swarm.init(advertise_addr=host, listen_addr=f"{host}:{SWARM_PORT}")
        except docker.errors.APIError as error:
            raise _api_error("swarm init failed", anchor_node, error) from None
    else:
        progress.note("swarm", f"adopting the Swarm managed by {anchor.name}")
    target.use_manager(anchor.name)
    manager.swarm.reload()
    cluster_id = str(manager.swarm.attrs["ID"])
    members = frozenset(str(n.id) for n in manager.nodes.list())
    joins = plan_joins(target.nodes, views, anchor.name, members, cluster_id)
    tokens = manager.swarm.attrs["JoinTokens"]
    for node in joins:
        token = str(tokens["Manager" if node.role == "manager" else "Worker"])
        progress.note("swarm", f"{node.name} joins as {node.role}")
        address = node.address.host
        try:
            target.node_client(node.name).swarm.join(
                remote_addrs=[f"{host}:{SWARM_PORT}"],
                join_token=token,
                advertise_addr=address,
                listen_addr=f"{address}:{SWARM_PORT}",
            )
        except docker.errors.APIError as error:
            raise _api_error("joining the Swarm failed", node, error, token) from None
    node_ids = {
        node.name: str(target.node_client(node.name).info()["Swarm"]["NodeID"])
        for node in target.nodes
    }
    updated = _set_roles_and_labels(manager, target, node_ids)
    return SwarmFormation(
        cluster_id=cluster_id,
        manager=anchor.name,
        created=anchor.init,
        joined=tuple(node.name for node in joins),
        updated=tuple(updated),
        node_ids=node_ids,
    )


def _set_roles_and_labels(
    manager: DockerClient, target: SwarmTarget, node_ids: Mapping[str, str]
) -> list[str]:
    import docker.errors  # noqa: PLC0415

    updated = []
    # The manager carrying the API last: demoting it first would cut the branch it sits on.
    order = sorted(target.nodes, key=lambda n: n.name == target.manager_name)
    for node in order:
        swarm_node = manager.nodes.get(node_ids[node.name])
        spec = node_spec_change(swarm_node.attrs["Spec"], node)
        if spec is None:
            continue
        try:
            swarm_node.update(spec)
        except docker.errors.APIError as error:
            raise _api_error("setting the node's role and labels failed", node, error) from None
        updated.append(node.name)
    return updated


def swarm_node_names(manager: DockerClient, target: SwarmTarget) -> dict[str, str]:
    """Swarm node ID -> node file name, by the address each node advertises (its hostname
    when no address matches), from the manager alone: a node that is down still has one."""
    by_address = {node.address.host: node.name for node in target.nodes}
    by_hostname = {node.name for node in target.nodes}
    names = {}
    for swarm_node in manager.nodes.list():
        attrs = swarm_node.attrs
        address = str((attrs.get("Status") or {}).get("Addr") or "")
        hostname = str((attrs.get("Description") or {}).get("Hostname") or "")
        if address in by_address:
            names[str(swarm_node.id)] = by_address[address]
        elif hostname in by_hostname:
            names[str(swarm_node.id)] = hostname
        else:
            names[str(swarm_node.id)] = hostname or str(swarm_node.id)[:12]
    return names
