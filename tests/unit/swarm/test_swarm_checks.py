"""``kbinfra check`` on a Swarm: which task a probe reaches for a port, and the stack-wide
checks that replace one host's (judged from the manager's JSON)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kbinfra.probing.probe import CheckFailedError, seen_within
from kbinfra.probing.stack_checks import AllowedHardening, hardening_problems
from kbinfra.service import ContainerSpec, PortBinding
from kbinfra.services.redis.probe import connected_replicas
from kbinfra.stack import Stack
from kbinfra.swarm.converge import StackStatus
from kbinfra.swarm.probe_context import SwarmProbeContext, container_port_of
from kbinfra.swarm.stack_checks import (
    NO_NEW_PRIVILEGES,
    check_networks,
    check_no_secret_in_specs,
    published_problems,
    task_rows,
    with_daemon_no_new_privileges,
)
from kbinfra.swarm.state import service_state
from kbinfra.targets.ssh import SSHAddress, SSHOptions
from kbinfra.targets.swarm import SwarmNodeAddress, SwarmTarget
from tests.unit.swarm.test_service_state import NODES, service, task


def spec(name: str, *ports: tuple[str, int, int]) -> ContainerSpec:
    return ContainerSpec(
        service=name, image="i", cpus=1, memory_mb=64, ports=[PortBinding(*p) for p in ports]
    )


CONTAINERS = {
    "postgres": spec("postgres", ("127.0.0.1", 15432, 5432)),
    "nginx": spec("nginx", ("0.0.0.0", 8443, 443), ("0.0.0.0", 8080, 80)),
}


def test_a_host_port_is_reached_at_the_container_port_of_the_service_that_publishes_it() -> None:
    assert container_port_of(CONTAINERS, 15432, "postgres") == ("postgres", 5432)
    # Another service's port (the app's probe asks for the database's): that service's task.
    assert container_port_of(CONTAINERS, 8443, "postgres") == ("nginx", 443)
    with pytest.raises(CheckFailedError, match="no service of the stack publishes port 6379"):
        container_port_of(CONTAINERS, 6379, "redis")


def test_a_service_below_its_count_fails_a_row_naming_it_and_the_node_of_its_task() -> None:
    up = service_state(service(1), [task("id1", "running")], NODES)
    lost = service_state(service(1), [task("id3", "running")], NODES)
    status = StackStatus(tuple(NODES), (up,))
    rows = task_rows(status, ["kb_web"])
    assert [(r.service, r.ok, r.value) for r in rows] == [("web", True, "1/1 on n1")]
    rows = task_rows(StackStatus(tuple(NODES), (lost,)), ["kb_web", "kb_db"])
    assert not rows[0].ok and rows[0].value == "kb_web 0/1 running: n3 down"
    assert not rows[1].ok and rows[1].value == "kb_db is not on the Swarm"


def listed(name: str, own: str, *ports: tuple[int, int, str], networks: Any = ("net",)) -> Any:
    return {
        "Spec": {
            "Name": name,
            "Labels": {"io.kbinfra.service": own},
            "EndpointSpec": {
                "Ports": [
                    {"PublishedPort": p, "TargetPort": t, "PublishMode": m} for p, t, m in ports
                ]
            },
            "TaskTemplate": {"Networks": [{"Target": n} for n in networks]},
        }
    }


def test_only_what_one_host_publishes_beyond_loopback_is_published_and_in_host_mode() -> None:
    allowed = {("nginx", 8443, 443)}
    good = [listed("kb_nginx", "nginx", (8443, 443, "host")), listed("kb_postgres", "postgres")]
    assert published_problems(good, allowed) == ([], ["kb_nginx 8443->443 (host)"])
    bad = [
        listed("kb_nginx", "nginx", (8443, 443, "ingress")),
        listed("kb_postgres", "postgres", (15432, 5432, "host")),
    ]
    problems, _ = published_problems(bad, allowed)
    assert problems == [
        "kb_nginx 8443->443 (ingress): not in host mode (the routing mesh)",
        "kb_postgres 15432->5432 (host) is published",
    ]


def test_every_service_is_on_the_overlay_network_and_no_other() -> None:
    overlay = {"Id": "abc", "Driver": "overlay"}
    assert "2 services on net (overlay) only" in check_networks(
        [listed("a", "a", networks=("abc",)), listed("b", "b", networks=("net",))], overlay, "net"
    )
    with pytest.raises(CheckFailedError, match="b: also on bridge"):
        check_networks([listed("b", "b", networks=("abc", "bridge"))], overlay, "net")
    with pytest.raises(CheckFailedError, match="is a bridge network"):
        check_networks([], {"Driver": "bridge"}, "net")
    with pytest.raises(CheckFailedError, match="does not exist"):
        check_networks([], None, "net")


def test_a_secret_value_in_a_service_spec_fails() -> None:
    clean = listed("kb_pg", "postgres")
    leaky = {"Spec": {"Name": "kb_redis", "Env": ["PASSWORD=s3cret-value-1"]}}
    assert "hold no secret value" in check_no_secret_in_specs([clean], ["s3cret-value-1"])
    with pytest.raises(CheckFailedError, match=r"in the spec of kb_redis$"):
        check_no_secret_in_specs([clean, leaky], ["s3cret-value-1"])


def test_no_new_privileges_set_daemon_wide_is_read_from_the_tasks_main_process() -> None:
    host_config = {"CapDrop": ["ALL"], "PidsLimit": 100, "ReadonlyRootfs": True}
    running = with_daemon_no_new_privileges(host_config, "Name:\tpostgres\nNoNewPrivs:\t1\n")
    assert running["SecurityOpt"] == [NO_NEW_PRIVILEGES]
    assert hardening_problems("c", running, allowed=_nothing(), user="999") == []
    unset = with_daemon_no_new_privileges(host_config, "NoNewPrivs:\t0\n")
    assert hardening_problems("c", unset, allowed=_nothing(), user="999") == [
        "c: no no-new-privileges"
    ]


def _nothing() -> AllowedHardening:
    return AllowedHardening()


def test_check_on_a_swarm_stack_uses_the_swarm_probe_context(
    make_swarm_stack: Callable[..., Stack], tmp_path: Any
) -> None:
    stack = make_swarm_stack()
    target = SwarmTarget(
        [SwarmNodeAddress("node1", SSHAddress("u", "10.0.0.1"))],
        SSHOptions(known_hosts=tmp_path / "k", identity=None),
    )
    probe = target.probe_context(stack, stack.services["postgres"])
    assert isinstance(probe, SwarmProbeContext) and probe.task_service == "postgres"
    assert probe.replica() is None  # the stack file asks for no replica


def test_the_primarys_replicas_are_read_from_info_replication_as_redis_py_parses_it() -> None:
    info = {
        "role": "master",
        "connected_slaves": 1,
        "slave0": {"ip": "redis-replica", "port": 6379, "state": "online", "lag": 0},
        "slave_read_repl_offset": 5,  # not a replica entry
    }
    assert connected_replicas(info) == ["redis-replica:6379 online, lag 0 s"]
    assert connected_replicas({"role": "master", "connected_slaves": 0}) == []


def test_seen_within_says_how_long_a_write_took_to_be_read_or_none() -> None:
    reads = iter([False, False, True])
    took = seen_within(lambda: next(reads), 5.0, every=0.01)
    assert took is not None and 0.0 < took < 5.0
    assert seen_within(lambda: False, 0.05, every=0.01) is None
