"""The pure parts of backup.volumes, the restore drill, logs and exec on a Swarm: which node
holds a volume, what a drill's container on a node is given, and whose engine a log line is
read from. (The real three-node runs: tests/integration/test_swarm_cli.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker.errors
import pytest

from kbinfra.backup.handler import BackupError
from kbinfra.stack import Stack
from kbinfra.swarm import converge, reach
from kbinfra.swarm.backup import (
    SwarmTaskInstance,
    refuse_peers,
    store_nodes,
    swarm_instances,
    volume_node,
)
from kbinfra.swarm.build import DRILL_SECRETS_SOURCE, SECRETS_DIR, secrets_as_files
from kbinfra.swarm.operate import task_label
from kbinfra.swarm.placement import stack_placements
from kbinfra.swarm.state import ServiceState, TaskReport
from kbinfra.targets.streams import LogRequest, read_logs
from tests.conftest import fixed_secret

# ---------------------------------------------------------------- which node holds a volume


class VolumeEngine:
    """A node's engine that holds some volumes (or cannot be reached)."""

    def __init__(self, volumes: set[str], *, down: bool = False) -> None:
        self.volumes, self.down = volumes, down
        self.api = self

    def inspect_volume(self, name: str) -> dict[str, Any]:
        if self.down:
            raise docker.errors.DockerException("connection refused")
        if name not in self.volumes:
            raise docker.errors.NotFound("no such volume")
        return {"Name": name}


class Node:
    def __init__(self, name: str) -> None:
        self.name = name


class Nodes:
    """The part of a SwarmTarget volume_node uses."""

    def __init__(self, engines: dict[str, VolumeEngine]) -> None:
        self.engines = engines
        self.nodes = [Node(name) for name in engines]
        self.forgotten: list[str] = []

    def node_client(self, name: str) -> VolumeEngine:
        return self.engines[name]

    def forget(self, name: str) -> None:
        self.forgotten.append(name)


def test_a_volume_is_backed_up_on_the_one_node_that_holds_it() -> None:
    nodes = Nodes(
        {"node1": VolumeEngine(set()), "node2": VolumeEngine({"up"}), "node3": VolumeEngine(set())}
    )
    assert volume_node(nodes, "up") == "node2"  # type: ignore[arg-type]
    # Where the backup recorded it does not matter while a node holds it.
    assert volume_node(nodes, "up", "node3") == "node2"  # type: ignore[arg-type]


def test_a_volume_on_several_nodes_is_refused_naming_them() -> None:
    nodes = Nodes(
        {"node1": VolumeEngine({"up"}), "node2": VolumeEngine(set()), "node3": VolumeEngine({"up"})}
    )
    with pytest.raises(BackupError, match=r"exists on 2 nodes \(node1, node3\)") as raised:
        volume_node(nodes, "up")  # type: ignore[arg-type]
    assert raised.value.fix is not None and "docker volume rm" in raised.value.fix


def test_a_volume_no_node_holds_is_restored_on_the_node_the_backup_recorded() -> None:
    nodes = Nodes({"node1": VolumeEngine(set()), "node2": VolumeEngine(set())})
    assert volume_node(nodes, "up", "node2") == "node2"  # type: ignore[arg-type]
    with pytest.raises(BackupError, match="exists on no node of the Swarm"):
        volume_node(nodes, "up")  # type: ignore[arg-type]
    # A recorded node that is not in the node file is never used (the manifest is input).
    with pytest.raises(BackupError, match="exists on no node of the Swarm"):
        volume_node(nodes, "up", "node9")  # type: ignore[arg-type]


def test_a_node_that_does_not_answer_is_never_taken_for_an_empty_one() -> None:
    nodes = Nodes({"node1": VolumeEngine(set()), "node2": VolumeEngine(set(), down=True)})
    with pytest.raises(BackupError, match="node2 did not answer"):
        volume_node(nodes, "up", "node1")  # type: ignore[arg-type]
    assert nodes.forgotten == ["node2"]


# ---------------------------------------------------------------- the drill's container


def test_the_drill_runs_each_store_on_the_node_the_stack_file_pins_it_to(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    nodes = store_nodes(stack, ["postgres", "redis", "qdrant"])
    assert set(nodes) == {"postgres", "redis", "qdrant"}
    placements = stack_placements(stack)
    for service, node in nodes.items():
        assert placements[service].pinned and placements[service].nodes == (node,)


def test_a_drill_container_reads_its_secrets_from_files_where_the_task_does(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    postgres = stack.services["postgres"]
    spec, files = secrets_as_files(stack, postgres, stack.containers["postgres"])
    # The Swarm-rendered initdb script reads KBINFRA_MONITOR_PASSWORD_FILE: it must be set.
    assert spec.env["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_DIR}/postgres_password"
    assert spec.env["KBINFRA_MONITOR_PASSWORD_FILE"] == f"{SECRETS_DIR}/postgres_monitor_password"
    assert dict(spec.secret_env) == {}  # no secret in the container's environment
    by_source = {f.path: f for f in files}
    for secret in ("postgres_password", "postgres_monitor_password"):
        file = by_source[f"{DRILL_SECRETS_SOURCE}/{secret}"]
        assert file.secret and file.text == fixed_secret(secret)
        assert any(
            m.source == file.path and m.target == f"{SECRETS_DIR}/{secret}" for m in spec.files
        )
    assert fixed_secret("postgres_password") not in repr(spec)


def test_a_secret_the_image_reads_only_from_its_environment_stays_there(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    original = stack.containers["qdrant"]
    spec, files = secrets_as_files(stack, stack.services["qdrant"], original)
    assert files == [] and spec == original  # as the one-host drill gives it


# ---------------------------------------------------------------- logs, node by node


class LogEngine:
    def __init__(self, lines: dict[str, str]) -> None:
        self.lines = lines

    def logs(self, container: str, **_: Any) -> bytes:
        return self.lines[container].encode()


def test_each_tasks_lines_come_from_its_own_nodes_engine_labelled_service_at_node() -> None:
    assert task_label("kb", "kb_postgres-replica", "node1") == "postgres-replica@node1"
    node1 = LogEngine({"c1": "2026-12-02T00:00:01.000000000Z one\n"})
    node2 = LogEngine({"c2": "2026-12-02T00:00:00.500000000Z two\n"})
    manager = LogEngine({})  # holds neither container: asking it would fail
    lines = read_logs(
        manager,  # type: ignore[arg-type]
        {"nginx@node1": "c1", "nginx@node2": "c2"},
        LogRequest(),
        apis={"nginx@node1": node1, "nginx@node2": node2},  # type: ignore[dict-item]
    )
    assert [(line.service, line.text) for line in lines] == [
        ("nginx@node2", "two"),
        ("nginx@node1", "one"),
    ]


def test_a_backup_of_qdrant_peers_is_refused_not_taken_from_one_peer(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    peers = {"swarm": {"services": {"qdrant": {"placement": None, "peers": ["node1", "node2"]}}}}
    stack = make_swarm_stack(overrides=peers)
    with pytest.raises(BackupError, match=r"qdrant runs as 2 peers \(node1, node2\)"):
        refuse_peers(stack, ["postgres", "qdrant"])
    refuse_peers(make_swarm_stack(), ["postgres", "qdrant"])  # one pinned Qdrant: taken


# ---------------------------------------------------------------- each store's running task


class TaskNodes:
    """The part of a SwarmTarget swarm_instances uses: each node's engine knows the gateway
    address of the task containers on it."""

    def __init__(self) -> None:
        self.api = self

    def docker_client(self) -> TaskNodes:
        return self

    def node_client(self, name: str) -> TaskNodes:
        return self

    def node_target(self, name: str) -> str:
        return f"ssh to {name}"

    def inspect_network(self, name: str) -> dict[str, Any]:
        return {"Containers": {f"c-{s}": {"IPv4Address": f"172.18.0.{n}/16"}
                               for n, s in enumerate(("postgres", "redis"), start=2)}}  # fmt: skip


def test_one_read_of_the_stacks_tasks_finds_every_stores_running_task(
    make_swarm_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manager is asked for the stack's services and tasks once for all the stores
    backed up, not once per store (each read is several calls over SSH)."""
    stack = make_swarm_stack()
    reads: list[str] = []

    def state(service: str, node: str) -> ServiceState:
        task = TaskReport(f"s_{service}", f"t-{service}", 1, node, "running", "running", True,
                          container_id=f"c-{service}")  # fmt: skip
        return ServiceState(f"s_{service}", service, 1, 1, "", "", False, False, False, (task,))

    def stack_status(client: Any, target: Any, name: str) -> converge.StackStatus:
        reads.append(name)
        return converge.StackStatus((), (state("postgres", "node1"), state("redis", "node2")))

    monkeypatch.setattr(converge, "stack_status", stack_status)
    monkeypatch.setattr(reach, "stack_status", stack_status)
    found = swarm_instances(stack, TaskNodes(), ["postgres", "redis"])  # type: ignore[arg-type]
    assert reads == [stack.spec.name]
    assert {name: (i.container_id, i.node, i.gateway_address) for name, i in found.items()
            if isinstance(i, SwarmTaskInstance)} == {
        "postgres": ("c-postgres", "node1", "172.18.0.2"),
        "redis": ("c-redis", "node2", "172.18.0.3"),
    }  # fmt: skip
