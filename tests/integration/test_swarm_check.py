"""kbinfra check on the test bed's real three-node Swarm, through the real CLI: one stack for
the whole module with PostgreSQL and Redis each streaming to a replica on another node.

The stack: PostgreSQL on node2 with its replica on node1, Redis on node3 with its replica on
node2, both exporters, nginx (two tasks, host mode). nginx proxies to the PostgreSQL
exporter (an HTTP server on the overlay network: the app tier is not built for a Swarm
yet), so the upstream row of check has something that answers. The profile is a small one
written here: the minimum profile's stores and their replicas do not fit the test bed's
7 GB nodes. Qdrant is left out (docs/swarm.md: its stand-in cannot run Raft).

The replication rows are real: a row written on the primary is read on the replica, a key
set on the primary is read on the replica, over SSH tunnels to the tasks' containers.
Then node3's dockerd is stopped: status and check name Redis and node3; once it is back,
apply converges and check passes again. The stack is destroyed with its volumes at the end.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

try:
    from .conftest import TESTBED_SCRIPT
    from .stack_support import Deployment, Run, swarm_deployment
except ImportError:  # pragma: no cover - plain modules
    from conftest import TESTBED_SCRIPT  # type: ignore[no-redef]
    from stack_support import Deployment, Run, swarm_deployment  # type: ignore[no-redef]

if TYPE_CHECKING:  # not imported at run time: pytest would try to collect class Testbed
    from .testbed_support import Cluster, Testbed

pytestmark = pytest.mark.integration

STACK = "kbswck"
SERVICES = ("postgres", "redis", "nginx", "postgres-exporter", "redis-exporter")
CONVERGE_S = "240"
PROFILE = "swarm-small.yaml"
SMALL_PROFILE = """\
# Small enough for the test bed's 2-CPU / 7 GB Swarm nodes with a replica of each store.
name: swarm-small
description: The test bed's Swarm nodes (2 cores, 7 GB each)
host: {cpus: 6, memory: 21GB, storage: 60GB, disk: ssd, network_gbps: 1}
services:
  qdrant:       {cpus: 1,   memory: 2GB, storage: 10GB}
  postgres:     {cpus: 1,   memory: 2GB, storage: 10GB}
  redis:        {cpus: 0.5, memory: 1GB, storage: 5GB}
  embeddings:   {cpus: 1,   memory: 2GB, storage: 5GB}
  unstructured: {cpus: 1,   memory: 2GB, storage: 5GB}
  app:          {cpus: 1,   memory: 2GB, storage: 5GB}
  monitoring:   {cpus: 0.5, memory: 1GB, storage: 5GB}
"""
REPLICATION_ROWS = {
    ("postgres", "replica-in-recovery"): "pg_is_in_recovery() true, WAL receiver streaming",
    ("postgres", "replication-slot-active"): "slot kbinfra_replica active",
    ("postgres", "replica-replay-lag"): f"{STACK}_replica streaming",
    ("postgres", "row-replicated"): "row written on the primary read on the replica",
    ("redis", "replica-role-connected"): "role slave of redis:6379, link up",
    ("redis", "primary-sees-replica"): "1 replica connected: redis-replica:6379 online",
    ("redis", "key-replicated"): "key set on the primary read on the replica",
}


@pytest.fixture(scope="module")
def deployment(
    clean_cluster: Cluster, testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    def configure(data: dict[str, Any]) -> None:
        data["profile"] = PROFILE
        data["app"]["upstream"] = "postgres-exporter:9187"
        placed = data["swarm"]["services"]
        placed["postgres"] = {"placement": {"nodes": ["node2"]}, "replica": {"node": "node1"}}
        placed["redis"] = {"placement": {"nodes": ["node3"]}, "replica": {"node": "node2"}}

    folder = tmp_path_factory.mktemp("swarm-check") / "kb"
    folder.mkdir(parents=True)
    (folder / PROFILE).write_text(SMALL_PROFILE)
    deployment = swarm_deployment(
        folder, STACK, clean_cluster.node_file, testbed.images_file, SERVICES, configure
    )
    yield deployment
    deployment.run("destroy", "--delete-data", "--confirm-name", STACK)


def checked(deployment: Deployment) -> tuple[Run, dict[tuple[str, str], dict[str, Any]]]:
    done = deployment.run("check", "-o", "json")
    rows = {(r["service"], r["check"]): r for r in done.json()["checks"]}
    return done, rows


def failed(rows: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {key: row["value"] for key, row in rows.items() if not row["ok"]}


def node_command(action: str, node: str) -> None:
    subprocess.run([str(TESTBED_SCRIPT), "cluster", "node", action, node], check=True)


def status_until(deployment: Deployment, settled: Any, what: str, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        done = deployment.run("status", "-o", "json")
        assert done.code == 0, done.err
        found = done.json()
        if settled(found):
            return found
        assert time.monotonic() < deadline, f"{what}: not after {seconds:.0f} s: {found}"
        time.sleep(1)


def by_service(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["service"]: s for s in status["services"]}


# ---------------------------------------------------------------- the tests, in order


def test_check_passes_on_the_swarm_and_proves_both_replicas_have_the_primarys_data(
    deployment: Deployment,
) -> None:
    early = deployment.run("check")
    assert early.code == 2 and early.err.count("\n") == 1, early.err
    assert "the nodes are in no Swarm yet" in early.err and "Traceback" not in early.err
    done = deployment.run("apply", "--yes", "--timeout", CONVERGE_S, "-o", "json")
    assert done.code == 0, done.err[-3000:]
    check, rows = checked(deployment)
    assert check.code == 0 and failed(rows) == {}, (check.err[-2000:], failed(rows))
    for key, expected in REPLICATION_ROWS.items():
        assert key in rows and expected in rows[key]["value"], (key, rows.get(key))
    # Every service's own probes ran through the tunnels to its task.
    for service, check_name in [
        ("postgres", "login-select-1"),
        ("redis", "ping-as-app"),
        ("nginx", "https-through-to-upstreams"),
    ]:
        assert rows[(service, check_name)]["ok"]
    tasks = {key[0]: row["value"] for key, row in rows.items() if key[1] == "swarm-tasks-running"}
    assert tasks["postgres"] == "1/1 on node2" and tasks["postgres-replica"] == "1/1 on node1"
    assert tasks["redis"] == "1/1 on node3" and tasks["redis-replica"] == "1/1 on node2"
    assert tasks["nginx"].startswith("2/2 on ")
    # The one-host rows that make no sense on a Swarm are replaced by their Swarm equivalent.
    assert ("stack", "internal-ports-on-loopback") not in rows
    assert "nginx 80->80 (host), " in rows[("stack", "only-nginx-published-host-mode")]["value"]
    assert rows[("stack", "overlay-network-only")]["ok"]
    assert "locked down" in rows[("stack", "tasks-hardened")]["value"]


def test_a_lost_node_is_named_by_status_and_check_and_apply_converges_once_it_is_back(
    deployment: Deployment,
) -> None:
    node_command("stop", "node3")
    try:
        status = status_until(
            deployment,
            lambda found: by_service(found)["redis"]["degraded"],
            "redis degraded with node3 down",
        )
        redis = by_service(status)["redis"]
        assert redis["lost_on"] == ["node3"] and redis["running"] == 0
        assert f"{STACK}_redis" in status["degraded"]
        text = deployment.run("status")
        assert "its task was on node3, which is down" in text.out, text.out
        check, rows = checked(deployment)
        assert check.code == 1, check.err[-2000:]
        lost = rows[("redis", "swarm-tasks-running")]
        assert not lost["ok"] and "node3 down" in lost["value"], lost
        assert "no running task of kbswck_redis" in rows[("redis", "ping-as-app")]["value"]
        # PostgreSQL and its replica are on node2 and node1: still replicating.
        assert rows[("postgres", "row-replicated")]["ok"], rows[("postgres", "row-replicated")]
    finally:
        node_command("start", "node3")
    status_until(
        deployment,
        lambda found: next(n for n in found["nodes"] if n["name"] == "node3")["state"] == "ready",
        "node3 ready again",
    )
    done = deployment.run("apply", "--yes", "--timeout", CONVERGE_S, "-o", "json")
    assert done.code == 0, done.err[-3000:]
    assert deployment.run("status", "-o", "json").json()["degraded"] == []
    check, rows = checked(deployment)
    assert check.code == 0 and failed(rows) == {}, failed(rows)
    assert rows[("redis", "swarm-tasks-running")]["value"] == "1/1 on node3"
    assert "read on the replica" in rows[("redis", "key-replicated")]["value"]
