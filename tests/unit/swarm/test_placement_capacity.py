"""Placement rules and the capacity check of a Swarm stack: pure decisions, one line each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kbinfra.errors import SpecError
from kbinfra.spec.stack import load_stack
from kbinfra.spec.swarm import SwarmNode
from kbinfra.stack import Stack, open_stack
from kbinfra.swarm.capacity import swarm_fit
from kbinfra.swarm.placement import Placement, spread_by_capacity, stack_placements
from tests.conftest import edit_stack_file


def _edited(swarm_dir: Callable[..., Path], services: dict[str, object]) -> Path:
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": services}})
    return folder


def test_a_stateful_service_on_two_nodes_is_refused_saying_why(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = _edited(swarm_dir, {"postgres": {"placement": {"nodes": ["node1", "node2"]}}})
    with pytest.raises(SpecError) as caught:
        open_stack(folder)
    message = caught.value.one_line()
    assert "postgres must be pinned to exactly one node" in message
    assert "Swarm volumes are node-local" in message
    _, doc = load_stack(folder)
    assert message.startswith(doc.where(("swarm", "services", "postgres", "placement")) + ":")


def test_a_stateful_service_without_placement_or_with_replicas_is_refused(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    data = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    data["swarm"]["services"]["redis"] = {}
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match="redis must be pinned to exactly one node, not no"):
        open_stack(folder)
    folder = _edited(swarm_dir, {"qdrant": {"replicas": 3}})
    with pytest.raises(SpecError, match="replicas 3, but it keeps its data in a volume"):
        open_stack(folder)


def test_a_stateful_service_may_be_pinned_by_labels_that_match_one_node(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    labels = {"placement": {"nodes": None, "labels": {"kbinfra.testbed.node": "2"}}}
    stack = make_swarm_stack(overrides={"swarm": {"services": {"postgres": labels}}})
    placement = stack_placements(stack)["postgres"]
    assert placement.nodes == ("node2",)
    assert placement.constraints == ("node.labels.kbinfra.testbed.node == 2",)
    assert placement.pinned and placement.replicas == 1


def test_labels_no_node_carries_are_refused(swarm_dir: Callable[..., Path]) -> None:
    folder = _edited(swarm_dir, {"nginx": {"placement": {"labels": {"kb.tier": "edge"}}}})
    with pytest.raises(SpecError, match=r"no node carries the labels kb\.tier=edge"):
        open_stack(folder)


def test_nginx_publishes_in_host_mode_so_at_most_one_task_per_node(
    swarm_dir: Callable[..., Path], make_swarm_stack: Callable[..., Stack]
) -> None:
    folder = _edited(swarm_dir, {"nginx": {"replicas": 2, "placement": {"nodes": ["node1"]}}})
    with pytest.raises(SpecError, match="publishes its ports in host mode"):
        open_stack(folder)
    stack = make_swarm_stack(overrides={"swarm": {"services": {"nginx": {"replicas": 3}}}})
    nginx = stack_placements(stack)["nginx"]
    assert (nginx.replicas, nginx.max_per_node, nginx.constraints) == (3, 1, ())


def test_several_named_nodes_are_none_of_the_others(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    two = {"placement": {"nodes": ["node1", "node3"]}, "replicas": 2}
    stack = make_swarm_stack(overrides={"swarm": {"services": {"unstructured": two}}})
    placement = stack_placements(stack)["unstructured"]
    assert placement.nodes == ("node1", "node3")
    assert placement.constraints == ("node.hostname != node2",)
    assert not placement.pinned


def test_exporters_run_anywhere_and_stateless_services_replicate(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    placements = stack_placements(make_swarm_stack())
    exporter = placements["postgres-exporter"]
    assert exporter.nodes == ("node1", "node2", "node3") and exporter.constraints == ()
    assert placements["embeddings"].replicas == 2
    assert placements["postgres"].constraints == (
        f"node.hostname == {placements['postgres'].nodes[0]}",
    )


def test_spread_by_capacity_puts_the_largest_first_on_the_freest_node() -> None:
    def node(name: str, memory_gb: float) -> SwarmNode:
        return SwarmNode(
            name=name, address=f"ssh://u@{name}", cpus=4, memory_gb=memory_gb, storage_gb=10
        )

    nodes = [node("a", 8), node("b", 16), node("c", 8)]
    chosen = spread_by_capacity(nodes, {"big": 12_000, "mid": 4000, "small": 1000, "tiny": 500})
    assert chosen == {"big": "b", "mid": "a", "small": "c", "tiny": "c"}


def test_the_minimum_profile_over_commits_the_test_beds_small_nodes_naming_them(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    fit = swarm_fit(stack, stack_placements(stack))
    assert not fit.fits
    qdrant_home = stack_placements(stack)["qdrant"].nodes[0]
    line = next(r for r in fit.refusals() if r.startswith(f"node {qdrant_home} "))
    assert "is over-committed (memory" in line and "qdrant" in line
    assert "storage" in line  # 150 GB of Qdrant on a 20 GB node
    assert "\n" not in fit.refusal()
    assert fit.as_json()["fits"] is False


def test_a_profile_that_fits_the_nodes_passes_and_replicas_are_charged_per_node(
    tmp_path: Path, make_swarm_stack: Callable[..., Stack]
) -> None:
    small = tmp_path / "small.yaml"
    small.write_text(
        "extends: minimum\nname: small\nhost: {cpus: 6, memory: 21GB, storage: 60GB}\n"
        "services:\n"
        "  qdrant: {cpus: 0.5, memory: 1GB, storage: 5GB}\n"
        "  postgres: {cpus: 0.5, memory: 1GB, storage: 5GB}\n"
        "  redis: {cpus: 0.25, memory: 512MB, storage: 1GB}\n"
        "  embeddings: {cpus: 0.5, memory: 2GB, storage: 2GB}\n"
        "  unstructured: {cpus: 0.5, memory: 1GB, storage: 2GB}\n"
        "  app: {cpus: 0.5, memory: 512MB, storage: 2GB}\n"
        "  monitoring: {cpus: 0.5, memory: 1GB, storage: 5GB}\n"
    )
    stack = make_swarm_stack(overrides={"profile": str(small)})
    placements = stack_placements(stack)
    fit = swarm_fit(stack, placements)
    assert fit.fits, fit.refusals()
    # Two embeddings tasks over three nodes: at most one on each node.
    for load in fit.loads:
        assert dict(load.services)["embeddings"] == 1
    four = placements["embeddings"]._replace(replicas=4)
    assert four.tasks_on_each_node() == 2
    assert Placement("x", ("a",), (), None, pinned=False).tasks_on_each_node() == 1


def test_commands_that_reach_a_target_refuse_a_swarm_stack_instead_of_the_local_engine(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    from kbinfra.errors import KbinfraError  # noqa: PLC0415
    from kbinfra.targets import open_target  # noqa: PLC0415

    stack = make_swarm_stack()
    with pytest.raises(KbinfraError, match="does not work on a Swarm stack yet"):
        open_target(stack.spec, stack.dir)
