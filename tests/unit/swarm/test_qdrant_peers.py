"""Qdrant's distributed mode on a Swarm: rendered for ``peers:``, off for a single peer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kbinfra.errors import SpecError
from kbinfra.render import render_stack
from kbinfra.stack import Stack, open_stack
from kbinfra.swarm.build import swarm_stack
from kbinfra.swarm.compose import SWARM_STACK_FILE
from tests.conftest import edit_stack_file

PEERS = {
    "swarm": {"services": {"qdrant": {"placement": None, "peers": ["node1", "node2", "node3"]}}}
}


def _qdrant_config(stack: Stack) -> dict[str, object]:
    text = next(f.text for f in render_stack(stack) if f.path == "qdrant/config.yaml")
    loaded: dict[str, object] = yaml.safe_load(text)
    return loaded


def test_a_single_pinned_qdrant_renders_cluster_mode_off(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    assert _qdrant_config(stack)["cluster"] == {"enabled": False}
    qdrant = [s for s in swarm_stack(stack, stack.rendered).services if s.service == "qdrant"]
    assert [s.name for s in qdrant] == ["kb_qdrant"]
    assert qdrant[0].command == ["./entrypoint.sh"]


def test_peers_render_distributed_mode_one_pinned_service_per_peer(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack(overrides=PEERS)
    config = _qdrant_config(stack)
    assert config["cluster"] == {"enabled": True, "p2p": {"port": 6335}}
    assert config["storage"]["collection"] == {  # type: ignore[index]
        "replication_factor": 2,
        "write_consistency_factor": 1,
    }
    peers = [s for s in swarm_stack(stack, stack.rendered).services if s.service == "qdrant"]
    assert [s.name for s in peers] == ["kb_qdrant-1", "kb_qdrant-2", "kb_qdrant-3"]
    assert [s.hostname for s in peers] == ["qdrant-1", "qdrant-2", "qdrant-3"]
    assert [s.constraints for s in peers] == [
        ("node.hostname == node1",),
        ("node.hostname == node2",),
        ("node.hostname == node3",),
    ]
    assert peers[0].command == ["./entrypoint.sh", "--uri", "http://qdrant-1:6335"]
    assert peers[2].command == [
        "./entrypoint.sh",
        "--bootstrap",
        "http://qdrant-1:6335",
        "--uri",
        "http://qdrant-3:6335",
    ]
    assert all(s.ports == () for s in peers)  # 6335 on the overlay only
    assert all(s.update.order == "stop-first" and s.replicas == 1 for s in peers)
    assert len({s.config_hash for s in peers}) == 3
    document = yaml.safe_load(
        next(f.text for f in render_stack(stack) if f.path == SWARM_STACK_FILE)
    )
    assert {"qdrant-1", "qdrant-2", "qdrant-3"} <= set(document["services"])
    assert "qdrant" not in document["services"]


def test_peers_of_a_service_that_does_not_cluster_are_refused(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    edit_stack_file(
        folder,
        {"swarm": {"services": {"postgres": {"placement": None, "peers": ["node1", "node2"]}}}},
    )
    with pytest.raises(SpecError, match="postgres does not cluster by itself"):
        open_stack(folder)


def test_peers_and_a_placement_at_once_or_a_node_twice_are_refused(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"qdrant": {"peers": ["node1", "node2"]}}}})
    with pytest.raises(SpecError, match="placement: says the same thing again"):
        open_stack(folder)
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"qdrant": {"peers": ["node1", "node1"]}}}})
    with pytest.raises(SpecError, match="names a node twice"):
        open_stack(folder)
