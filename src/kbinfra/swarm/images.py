"""Put a stack's images on the Swarm nodes that will run them, without a registry.

Which nodes may run a service follows from its placement constraints and the nodes' role
and labels (:func:`images_per_node`, pure). Each such node that lacks an image, by image ID,
gets it streamed from the engine that has it (this machine's, saved there and loaded over
the node's own SSH connection by :func:`kbinfra.images.transfer.copy_images`); a node that
has it is not touched. A node that is down is skipped and said so: Swarm does not place a
task there until it is back, and the next apply gives it the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbinfra.progress import SILENT, Progress
from kbinfra.swarm.desired import SwarmStack
from kbinfra.swarm.state import NodeFacts, eligible_nodes

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.images.transfer import CopyResult
    from kbinfra.targets.swarm import SwarmTarget


def images_per_node(stack: SwarmStack, nodes: Sequence[NodeFacts]) -> dict[str, list[str]]:
    """Node name -> the images (sorted) of the services its role and labels allow there."""
    wanted: dict[str, set[str]] = {}
    for service in stack.services:
        for node in eligible_nodes(nodes, service.constraints):
            wanted.setdefault(node.name, set()).add(service.image)
    return {name: sorted(images) for name, images in sorted(wanted.items())}


def node_states(nodes: Sequence[NodeFacts]) -> dict[str, str]:
    """Node name -> its state, ``ready`` if any Swarm entry of that name is: a node that
    left and joined again is listed twice by the manager, its old entry down."""
    states: dict[str, str] = {}
    for node in nodes:
        if states.get(node.name) != "ready":
            states[node.name] = node.state
    return states


@dataclass(frozen=True)
class ImageDistribution:
    copies: tuple[CopyResult, ...]
    skipped: Mapping[str, str]  # node -> why (down)

    @property
    def copied(self) -> dict[str, list[str]]:
        """Node -> the images it was given now (empty when every node had them)."""
        return {c.target: c.copied for c in self.copies if c.copied}

    def as_json(self) -> dict[str, Any]:
        return {
            "copies": [c.as_json() for c in self.copies],
            "skipped": dict(self.skipped),
        }


def distribute_images(
    source: DockerClient,
    target: SwarmTarget,
    stack: SwarmStack,
    nodes: Sequence[NodeFacts],
    progress: Progress = SILENT,
) -> ImageDistribution:
    """Give every node that may run a service of ``stack`` the images it lacks."""
    from kbinfra.images.transfer import copy_images  # noqa: PLC0415

    copies = []
    skipped = {}
    known = {node.name for node in target.nodes}
    states = node_states(nodes)
    for name, images in images_per_node(stack, nodes).items():
        if name not in known:
            skipped[name] = "not in the node file: kbinfra cannot reach it"
            progress.note("images", f"{name}: skipped, not in the node file")
            continue
        if states[name] != "ready":
            skipped[name] = f"node is {states[name]}"
            progress.note("images", f"{name}: skipped, the node is {states[name]}")
            continue
        copies.append(
            copy_images(source, target.node_client(name), images, progress, target_name=name)
        )
    return ImageDistribution(tuple(copies), skipped)
