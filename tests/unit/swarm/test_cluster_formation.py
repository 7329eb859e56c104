"""Create or adopt: what to do is decided from each node's own view, without a node."""

from __future__ import annotations

import pytest

from kbinfra.errors import KbinfraError
from kbinfra.swarm.cluster import NodeSwarmView, choose_anchor, node_spec_change, plan_joins
from kbinfra.targets.ssh import SSHAddress
from kbinfra.targets.swarm import SwarmNodeAddress

NODES = [
    SwarmNodeAddress("n1", SSHAddress("kb", "10.0.0.11"), "manager", {"tier": "data"}),
    SwarmNodeAddress("n2", SSHAddress("kb", "10.0.0.12"), "manager"),
    SwarmNodeAddress("n3", SSHAddress("kb", "10.0.0.13"), "worker", {"tier": "web"}),
]


def views(**states: NodeSwarmView) -> dict[str, NodeSwarmView]:
    found = {n.name: NodeSwarmView(n.name, "inactive") for n in NODES}
    found.update(states)
    return found


def manager_of(cluster: str, node: str, node_id: str) -> NodeSwarmView:
    return NodeSwarmView(node, "active", node_id, cluster, is_manager=True)


def test_no_node_in_a_swarm_inits_on_the_first_manager() -> None:
    workers_first = [NODES[2], *NODES[:2]]
    assert choose_anchor(workers_first, views()).name == "n1"
    assert choose_anchor(workers_first, views()).init is True


def test_a_swarm_one_manager_runs_is_adopted_and_the_others_join_it() -> None:
    found = views(n2=manager_of("C1", "n2", "id2"))
    anchor = choose_anchor(NODES, found)
    assert (anchor.name, anchor.init) == ("n2", False)
    joins = plan_joins(NODES, found, "n2", frozenset({"id2"}), "C1")
    assert [n.name for n in joins] == ["n1", "n3"]


def test_members_of_the_adopted_swarm_do_not_join_again() -> None:
    found = views(
        n1=manager_of("C1", "n1", "id1"),
        n3=NodeSwarmView("n3", "active", "id3"),  # a worker: no cluster ID of its own
    )
    assert plan_joins(NODES, found, "n1", frozenset({"id1", "id3"}), "C1") == [NODES[1]]


def test_a_node_in_another_swarm_is_refused_naming_it() -> None:
    found = views(n1=manager_of("C1", "n1", "id1"), n2=manager_of("C2", "n2", "idX"))
    with pytest.raises(KbinfraError, match=r"node n2 is in another Swarm") as refused:
        plan_joins(NODES, found, "n1", frozenset({"id1"}), "C1")
    assert "docker swarm leave --force" in str(refused.value)


def test_a_worker_of_a_swarm_whose_managers_are_unlisted_is_refused() -> None:
    with pytest.raises(KbinfraError, match="whose managers are not in the node file"):
        choose_anchor(NODES, views(n3=NodeSwarmView("n3", "active", "id3")))


@pytest.mark.parametrize("state", ["pending", "locked", "error"])
def test_a_node_stuck_joining_or_locked_is_refused(state: str) -> None:
    with pytest.raises(KbinfraError, match=f"Swarm state '{state}'"):
        choose_anchor(NODES, views(n2=NodeSwarmView("n2", state)))


def test_node_info_without_a_swarm_reads_as_inactive() -> None:
    view = NodeSwarmView.from_info("n1", {"Swarm": {"LocalNodeState": "inactive", "NodeID": ""}})
    assert (view.state, view.node_id, view.cluster_id, view.is_manager) == (
        "inactive",
        "",
        "",
        False,
    )


def test_node_spec_gets_the_files_role_and_labels_keeping_its_own() -> None:
    spec = {"Role": "worker", "Availability": "active", "Labels": {"own": "1"}}
    changed = node_spec_change(spec, NODES[0])
    assert changed == {
        "Role": "manager",
        "Availability": "active",
        "Labels": {"own": "1", "tier": "data"},
    }
    assert node_spec_change(changed, NODES[0]) is None
