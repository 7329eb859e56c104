"""The Swarm engine side against the test bed's real three-node Swarm (one for the module).

kbinfra creates the Swarm (or adopts one made beforehand), puts images on the nodes that
lack them, applies hand-built SwarmStack values through a manager, waits for convergence,
reports status, reaches an internal service on another node, and destroys the stack. The
module leaves no Swarm behind: every node leaves it at the end, through its own socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.progress import SILENT
from kbinfra.service import DEFAULT_PIDS_LIMIT, HealthCheck
from kbinfra.spec.values import parse_ssh_target
from kbinfra.swarm.apply import apply_stack, prune_objects
from kbinfra.swarm.cluster import ensure_swarm
from kbinfra.swarm.converge import read_nodes, stack_status, wait_converged
from kbinfra.swarm.desired import (
    SwarmConfig,
    SwarmMount,
    SwarmPort,
    SwarmSecret,
    SwarmService,
    SwarmStack,
    UpdatePolicy,
)
from kbinfra.swarm.destroy import destroy_stack
from kbinfra.swarm.images import distribute_images
from kbinfra.swarm.reach import task_port
from kbinfra.swarm.service_spec import LABEL_SPEC_HASH
from kbinfra.targets.ssh import HostKeyError, SSHAddress, SSHOptions
from kbinfra.targets.swarm import SwarmNodeAddress, SwarmTarget

try:
    from .conftest import TESTBED_SCRIPT
    from .testbed_support import Cluster, leave_swarm, node_engine, wait_for
except ImportError:
    from conftest import TESTBED_SCRIPT  # type: ignore[no-redef]
    from testbed_support import (  # type: ignore[no-redef]
        Cluster,
        leave_swarm,
        node_engine,
        wait_for,
    )

pytestmark = pytest.mark.integration

STACK = "kbe"
NETWORK = f"{STACK}_net"
WEB_PORT = 18080
CONVERGE_S = 180.0
PASSWORD = b"kbe-redis-password-not-for-logs"
NEW_PASSWORD = b"a-new-redis-password"


def node_addresses(node_file: Path) -> list[SwarmNodeAddress]:
    data = yaml.safe_load(node_file.read_text())
    return [
        SwarmNodeAddress(
            name=str(node["name"]),
            address=SSHAddress(*parse_ssh_target(str(node["address"]))),
            role=node["role"],
            labels={str(k): str(v) for k, v in (node.get("labels") or {}).items()},
        )
        for node in data["nodes"]
    ]


def swarm_target(
    cluster: Cluster, known_hosts: Path | None = None, nodes: list[SwarmNodeAddress] | None = None
) -> SwarmTarget:
    options = SSHOptions(known_hosts=known_hosts or cluster.known_hosts, identity=cluster.identity)
    return SwarmTarget(nodes or node_addresses(cluster.node_file), options)


def swarm_state(cluster: Cluster, name: str) -> str:
    client = node_engine(cluster, name)
    try:
        return str(client.info()["Swarm"]["LocalNodeState"])
    finally:
        client.close()


@pytest.fixture(scope="module")
def target(clean_cluster: Cluster) -> Iterator[SwarmTarget]:
    swarm = swarm_target(clean_cluster)
    try:
        yield swarm
    finally:
        swarm.close()


# ---------------------------------------------------------------- the stack, hand-built


def _redis(images: dict[str, str], password: bytes = PASSWORD) -> SwarmService:
    import hashlib  # noqa: PLC0415

    tag = hashlib.sha256(password).hexdigest()[:12]
    conf = b'port 6379\nsave ""\nappendonly no\n'
    return SwarmService(
        stack=STACK,
        service="redis",
        name=f"{STACK}_redis",
        image=images["redis"],
        cpus=0.5,
        memory_mb=128,
        constraints=("node.hostname == node2",),  # stateful: pinned with its volume
        entrypoint=(
            "sh",
            "-c",
            'exec redis-server /etc/kb/redis.conf --requirepass "$(cat /run/secrets/redis_pw)"',
        ),
        secrets=(SwarmSecret(name=f"{STACK}_redis_pw_{tag}", data=password, target="redis_pw"),),
        configs=(
            SwarmConfig(
                name=f"{STACK}_redis_conf_{hashlib.sha256(conf).hexdigest()[:12]}",
                data=conf,
                target="/etc/kb/redis.conf",
            ),
        ),
        mounts=(SwarmMount(f"{STACK}_redis_data", "/data"),),
        tmpfs=(("/tmp", 16),),
        healthcheck=HealthCheck(
            test=[
                "CMD-SHELL",
                'redis-cli -a "$(cat /run/secrets/redis_pw)" --no-auth-warning ping'
                " | grep -qx PONG",
            ],
            interval_s=1,
            timeout_s=3,
            retries=3,
            start_period_s=5,
        ),
        update=UpdatePolicy(order="stop-first", monitor_s=3),
        stop_grace_s=5,
    )


def _nginx(images: dict[str, str], service: str, **changes: Any) -> SwarmService:
    base = SwarmService(
        stack=STACK,
        service=service,
        name=f"{STACK}_{service}",
        image=images["nginx"],
        cpus=0.25,
        memory_mb=64,
        replicas=3,
        tmpfs=(("/run", 8), ("/tmp", 16), ("/var/cache/nginx", 16)),
        cap_add=("CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"),
        healthcheck=HealthCheck(
            test=["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/"],
            interval_s=1,
            timeout_s=3,
            retries=2,
            start_period_s=3,
        ),
        update=UpdatePolicy(order="start-first", monitor_s=3),
        stop_grace_s=3,
    )
    return dataclasses.replace(base, **changes)


def the_stack(images: dict[str, str], **redis_changes: Any) -> SwarmStack:
    return SwarmStack(
        stack=STACK,
        network=NETWORK,
        services=[
            _redis(images, **redis_changes),
            # Published in host mode, one task per node (its port): cannot move on node loss.
            _nginx(
                images,
                "web",
                max_replicas_per_node=1,
                ports=(SwarmPort(target=80, published=WEB_PORT),),
                update=UpdatePolicy(order="stop-first", monitor_s=3),
            ),
            # Stateless and unconstrained: rescheduled onto the others on node loss.
            _nginx(images, "static"),
        ],
    )


def apply_and_wait(target: SwarmTarget, stack: SwarmStack) -> Any:
    manager = target.docker_client()
    changes = apply_stack(manager, stack, SILENT)
    status = wait_converged(manager, target, STACK, changes.intended, timeout_s=CONVERGE_S)
    return changes, status


def service_versions(target: SwarmTarget) -> dict[str, int]:
    api: Any = target.docker_client().api
    return {
        s["Spec"]["Name"]: s["Version"]["Index"]
        for s in api.services(filters={"label": f"io.kbinfra.stack={STACK}"})
    }


# ---------------------------------------------------------------- 1. strict host keys


def test_an_unknown_host_key_on_any_node_is_refused_with_its_fingerprint(
    clean_cluster: Cluster, tmp_path: Path
) -> None:
    node3 = SSHAddress(*parse_ssh_target(clean_cluster.nodes[2].url))
    known = tmp_path / "known_hosts"
    known.write_text(
        "".join(
            f"{line}\n"
            for line in clean_cluster.known_hosts.read_text().splitlines()
            if not line.startswith((f"{node3.host} ", f"[{node3.host}]"))
        )
    )
    swarm = swarm_target(clean_cluster, known_hosts=known)
    try:
        with pytest.raises(
            HostKeyError, match=r"unknown SSH host key \S+ SHA256:[A-Za-z0-9+/]{43}"
        ) as refused:
            ensure_swarm(swarm)
    finally:
        swarm.close()
    assert node3.host in str(refused.value)
    # Refused before anything changed: no node was put into a Swarm.
    assert [swarm_state(clean_cluster, n.name) for n in clean_cluster.nodes] == ["inactive"] * 3


# ---------------------------------------------------------------- 2. create or adopt


def test_adopts_a_swarm_made_beforehand_and_refuses_a_node_of_another(
    clean_cluster: Cluster,
) -> None:
    nodes = node_addresses(clean_cluster.node_file)
    first = nodes[0].address.host
    made = node_engine(clean_cluster, "node1")
    made.swarm.init(advertise_addr=first, listen_addr=f"{first}:2377")
    cluster_id = made.swarm.attrs["ID"]
    token = made.swarm.attrs["JoinTokens"]["Worker"]
    node_engine(clean_cluster, "node2").swarm.join(
        remote_addrs=[f"{first}:2377"],
        join_token=token,
        advertise_addr=nodes[1].address.host,
        listen_addr=f"{nodes[1].address.host}:2377",
    )
    # node3 runs a Swarm of its own: kbinfra must not take it over.
    other = node_engine(clean_cluster, "node3")
    other.swarm.init(advertise_addr=nodes[2].address.host)
    # The node file makes node3 a worker: it joins with the worker token.
    nodes[2] = dataclasses.replace(nodes[2], role="worker")
    swarm = swarm_target(clean_cluster, nodes=nodes)
    try:
        with pytest.raises(KbinfraError, match=r"node node3 is in another Swarm") as refused:
            ensure_swarm(swarm)
        assert "docker swarm leave" in str(refused.value)
        assert token not in str(refused.value)
        leave_swarm(clean_cluster, "node3")
        formation = ensure_swarm(swarm)
    finally:
        swarm.close()
    assert formation.created is False
    assert formation.cluster_id == cluster_id
    assert formation.joined == ("node3",)
    # node2 joined as a worker by hand; the node file says manager: kbinfra promotes it.
    assert "node2" in formation.updated
    roles = {n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Role"] for n in made.nodes.list()}
    assert roles == {"node1": "manager", "node2": "manager", "node3": "worker"}
    assert swarm_state(clean_cluster, "node3") == "active"
    made.close()
    leave_swarm(clean_cluster)


def test_creates_the_swarm_with_labels_and_adopts_it_unchanged_next_time(
    clean_cluster: Cluster, target: SwarmTarget
) -> None:
    formation = ensure_swarm(target)
    assert formation.created is True and formation.manager == "node1"
    assert formation.joined == ("node2", "node3")
    manager = target.docker_client()
    labels = {
        n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Labels"] for n in manager.nodes.list()
    }
    assert labels == {f"node{i}": {"kbinfra.testbed.node": str(i)} for i in (1, 2, 3)}
    versions = {n.id: n.version for n in manager.nodes.list()}
    again = ensure_swarm(target)
    assert (again.created, again.joined, again.updated) == (False, (), ())
    assert again.cluster_id == formation.cluster_id
    assert {n.id: n.version for n in manager.nodes.list()} == versions


# ---------------------------------------------------------------- 3. images


def test_images_go_only_to_nodes_that_may_run_them_and_lack_them(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    stack = the_stack(images)
    nodes = read_nodes(target.docker_client(), target)
    # The cluster is shared by the session's Swarm modules: start from nodes that lack both.
    for node in nodes:
        for ref in (images["redis"], images["nginx"]):
            with contextlib.suppress(docker.errors.ImageNotFound):
                target.node_client(node.name).images.remove(ref, force=True)
    local = docker.from_env()
    first = distribute_images(local, target, stack, nodes)
    # redis is pinned to node2: only node2 may need it; nginx runs anywhere.
    for node, copied in first.copied.items():
        assert images["redis"] not in copied or node == "node2"
    for name in ("node1", "node3"):
        assert images["redis"] not in [
            t.attrs["RepoTags"][0]
            for t in target.node_client(name).images.list()
            if t.attrs["RepoTags"]
        ]
    wanted = local.images.get(images["nginx"]).id
    for name in ("node1", "node2", "node3"):
        assert target.node_client(name).images.get(images["nginx"]).id == wanted
    second = distribute_images(local, target, stack, nodes)
    assert second.copied == {}
    assert sum(len(c.present) for c in second.copies) == 4  # nginx x3, redis on node2


# ---------------------------------------------------------------- 4. apply


def test_apply_places_the_stack_and_keeps_secrets_out_of_inspect(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    changes, status = apply_and_wait(target, the_stack(images))
    assert changes.network_created
    assert set(changes.created) == {f"{STACK}_redis", f"{STACK}_web", f"{STACK}_static"}
    redis = status.service("redis")
    assert [t.node for t in redis.tasks if t.state == "running"] == ["node2"]
    web = status.service("web")
    assert sorted(t.node for t in web.tasks if t.state == "running") == ["node1", "node2", "node3"]
    assert not status.degraded
    network = target.docker_client().api.inspect_network(NETWORK)
    assert network["Driver"] == "overlay" and network["Attachable"] is True
    # nginx answers on every node's address, published in host mode.
    for node in target.nodes:
        with urllib.request.urlopen(f"http://{node.address.host}:{WEB_PORT}/", timeout=10) as r:
            assert r.status == 200
    for node in target.nodes:
        for container in target.node_client(node.name).containers.list(
            filters={"label": f"io.kbinfra.stack={STACK}"}
        ):
            text = str(container.attrs)
            assert PASSWORD.decode() not in text
            assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
            assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
            # API 1.41 takes a PIDs limit per service (docker-py has no argument for it).
            assert container.attrs["HostConfig"]["PidsLimit"] == DEFAULT_PIDS_LIMIT


def test_a_no_op_re_apply_changes_nothing(target: SwarmTarget, images: dict[str, str]) -> None:
    before = service_versions(target)
    changes, _ = apply_and_wait(target, the_stack(images))
    assert not changes.changed
    assert sorted(changes.unchanged) == sorted(before)
    assert service_versions(target) == before


def test_a_changed_secret_rolls_only_its_service_and_the_old_one_is_removed(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    before = service_versions(target)
    old_secrets = {s.name for s in target.docker_client().secrets.list()}
    changes, _ = apply_and_wait(target, the_stack(images, password=NEW_PASSWORD))
    assert changes.updated == (f"{STACK}_redis",)
    assert len(changes.secrets_created) == 1
    after = service_versions(target)
    assert {n for n in after if after[n] != before[n]} == {f"{STACK}_redis"}
    removed, _ = prune_objects(target.docker_client(), STACK)
    assert len(removed) == 1 and removed[0] in old_secrets
    assert removed[0] not in {s.name for s in target.docker_client().secrets.list()}


# ---------------------------------------------------------------- 8. reach a task


def test_reaches_redis_on_another_node_over_that_nodes_ssh(target: SwarmTarget) -> None:
    with task_port(target, STACK, "redis", 6379) as (host, port):
        assert host == "127.0.0.1"
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(b"AUTH " + NEW_PASSWORD + b"\r\nPING\r\n")
            reply = b""
            deadline = time.monotonic() + 10
            while b"+PONG" not in reply and time.monotonic() < deadline:
                reply += conn.recv(100)
    assert reply == b"+OK\r\n+PONG\r\n"


# ---------------------------------------------------------------- 5. a failed update


def test_a_bad_update_is_rolled_back_by_swarm_and_the_old_task_still_serves(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    manager = target.docker_client()
    good = the_stack(images, password=NEW_PASSWORD)
    old_hash = manager.api.inspect_service(f"{STACK}_static")["Spec"]["Labels"][LABEL_SPEC_HASH]
    old_tasks = {
        t.task_id
        for t in stack_status(manager, target, STACK).service("static").tasks
        if t.state == "running"
    }
    broken = dataclasses.replace(
        good.services[2],
        healthcheck=HealthCheck(
            test=["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/no-such-page"],
            interval_s=1,
            timeout_s=2,
            retries=2,
            start_period_s=0,
        ),
    )
    stack = dataclasses.replace(good, services=[*good.services[:2], broken])
    changes = apply_stack(manager, stack)
    assert changes.updated == (f"{STACK}_static",)
    with pytest.raises(ApplyFailedError, match="rolled back by Swarm") as failed:
        wait_converged(manager, target, STACK, changes.intended, timeout_s=CONVERGE_S)
    assert failed.value.exit_code == 1
    assert "unhealthy container" in str(failed.value) and "404" in str(failed.value)
    spec = manager.api.inspect_service(f"{STACK}_static")["Spec"]
    assert spec["Labels"][LABEL_SPEC_HASH] == old_hash
    status = stack_status(manager, target, STACK)
    still = {t.task_id for t in status.service("static").tasks if t.state == "running"}
    assert still == old_tasks and len(still) == 3
    with task_port(target, STACK, "static", 80) as (host, port):
        response = urllib.request.urlopen(f"http://{host}:{port}/", timeout=10)
        with response:
            assert response.status == 200


def test_a_service_that_cannot_be_placed_times_out_naming_its_pending_task(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    nowhere = _nginx(images, "nowhere", replicas=1, constraints=("node.labels.no-such == x",))
    stack = SwarmStack(STACK, NETWORK, [nowhere])
    manager = target.docker_client()
    changes = apply_stack(
        manager,
        dataclasses.replace(
            stack, services=[*the_stack(images, password=NEW_PASSWORD).services, nowhere]
        ),
    )
    assert changes.created == (f"{STACK}_nowhere",)
    try:
        with pytest.raises(ApplyFailedError, match=r"not converged after 3 s") as late:
            wait_converged(
                manager,
                target,
                STACK,
                {f"{STACK}_nowhere": changes.intended[f"{STACK}_nowhere"]},
                timeout_s=3,
            )
        assert f"{STACK}_nowhere: 0/1 running" in str(late.value)
        assert "pending" in str(late.value)
        status = stack_status(manager, target, STACK)
        assert status.service("nowhere").degraded
    finally:
        manager.api.remove_service(f"{STACK}_nowhere")


# ---------------------------------------------------------------- 6. node loss


def test_node_loss_reschedules_stateless_tasks_and_status_shows_what_is_degraded(
    target: SwarmTarget, images: dict[str, str]
) -> None:
    manager = target.docker_client()
    subprocess.run([str(TESTBED_SCRIPT), "cluster", "node", "stop", "node3"], check=True)
    try:

        def settled() -> Any:
            status = stack_status(manager, target, STACK)
            static = status.service("static")
            node3 = next(n for n in status.nodes if n.name == "node3")
            return status if node3.state == "down" and static.running == 3 else None

        status = wait_for(settled, "node3 down and static's tasks rescheduled", CONVERGE_S)
        static = status.service("static")
        assert not static.degraded
        assert sorted(t.node for t in static.tasks if t.running) in (
            ["node1", "node1", "node2"],
            ["node1", "node2", "node2"],
        )
        # What the manager last heard from node3 is not taken for a running task.
        lost = [t for t in status.service("web").tasks if t.node == "node3"]
        assert lost and all(not t.running for t in lost)
        assert all(t.as_json()["health"] == "unknown: its node is down" for t in lost)
        web = status.service("web")
        assert web.degraded and web.running == 2 and web.expected == 3
        assert [s.name for s in status.degraded] == [f"{STACK}_web"]
        assert status.as_json()["degraded"] == [f"{STACK}_web"]
    finally:
        subprocess.run([str(TESTBED_SCRIPT), "cluster", "node", "start", "node3"], check=True)
    wait_for(
        lambda: next(n for n in read_nodes(manager, target) if n.name == "node3").state == "ready",
        "node3 ready again",
        CONVERGE_S,
    )
    _, status = apply_and_wait(target, the_stack(images, password=NEW_PASSWORD))
    assert not status.degraded
    assert sorted(t.node for t in status.service("web").tasks if t.state == "running") == [
        "node1",
        "node2",
        "node3",
    ]


# ---------------------------------------------------------------- 7. destroy


def test_destroy_removes_the_stack_and_keeps_volumes_unless_asked(
    target: SwarmTarget,
) -> None:
    manager = target.docker_client()
    removal = destroy_stack(target, STACK)
    assert sorted(removal.services) == [f"{STACK}_redis", f"{STACK}_static", f"{STACK}_web"]
    assert removal.networks == [NETWORK]
    assert removal.secrets and removal.configs
    labelled = {"label": f"io.kbinfra.stack={STACK}"}
    assert manager.api.services(filters=labelled) == []
    assert (manager.api.secrets(filters=labelled) or []) == []
    assert (manager.api.configs(filters=labelled) or []) == []
    assert manager.api.networks(filters=labelled) == []
    assert removal.volumes_kept == {"node2": [f"{STACK}_redis_data"]}
    again = destroy_stack(target, STACK, volumes=True)
    assert again.volumes_removed == {"node2": [f"{STACK}_redis_data"]}
    assert target.node_client("node2").api.volumes(filters=labelled).get("Volumes") in (None, [])
