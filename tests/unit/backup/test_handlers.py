"""Pure parts of the per-service backup modules and of the orchestration around them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kbinfra.backup import handler_for
from kbinfra.backup.handler import BackupError, Observed
from kbinfra.backup.manifest import Artifact, ServiceRecord
from kbinfra.backup.run import (
    check_artifact,
    data_handlers,
    drill_spec,
    select_services,
    summarize,
    wait_healthy_again,
)
from kbinfra.backup.volumes import member_problem, tar_path, tar_problem, volumes_to_restore
from kbinfra.service import ContainerSpec, PortBinding, VolumeMount
from kbinfra.services.postgres.backup import (
    HANDLER as POSTGRES,
)
from kbinfra.services.postgres.backup import (
    RoleRecord,
    conninfo_dbname,
    dump_path,
    parse_roles,
    role_options,
)
from kbinfra.services.qdrant.backup import (
    State,
    alias_actions,
    aliases_digest,
    bracket,
    points_digest,
    snapshot_path,
    vector_fingerprint,
)
from kbinfra.services.redis.backup import (
    Persistence,
    canonical_digest,
    keyspace_counts,
    parse_info,
    persistence_settings,
    read_command,
    sample_name,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
SHA = "0" * 64


# ---------------------------------------------------------------- discovery
def test_handlers_are_found_by_the_services_module_name() -> None:
    for service in ("postgres", "qdrant", "redis"):
        handler = handler_for(service)
        assert handler is not None and handler.service == service
    for not_a_data_service in ("nginx", "postgres-exporter", "manifest", "run", "volumes", "x/y"):
        assert handler_for(not_a_data_service) is None


def test_data_handlers_follow_the_enabled_services(make_stack: Any) -> None:
    stack = make_stack("minimum", {"services": {"qdrant": {"enabled": False}}})
    assert list(data_handlers(stack)) == ["postgres", "redis"]


# ---------------------------------------------------------------- postgres
SCRAM = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"


def role(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "app", "superuser": False, "inherit": True, "createrole": False,
        "createdb": False, "login": True, "replication": False, "bypassrls": False,
        "connection_limit": -1,
    }  # fmt: skip
    return {**values, **fields}


def roles_json(*roles: dict[str, Any], memberships: Any = ()) -> bytes:
    return json.dumps({"roles": list(roles), "memberships": list(memberships)}).encode()


def test_roles_are_data_whose_attributes_become_fixed_keywords() -> None:
    found = parse_roles(roles_json(role(password=SCRAM)), "b")
    assert found.roles[0].password == SCRAM
    assert role_options(found.roles[0]) == [
        "NOSUPERUSER", "INHERIT", "NOCREATEROLE", "NOCREATEDB", "LOGIN", "NOREPLICATION",
        "NOBYPASSRLS",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (roles_json(role(password="plain-text")), "roles.0.password"),
        (roles_json(role(password="SCRAM-SHA-256$1:a$b:c'; DROP ROLE kb; --")), "password"),
        (roles_json(role(name="pg_read_server_files")), "reserves"),
        (roles_json(role(name="a\u0000b")), "roles.0.name"),
        (roles_json(role(superuser="yes; \\! id")), "roles.0.superuser"),
        (roles_json(role(sql="\\! id")), "roles.0.sql"),
        (roles_json(memberships=[{"role": "x", "member": "pg_monitor"}]), "memberships.0"),
        (b"CREATE ROLE x;\n\\! id\n", "roles.json"),
    ],
)
def test_a_roles_file_that_is_not_plain_data_is_refused(roles: bytes, message: str) -> None:
    with pytest.raises(BackupError, match=message) as caught:
        parse_roles(roles, "backup-dir")
    assert "nothing was changed" in str(caught.value)


def test_role_records_refuse_a_superuser_flag_that_is_not_a_boolean() -> None:
    with pytest.raises(ValueError):
        RoleRecord.model_validate(role(superuser="true"), strict=True)


def pg_artifact(path: str, kind: Any, **meta: str) -> Artifact:
    return Artifact(path=path, service="postgres", kind=kind, size=1, sha256=SHA, meta=meta)


def test_only_the_stacks_own_database_is_restored_and_no_script_ever(
    make_stack: Any, tmp_path: Path
) -> None:
    ctx = make_stack().contexts["postgres"]
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "roles.json").write_bytes(roles_json(role()))
    own = pg_artifact("postgres/kb.dump", "pg_dump", database="kb")
    other = pg_artifact("postgres/postgres.dump", "pg_dump", database="postgres")
    script = pg_artifact("postgres/globals.sql", "pg_globals")
    roles = pg_artifact("postgres/roles.json", "pg_roles")
    chosen, notes = POSTGRES.restorable(ctx, [script, roles, other, own], tmp_path)
    assert chosen == [roles, own]
    assert any("postgres/postgres.dump not restored" in n for n in notes)
    assert any("postgres/globals.sql not run" in n for n in notes)
    with pytest.raises(BackupError, match="no dump of database 'kb'"):
        POSTGRES.restorable(ctx, [other, roles], tmp_path)
    (tmp_path / "postgres" / "roles.json").write_text("\\! id")
    with pytest.raises(BackupError, match=r"roles\.json"):
        POSTGRES.restorable(ctx, [roles, own], tmp_path)


def test_a_manifest_lacking_what_restore_reads_is_named() -> None:
    record = ServiceRecord(version="16.4")
    dump = pg_artifact("postgres/kb.dump", "pg_dump")
    assert POSTGRES.manifest_problem(None, []) == "postgres has no entry in the manifest's services"
    assert POSTGRES.manifest_problem(record, [dump]) == "postgres/kb.dump lacks meta.database"
    redis = handler_for("redis")
    assert redis is not None
    assert redis.manifest_problem(record, []) == "redis has no redis_rdb artifact"


# ---------------------------------------------------------------- volumes
def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (tar_member("kbinfra-volume/a.txt"), None),
        (tar_member("kbinfra-volume", tarfile.DIRTYPE), None),
        (tar_member("kbinfra-volume/docs/l", tarfile.SYMTYPE, "../a.txt"), None),
        (tar_member("kbinfra-volume/h", tarfile.LNKTYPE, "kbinfra-volume/a.txt"), None),
        (tar_member("/etc/cron.d/x"), "not inside the volume"),
        (tar_member("kbinfra-volume/../etc/x"), "not inside the volume"),
        (tar_member("etc/x"), "not inside the volume"),
        (tar_member("kbinfra-volume/l", tarfile.SYMTYPE, "/etc/shadow"), "absolute path"),
        (tar_member("kbinfra-volume/l", tarfile.SYMTYPE, "../../etc"), "points outside"),
        (tar_member("kbinfra-volume/h", tarfile.LNKTYPE, "etc/passwd"), "points outside"),
        (tar_member("kbinfra-volume/h", tarfile.LNKTYPE, "kbinfra-volume/../x"), "outside"),
        (tar_member("kbinfra-volume/sda", tarfile.BLKTYPE), "device"),
        (tar_member("kbinfra-volume/tty", tarfile.CHRTYPE), "device"),
        (tar_member("kbinfra-volume/pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_tar_members_that_leave_the_volume_are_refused(
    member: tarfile.TarInfo, problem: str | None
) -> None:
    found = member_problem(member)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_first_bad_member_of_a_tar_stream_is_named() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tar_member("kbinfra-volume/ok.txt"), io.BytesIO(b""))
        tar.addfile(tar_member("kbinfra-volume/../../root/.ssh/authorized_keys"), io.BytesIO())
    buffer.seek(0)
    assert tar_problem(buffer) == (
        "member 'kbinfra-volume/../../root/.ssh/authorized_keys' is not inside the volume"
    )
    assert tar_problem(io.BytesIO(b"not a tar at all" * 100)) is not None


def test_a_volume_is_the_stacks_own_never_the_manifests() -> None:
    tar = Artifact(
        path="volumes/uploads.tar", service="volumes", kind="volume_tar", size=1, sha256=SHA,
        meta={"volume": "kb-postgres-data"},
    )  # fmt: skip
    assert volumes_to_restore([tar], ["uploads", "other"]) == {"volumes/uploads.tar": "uploads"}
    with pytest.raises(BackupError, match=r"backup\.volumes of this stack does not list"):
        volumes_to_restore([tar], ["other"])


def test_database_names_are_passed_as_conninfo_and_file_names_are_safe() -> None:
    assert conninfo_dbname("kb") == "dbname='kb'"
    assert conninfo_dbname("a=b'c\\") == "dbname='a=b\\'c\\\\'"
    assert dump_path("kb") == "postgres/kb.dump"
    odd = dump_path("../x y")
    assert odd.startswith("postgres/db-") and odd.endswith(".dump") and ".." not in odd


# ---------------------------------------------------------------- redis
def test_persistence_settings_of_the_rendered_config() -> None:
    conf = (GOLDEN / "minimum" / "redis" / "redis.conf").read_text()
    assert persistence_settings(conf) == Persistence(
        dir="/data",
        dbfilename="dump.rdb",
        appendonly=True,
        appenddirname="appendonlydir",
        appendfilename="appendonly.aof",
        databases=16,
    )
    assert persistence_settings("") == Persistence()


def test_keyspace_counts_from_parsed_or_raw_info() -> None:
    raw = parse_info("# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=10\r\ndb3:keys=1,expires=0\r\n")
    assert keyspace_counts(raw) == ({"db0": 5, "db3": 1}, {"db0": 2, "db3": 0})
    parsed = {"db0": {"keys": 5, "expires": 2, "avg_ttl": 10}}
    assert keyspace_counts(parsed) == ({"db0": 5}, {"db0": 2})


def test_canonical_digests_ignore_redis_internal_order() -> None:
    assert canonical_digest("set", [b"b", b"a"]) == canonical_digest("set", [b"a", b"b"])
    as_dict = canonical_digest("hash", {b"f": b"1", b"g": b"2"})
    assert as_dict == canonical_digest("hash", {b"g": b"2", b"f": b"1"})
    assert as_dict == canonical_digest("hash", [b"g", b"2", b"f", b"1"])
    assert canonical_digest("list", [b"a", b"b"]) != canonical_digest("list", [b"b", b"a"])
    assert canonical_digest("string", b"x") != canonical_digest("list", [b"x"])


def test_sample_names_hide_the_key() -> None:
    name = sample_name(3, b"session:secret-id")
    assert name.startswith("db3:") and "session" not in name and len(name) == 20


# ---------------------------------------------------------------- qdrant
def test_a_collection_that_held_still_gets_exact_counts_and_a_sample() -> None:
    assert bracket(State(5, "s"), State(5, "s")) == ({"points": 5}, {}, {"first_points": "s"})


def test_a_changing_collection_gets_a_range_and_no_sample() -> None:
    assert bracket(State(5, "s"), State(9, "t")) == ({"points": 9}, {"points": 5}, {})
    assert bracket(State(9, "s"), State(5, "t")) == ({"points": 9}, {"points": 5}, {})
    assert bracket(State(5, "s"), State(5, "t")) == ({"points": 5}, {}, {})


def test_vector_fingerprints_survive_float_width_and_normalization() -> None:
    sent = [0.6229016948897019, -0.7417869892607294, 0.0]
    stored = [0.6229016780853271, -0.7417870163917542, 0.0]
    normalized = [v / 0.9686 for v in sent]
    assert vector_fingerprint(sent) == vector_fingerprint(stored) == vector_fingerprint(normalized)
    assert vector_fingerprint(sent) == {"dim": 3, "signs": "+-0", "max": 0, "min": 1}
    assert vector_fingerprint([0.1, 0.2, 0.3]) != vector_fingerprint([0.3, 0.2, 0.1])


def test_vector_fingerprints_of_named_sparse_and_multi_vectors() -> None:
    named = {"text": [1.0, -1.0], "sparse": {"indices": [3, 7], "values": [0.5, -0.1]}}
    assert vector_fingerprint(named) == {
        "sparse": {"indices": [3, 7], "values": {"dim": 2, "signs": "+-", "max": 0, "min": 1}},
        "text": {"dim": 2, "signs": "+-", "max": 0, "min": 1},
    }
    assert vector_fingerprint([[1.0], [-1.0]]) == [
        {"dim": 1, "signs": "+", "max": 0, "min": 0},
        {"dim": 1, "signs": "-", "max": 0, "min": 0},
    ]


def test_points_digest_sees_payload_and_id_changes() -> None:
    point = {"id": 1, "vector": [0.5, -0.5], "payload": {"a": 1}}
    same = {"payload": {"a": 1}, "vector": [0.5000001, -0.5], "id": 1, "shard_key": None}
    assert points_digest([point]) == points_digest([same])
    assert points_digest([point]) != points_digest([{**point, "payload": {"a": 2}}])
    assert points_digest([point]) != points_digest([{**point, "id": 2}])


def test_aliases_are_replaced_then_created() -> None:
    wanted = [{"alias_name": "docs", "collection_name": "kb_docs"}]
    existing = [
        {"alias_name": "docs", "collection_name": "old"},
        {"alias_name": "other", "collection_name": "x"},
    ]
    assert alias_actions(wanted, existing) == [
        {"delete_alias": {"alias_name": "docs"}},
        {"create_alias": {"alias_name": "docs", "collection_name": "kb_docs"}},
    ]
    assert aliases_digest(wanted, "kb_docs") is not None
    assert aliases_digest(wanted, "other") is None


def test_artifact_file_names_are_safe() -> None:
    assert snapshot_path("kb_docs") == "qdrant/kb_docs.snapshot"
    assert snapshot_path("a/b").startswith("qdrant/collection-")
    assert tar_path("uploads") == "volumes/uploads.tar"
    assert tar_path("../x").startswith("volumes/volume-")


# ---------------------------------------------------------------- orchestration
def test_drill_containers_publish_nothing_and_use_their_own_volumes() -> None:
    spec = ContainerSpec(
        service="postgres",
        image="postgres:17",
        ports=[PortBinding(host_ip="127.0.0.1", host_port=5432, container_port=5432)],
        volumes=[VolumeMount(volume="kb-postgres-data", target="/var/lib/postgresql/data")],
        depends_on=["x"],
        cpus=1,
        memory_mb=512,
    )
    drilled = drill_spec(spec, "kb", "kb-drill")
    assert not drilled.ports and not drilled.depends_on
    assert [v.volume for v in drilled.volumes] == ["kb-drill-postgres-data"]
    assert drilled.image == spec.image and drilled.memory_mb == spec.memory_mb


def test_only_selects_from_what_the_backup_holds() -> None:
    available = ["postgres", "qdrant", "redis"]
    assert select_services(available, None) == available
    assert select_services(available, ["redis", "postgres"]) == ["postgres", "redis"]
    with pytest.raises(Exception, match="holds no nginx"):
        select_services(available, ["nginx"])


def _artifact(**fields: Any) -> Artifact:
    values: dict[str, Any] = {
        "path": "p",
        "service": "postgres",
        "kind": "pg_dump",
        "size": 1,
        "sha256": SHA,
    }
    values.update(fields)
    return Artifact(**values)


def test_a_drill_fails_on_extra_content_a_restore_only_warns() -> None:
    art = _artifact(counts={"public.docs": 3}, samples={"public.docs": "x"})
    now = Observed({"public.docs": 3, "public.newer": 1}, {"public.docs": "x"})
    strict = check_artifact(art, now, strict=True, with_samples=True)
    assert not strict.ok and [d.kind for d in strict.differences] == ["extra"]
    live = check_artifact(art, now, strict=False, with_samples=True)
    assert live.ok and [d.name for d in live.warnings] == ["public.newer"]


def test_samples_are_skipped_when_not_comparable() -> None:
    art = _artifact(counts={"t": 1}, samples={"t": "x"})
    assert check_artifact(art, Observed({"t": 1}, {"t": "y"}), strict=True, with_samples=False).ok
    assert not check_artifact(
        art, Observed({"t": 1}, {"t": "y"}), strict=True, with_samples=True
    ).ok


def test_a_volume_restored_over_more_files_warns_but_fewer_fails() -> None:
    art = _artifact(service="volumes", kind="volume_tar", counts={"files": 2, "bytes": 10})
    more = check_artifact(
        art, Observed({"files": 3, "bytes": 15}), strict=False, with_samples=False
    )
    assert more.ok and len(more.warnings) == 2
    fewer = check_artifact(
        art, Observed({"files": 1, "bytes": 5}), strict=False, with_samples=False
    )
    assert not fewer.ok


def test_summaries_per_kind() -> None:
    assert summarize({"a": 2, "b": 3}, "pg_dump") == "2 tables, 5 rows"
    assert summarize({"db0": 4}, "redis_rdb") == "1 dbs, 4 keys"
    assert summarize({"points": 7}, "qdrant_snapshot") == "7 points"
    assert summarize({"files": 2, "bytes": 9}, "volume_tar") == "2 files, 9 bytes"


def test_values_are_read_with_the_key_first() -> None:
    assert read_command("list", b"k") == ("LRANGE", b"k", "0", "-1")
    assert read_command("string", b"k") == ("GET", b"k")
    assert read_command("zset", b"k") == ("ZRANGE", b"k", "0", "-1", "WITHSCORES")


def test_an_unpaused_container_is_waited_for_through_unhealthy() -> None:
    """A long pause leaves Docker's health "unhealthy" until the next check passes: the
    restore waits for that check instead of reporting the app broken."""

    class Engine:
        def __init__(self, healths: list[str | None]) -> None:
            self.healths = healths

        def inspect(self, container_id: str) -> dict[str, Any]:
            health = self.healths.pop(0) if len(self.healths) > 1 else self.healths[0]
            return {"State": {"Status": "running", "Health": health and {"Status": health}}}

    assert wait_healthy_again(Engine(["unhealthy", "healthy"]), "c", 30) is None  # type: ignore[arg-type]
    assert wait_healthy_again(Engine([None]), "c", 30) is None  # type: ignore[arg-type]
    stuck = wait_healthy_again(Engine(["unhealthy"]), "c", 0)  # type: ignore[arg-type]
    assert stuck == "not healthy 0 s after it was unpaused (state running, health unhealthy)"
