"""What ``kbinfra init --target swarm --nodes FILE`` writes into the stack file's ``swarm:``
section: the nodes read from the node file, and where each service runs by default.

The defaults: every service that keeps state (:meth:`Service.keeps_state`) is pinned to one
node, the largest first, each onto the node with the most memory still free; a service that
serves requests (nginx routes to it, or it publishes a port) gets two replicas on a cluster
of two nodes or more; one that binds folders of its host runs on every node (global); every
other one (the exporters) runs one task anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.errors import SpecError
from kbinfra.spec.swarm import SwarmNodes
from kbinfra.spec.yamlfile import read_yaml, validate
from kbinfra.swarm.placement import published_ports, spread_by_capacity

if TYPE_CHECKING:
    from kbinfra.stack import Stack

#: Replicas init gives a service that serves requests, on a cluster with that many nodes.
SERVING_REPLICAS = 2


def read_node_file(path: Path) -> SwarmNodes:
    """The node file at ``path``, validated like a stack file (one line, file:line); its
    ``known_hosts`` and ``identity`` made absolute (relative ones are relative to it)."""
    doc = read_yaml(
        path,
        what="node file",
        fix_missing="pass --nodes the file `scripts/testbed cluster up` printed, or your own",
    )
    try:
        nodes = validate(SwarmNodes, doc.data, doc, what="node file")
    except SpecError as error:
        raise SpecError(
            error.what,
            where=error.where,
            fix=error.fix or "fix that line of the node file (its keys: docs/swarm.md)",
        ) from None
    here = path.resolve().parent
    paths = {
        key: str((here / value).resolve()) if not Path(value).is_absolute() else value
        for key in ("known_hosts", "identity")
        if (value := getattr(nodes, key)) is not None
    }
    return nodes.model_copy(update=paths)


def default_services(stack: Stack, nodes: SwarmNodes) -> dict[str, dict[str, Any]]:
    """``swarm.services`` as init writes it for ``stack``'s enabled services."""
    contexts = stack.contexts
    stateful = {
        name: stack.containers[name].memory_mb
        for name, service in stack.services.items()
        if service.keeps_state(contexts[name])
    }
    pinned = spread_by_capacity(nodes.nodes, stateful)
    serving_replicas = SERVING_REPLICAS if len(nodes.nodes) >= SERVING_REPLICAS else 1
    written: dict[str, dict[str, Any]] = {}
    for name, service in stack.services.items():
        spec = stack.containers[name]
        if name in pinned:
            written[name] = {"placement": {"nodes": [pinned[name]]}}
        elif spec.binds:
            continue  # global: one task on every node
        else:
            serves = bool(service.routes(contexts[name]) or published_ports(spec))
            written[name] = {"replicas": serving_replicas if serves else 1}
    return written


def swarm_section(nodes: SwarmNodes, services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``swarm:`` section: the node file's values, as validated, and the placements."""
    section: dict[str, Any] = {}
    if nodes.known_hosts is not None:
        section["known_hosts"] = nodes.known_hosts
    if nodes.identity is not None:
        section["identity"] = nodes.identity
    section["nodes"] = [node.model_dump(mode="json") for node in nodes.nodes]
    section["services"] = services
    return section
