"""Judging a service from the manager's JSON: running, degraded, rolled back."""

from __future__ import annotations

from typing import Any

import pytest

from kbinfra.swarm.desired import SwarmService, SwarmStack
from kbinfra.swarm.images import images_per_node, node_states
from kbinfra.swarm.service_spec import LABEL_SPEC_HASH
from kbinfra.swarm.state import NodeFacts, satisfies, service_state

NODES = [
    NodeFacts("id1", "n1", "n1", "manager", "ready", "active", {"tier": "data"}),
    NodeFacts("id2", "n2", "n2", "manager", "ready", "active", {"tier": "web"}),
    NodeFacts("id3", "n3", "n3", "worker", "down", "active", {"tier": "web"}),
]


def service(
    replicas: int | None = 3, spec_hash: str = "H", update: str = "", **extra: Any
) -> dict[str, Any]:
    mode = {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}}
    return {
        "Spec": {
            "Name": "kb_web",
            "Labels": {LABEL_SPEC_HASH: spec_hash, "io.kbinfra.service": "web"},
            "Mode": mode,
            "TaskTemplate": {"Placement": extra.get("placement", {})},
        },
        "UpdateStatus": {"State": update, "Message": "m"} if update else None,
    }


def task(
    node: str,
    state: str,
    spec_hash: str = "H",
    desired: str = "running",
    when: str = "1",
    err: str = "",
    slot: int | None = None,
) -> dict[str, Any]:
    return {
        "ID": f"t-{node}-{state}-{when}",
        "Slot": slot,
        "NodeID": node,
        "DesiredState": desired,
        "Status": {
            "State": state,
            "Timestamp": when,
            "Err": err,
            "ContainerStatus": {"ContainerID": "c" + when},
        },
        "Spec": {"ContainerSpec": {"Labels": {LABEL_SPEC_HASH: spec_hash}}},
    }


def test_all_replicas_running_in_the_current_spec_is_converged() -> None:
    state = service_state(
        service(),
        [task("id1", "running"), task("id2", "running"), task("id1", "running", when="2")],
        NODES,
    )
    assert state.converged and not state.degraded and state.running == 3


def test_a_pending_task_makes_the_service_degraded() -> None:
    pending = {**task("", "pending"), "NodeID": ""}
    state = service_state(
        service(), [task("id1", "running"), task("id2", "running"), pending], NODES
    )
    assert state.degraded and not state.converged and state.running == 2
    assert [t.health for t in state.tasks if t.state == "pending"] == ["starting"]


def test_a_task_last_seen_running_on_a_down_node_does_not_count() -> None:
    state = service_state(
        service(), [task("id1", "running"), task("id2", "running"), task("id3", "running")], NODES
    )
    assert state.running == 2 and state.degraded
    lost = next(t for t in state.tasks if t.node == "n3")
    assert lost.health == "unknown: its node is down" and not lost.running


def test_a_task_of_an_older_spec_does_not_count() -> None:
    state = service_state(service(replicas=1), [task("id1", "running", spec_hash="OLD")], NODES)
    assert state.running == 0 and not state.converged


def test_a_spec_reverted_by_swarm_reads_as_rolled_back_with_the_task_error() -> None:
    tasks = [
        task("id1", "running", spec_hash="OLD"),
        task(
            "id2",
            "failed",
            spec_hash="NEW",
            desired="shutdown",
            when="2",
            err="dockerexec: unhealthy container",
        ),
    ]
    state = service_state(
        service(replicas=1, spec_hash="OLD", update="rollback_completed"),
        tasks,
        NODES,
        intended_hash="NEW",
    )
    assert state.rolled_back and not state.converged
    assert state.failure() == "failed on n2: dockerexec: unhealthy container"
    assert [t.node for t in state.failed_tasks()] == ["n2"]
    # The same service, looked at without an intended spec (status): the old spec runs.
    assert service_state(
        service(replicas=1, spec_hash="OLD", update="rollback_completed"), tasks, NODES
    ).converged


def test_a_global_service_expects_one_task_per_eligible_active_node() -> None:
    state = service_state(
        service(replicas=None, placement={"Constraints": ["node.labels.tier == web"]}),
        [task("id2", "running")],
        NODES,
    )
    assert state.expected == 2 and state.degraded


def test_constraints_on_hostname_role_and_labels() -> None:
    n1, n2, n3 = NODES
    assert satisfies(n1, ["node.hostname == n1"]) and not satisfies(n2, ["node.hostname == n1"])
    assert satisfies(n3, ["node.role != manager"]) and not satisfies(n1, ["node.role != manager"])
    assert satisfies(n2, ["node.labels.tier == web", "node.role == manager"])
    assert not satisfies(n1, ["node.labels.missing == x"])
    assert satisfies(n1, ["node.platform.os == linux"])  # not modelled: may run there


def test_each_image_goes_to_the_nodes_its_services_may_run_on() -> None:
    def one(name: str, image: str, *constraints: str) -> SwarmService:
        return SwarmService(
            stack="kb",
            service=name,
            name=f"kb_{name}",
            image=image,
            cpus=1,
            memory_mb=64,
            constraints=constraints,
        )

    stack = SwarmStack(
        "kb",
        "kb_net",
        [
            one("pg", "pg:15", "node.hostname == n1"),
            one("web", "nginx:1", "node.labels.tier == web"),
        ],
    )
    assert images_per_node(stack, NODES) == {"n1": ["pg:15"], "n2": ["nginx:1"], "n3": ["nginx:1"]}


def test_a_node_that_joined_again_counts_as_ready_despite_its_old_down_entry() -> None:
    old = NodeFacts("old2", "n2", "n2", "manager", "down", "active")
    assert node_states([NODES[1], old])["n2"] == "ready"
    assert node_states([old, NODES[1]])["n2"] == "ready"
    assert node_states(NODES)["n3"] == "down"


def test_a_slot_whose_newest_task_exited_on_a_node_now_down_is_lost_there() -> None:
    # n3's dockerd stopped: its agent reported the task's exit before n3 was marked down,
    # and the pinned slot's new task waits with no node to go to
    pending = {**task("", "pending", when="3", slot=1), "NodeID": ""}
    exited = task("id3", "failed", desired="shutdown", when="2", slot=1)
    older = task("id3", "shutdown", desired="shutdown", when="1", slot=1)
    state = service_state(service(replicas=1), [older, exited, pending], NODES)
    assert state.degraded and state.running == 0
    assert state.lost_on == ["n3"]


def test_a_slot_rescheduled_from_a_down_node_is_not_lost_there() -> None:
    moved = task("id1", "running", when="3", slot=1)
    left = task("id3", "failed", desired="shutdown", when="2", slot=1)
    state = service_state(service(replicas=1), [left, moved], NODES)
    assert not state.degraded and state.lost_on == []
    global_ = service_state(service(replicas=None), [task("id3", "failed", when="2")], NODES)
    assert global_.lost_on == ["n3"]  # a global service's task is its node's


def test_a_rolled_back_update_says_swarms_task_error_and_the_health_checks_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether the failed task carries Swarm's error ("dockerexec: unhealthy container") or
    none (it exited 0 on its stop signal) is a race; the health check's output, the cause,
    is said either way."""
    from kbinfra.errors import ApplyFailedError  # noqa: PLC0415
    from kbinfra.swarm import converge  # noqa: PLC0415

    failed = task("id2", "failed", spec_hash="NEW", desired="shutdown", when="2")
    failed["Status"]["Err"] = "dockerexec: unhealthy container"
    state = service_state(
        service(replicas=1, spec_hash="H", update="rollback_completed"),
        [task("id1", "running", when="3"), failed],
        NODES,
        intended_hash="NEW",
    )
    assert state.rolled_back
    output = "unhealthy container on n2: curl: (22) The requested URL returned error: 404"
    monkeypatch.setattr(converge, "stack_status", lambda *args: converge.StackStatus((), (state,)))
    monkeypatch.setattr(converge, "_unhealthy", lambda *args: output)
    with pytest.raises(ApplyFailedError) as raised:
        converge.wait_converged(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            "kb",
            {"kb_web": "NEW"},
            timeout_s=5,
        )
    message = str(raised.value)
    assert "rolled back by Swarm" in message
    assert "dockerexec: unhealthy container" in message and "404" in message, message
