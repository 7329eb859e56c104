"""The test bed's three-node cluster (`scripts/testbed cluster`) is what the Swarm tests need.

Each node must be a separate Docker Engine (its own engine ID and hostname, or Swarm takes
them for one node), reachable over SSH with strict host keys (kbinfra's own SSH target), and
the three must form a working Swarm: an overlay network between tasks on different nodes,
`dnsrr` names (this kernel has no IPVS), and a stopped node's engine seen as Down by the
others. These tests make their own Swarm and leave none behind: kbinfra creates (or adopts)
the cluster's Swarm itself.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from kbinfra.spec.values import parse_ssh_target
from kbinfra.targets.ssh import HostKeyError, SSHAddress, SSHOptions, SSHTarget

try:
    from .conftest import TESTBED_SCRIPT
    from .testbed_support import Cluster, Node, wait_for
except ImportError:
    from conftest import TESTBED_SCRIPT  # type: ignore[no-redef]
    from testbed_support import Cluster, Node, wait_for  # type: ignore[no-redef]

pytestmark = pytest.mark.integration
SETTLE_S = 60


def _address(url: str) -> SSHAddress:
    """The node file's address, read by kbinfra's own target parser."""
    return SSHAddress(*parse_ssh_target(url))


def node_target(cluster: Cluster, node: Node, known_hosts: Path | None = None) -> SSHTarget:
    """kbinfra's own SSH target for a node: strict host keys, the test bed's client key."""
    options = SSHOptions(known_hosts=known_hosts or cluster.known_hosts, identity=cluster.identity)
    return SSHTarget(_address(node.url), options)


@contextlib.contextmanager
def engines(cluster: Cluster) -> Iterator[list[docker.DockerClient]]:
    """Each node's engine, through kbinfra's SSH target (strict host keys, the node's key)."""
    targets = [node_target(cluster, node) for node in cluster.nodes]
    try:
        yield [target.docker_client() for target in targets]
    finally:
        for target in targets:
            target.close()


def test_node_file_declares_three_nodes_with_capacity(cluster: Cluster) -> None:
    data = yaml.safe_load(cluster.node_file.read_text())
    assert [n["name"] for n in data["nodes"]] == ["node1", "node2", "node3"]
    for node in data["nodes"]:
        assert node["cpus"] > 0 and node["memory_gb"] > 0 and node["storage_gb"] > 0
        assert node["role"] in ("manager", "worker")
    assert cluster.known_hosts.is_file() and cluster.identity.is_file()


def test_each_node_is_its_own_engine_over_ssh(cluster: Cluster) -> None:
    with engines(cluster) as clients:
        infos = [client.info() for client in clients]
    assert [info["Name"] for info in infos] == [node.name for node in cluster.nodes]
    assert len({info["ID"] for info in infos}) == 3, "nodes share an engine ID"
    main_engine_id = docker.from_env().info()["ID"]
    assert main_engine_id not in {info["ID"] for info in infos}


def test_an_unknown_node_key_is_refused_with_its_fingerprint(
    cluster: Cluster, tmp_path: Path
) -> None:
    others = tmp_path / "known_hosts"
    node = cluster.nodes[1]
    lines = cluster.known_hosts.read_text().splitlines()
    others.write_text(
        "".join(f"{line}\n" for line in lines if not line.startswith(_address(node.url).host))
    )
    with pytest.raises(HostKeyError, match=r"SHA256:[A-Za-z0-9+/]{43}"):
        node_target(cluster, node, others).docker_client()


def _load(node: Node, image: str) -> None:
    """Give a node an image it lacks: there is no registry (saved here, loaded there through
    the node's socket; kbinfra's own transfer over SSH is tested with kbinfra)."""
    wanted = docker.from_env().images.get(image).id
    local = docker.DockerClient(base_url=f"unix://{node.socket}")
    try:
        with contextlib.suppress(docker.errors.ImageNotFound):
            if local.images.get(image).id == wanted:
                return
    finally:
        local.close()
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "-H", f"unix://{node.socket}", "load", "-q"],
        stdin=save.stdout,
        check=True,
        capture_output=True,
    )
    assert save.wait() == 0


@pytest.fixture
def swarm(cluster: Cluster) -> Iterator[list[docker.DockerClient]]:
    """A Swarm of the three nodes, all managers; left again afterwards."""
    with engines(cluster) as clients:
        for client in clients:
            with contextlib.suppress(docker.errors.APIError):
                client.swarm.leave(force=True)
        first = _address(cluster.nodes[0].url).host
        clients[0].swarm.init(advertise_addr=first, listen_addr=f"{first}:2377")
        token = clients[0].swarm.attrs["JoinTokens"]["Manager"]
        for node, client in zip(cluster.nodes[1:], clients[1:], strict=True):
            client.swarm.join(
                remote_addrs=[f"{first}:2377"],
                join_token=token,
                advertise_addr=_address(node.url).host,
                listen_addr=f"{_address(node.url).host}:2377",
            )
        try:
            yield clients
        finally:
            # Through each node's socket, not the SSH connections: a test may have restarted
            # a node's engine under them.
            for node in reversed(cluster.nodes):
                local = docker.DockerClient(base_url=f"unix://{node.socket}")
                with contextlib.suppress(docker.errors.APIError):
                    local.swarm.leave(force=True)
                local.close()


def _archive(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_three_nodes_form_a_swarm_with_an_overlay_between_tasks(
    cluster: Cluster, swarm: list[docker.DockerClient], images: dict[str, str]
) -> None:
    for node in cluster.nodes:
        _load(node, images["nginx"])
    manager = swarm[0]
    wait_for(
        lambda: (
            len([n for n in manager.nodes.list() if n.attrs["Status"]["State"] == "ready"]) == 3
        ),
        "three Ready nodes",
        SETTLE_S,
    )
    network = manager.networks.create("kbtb-probe", driver="overlay", attachable=True)
    service = manager.services.create(
        images["nginx"],
        name="probe",
        networks=["kbtb-probe"],
        mode=docker.types.ServiceMode("replicated", replicas=3),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        maxreplicas=1,
        hostname="{{.Node.Hostname}}-probe",
    )
    try:

        def running() -> list[dict[str, Any]]:
            return [t for t in service.tasks() if t["Status"]["State"] == "running"]

        wait_for(lambda: len(running()) == 3, "three running tasks", SETTLE_S)
        assert len({t["NodeID"] for t in running()}) == 3, "not one task per node"
        # A task on node1 fetches a page from the task on node3, by its stable hostname,
        # across the overlay network (nginx's image has no other HTTP client: bash's /dev/tcp).
        local = next(c for c in swarm[0].containers.list() if c.name.startswith("probe."))
        remote = next(c for c in swarm[2].containers.list() if c.name.startswith("probe."))
        remote.put_archive("/usr/share/nginx/html", _archive("who.txt", "node3\n"))
        fetch = (
            "exec 3<>/dev/tcp/node3-probe/80 && "
            "printf 'GET /who.txt HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        )
        code, output = local.exec_run(["bash", "-c", fetch])
        assert code == 0, output
        assert output.decode().rstrip().endswith("node3")
    finally:
        service.remove()
        wait_for(
            lambda: (
                not any(
                    c.name.startswith("probe.")
                    for client in swarm
                    for c in client.containers.list()
                )
            ),
            "the probe service's tasks gone",
            SETTLE_S,
        )
        network.remove()


def test_a_stopped_node_engine_is_seen_down_and_comes_back(
    cluster: Cluster, swarm: list[docker.DockerClient]
) -> None:
    manager = swarm[0]

    def state_of(name: str) -> str:
        for node in manager.nodes.list():
            if node.attrs["Description"]["Hostname"] == name:
                return str(node.attrs["Status"]["State"])
        return "absent"

    wait_for(lambda: state_of("node3") == "ready", "node3 ready", SETTLE_S)
    subprocess.run([str(TESTBED_SCRIPT), "cluster", "node", "stop", "node3"], check=True)
    try:
        wait_for(lambda: state_of("node3") == "down", "node3 down", SETTLE_S)
    finally:
        subprocess.run([str(TESTBED_SCRIPT), "cluster", "node", "start", "node3"], check=True)
    wait_for(lambda: state_of("node3") == "ready", "node3 ready again", SETTLE_S)
