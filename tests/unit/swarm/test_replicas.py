"""PostgreSQL and Redis streaming replicas on a Swarm: rendered when the stack file asks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.render import render_stack
from kbinfra.stack import Stack, open_stack
from kbinfra.swarm.build import swarm_stack
from kbinfra.swarm.capacity import swarm_fit
from kbinfra.swarm.placement import stack_placements
from tests.conftest import edit_stack_file


def _with_replicas(make_swarm_stack: Callable[..., Stack]) -> Stack:
    stack = make_swarm_stack()
    placements = stack_placements(stack)
    nodes = ["node1", "node2", "node3"]
    other = {
        name: next(n for n in nodes if n != placements[name].nodes[0])
        for name in ("postgres", "redis")
    }
    replicas = {name: {"replica": {"node": node}} for name, node in other.items()}
    return make_swarm_stack(overrides={"swarm": {"services": replicas}})


def test_a_postgres_replica_streams_from_the_primary_with_its_own_role_and_slot(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = _with_replicas(make_swarm_stack)
    files = {f.path: f for f in render_stack(stack)}
    assert "host    replication  kbinfra_replicator  samenet   scram-sha-256" in (
        files["postgres/pg_hba.conf"].text
    )
    create = files["postgres/initdb/30-replication.sh"]
    assert "WITH REPLICATION LOGIN PASSWORD %L" in create.text
    assert "cut -d: -f5 /etc/postgresql/replica/pgpass" in create.text
    assert "pg_create_physical_replication_slot('kbinfra_replica')" in create.text
    start = files["postgres/replica/start.sh"].text
    assert "pg_basebackup --host=postgres" in start and "--slot=kbinfra_replica" in start
    assert "primary_conninfo='host=postgres port=5432 user=kbinfra_replicator" in start
    assert "passfile=/etc/postgresql/replica/pgpass" in start
    assert files["postgres/replica/pgpass"].secret
    password = stack.secrets["postgres_password"]
    assert all(password not in f.text for f in files.values() if not f.secret)
    by_name = {s.name: s for s in swarm_stack(stack, stack.rendered).services}
    primary, replica = by_name["kb_postgres"], by_name["kb_postgres-replica"]
    assert replica.constraints != primary.constraints
    assert replica.hostname == "postgres-replica"
    assert (replica.service, replica.network_aliases) == ("postgres-replica", ("postgres-replica",))
    assert primary.network_aliases == ("postgres",)
    assert [m.source for m in replica.mounts if m.data] == ["kb-postgres-replica"]
    assert replica.entrypoint == ["/bin/sh", "/etc/postgresql/replica/start.sh"]
    assert "POSTGRES_PASSWORD_FILE" not in replica.env
    pgpass = next(s for s in replica.secrets if s.target.endswith("pgpass"))
    assert (pgpass.uid, pgpass.mode) == ("999", 0o400)


def test_a_redis_replica_follows_the_primary_as_a_least_privilege_acl_user(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = _with_replicas(make_swarm_stack)
    files = {f.path: f for f in render_stack(stack)}
    acl = files["redis/users.acl"].text
    assert "user kbinfra-replicator on #" in acl
    assert acl.rstrip().endswith("-@all +psync +replconf +ping")
    conf = files["redis/replica/redis.conf"]
    assert conf.secret and conf.mode == 0o600
    for line in (
        "replicaof redis 6379",
        "masteruser kbinfra-replicator",
        "replica-announce-ip redis-replica",
        "include /usr/local/etc/redis/redis.conf",
    ):
        assert line in conf.text
    assert stack.secrets["redis_admin_password"] not in conf.text
    by_name = {s.name: s for s in swarm_stack(stack, stack.rendered).services}
    assert by_name["kb_redis-replica"].command == [
        "redis-server",
        "/usr/local/etc/redis/replica/redis.conf",
    ]


def test_without_a_replica_nothing_of_replication_is_rendered(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    files = {f.path: f for f in render_stack(make_swarm_stack())}
    assert not [p for p in files if "replica" in p or "30-replication" in p]
    assert "kbinfra-replicator" not in files["redis/users.acl"].text
    assert "replication" not in files["postgres/pg_hba.conf"].text.split("METHOD")[-1]


def test_a_replica_on_the_primarys_node_or_of_a_store_without_one_is_refused(
    make_swarm_stack: Callable[..., Stack], swarm_dir: Callable[..., Path]
) -> None:
    home = stack_placements(make_swarm_stack())["postgres"].nodes[0]
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"postgres": {"replica": {"node": home}}}}})
    with pytest.raises(SpecError, match="the primary's node"):
        open_stack(folder)
    folder = swarm_dir()
    edit_stack_file(folder, {"swarm": {"services": {"qdrant": {"replica": {"node": "node1"}}}}})
    with pytest.raises(SpecError, match="qdrant has no streaming replica"):
        open_stack(folder)


def test_a_replica_is_charged_to_its_node(make_swarm_stack: Callable[..., Stack]) -> None:
    stack = _with_replicas(make_swarm_stack)
    placements = stack_placements(stack)
    fit = swarm_fit(stack, placements)
    replica_node = placements["postgres"].replica
    load = next(load for load in fit.loads if load.node.name == replica_node)
    assert ("postgres-replica", 1) in load.services
