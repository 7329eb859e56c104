"""Pure parts of the per-service backup modules and of the orchestration around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kbinfra.backup import handler_for
from kbinfra.backup.handler import Observed
from kbinfra.backup.manifest import Artifact
from kbinfra.backup.run import (
    check_artifact,
    data_handlers,
    drill_spec,
    select_services,
    summarize,
)
from kbinfra.backup.volumes import tar_path
from kbinfra.service import ContainerSpec, PortBinding, VolumeMount
from kbinfra.services.postgres.backup import (
    conninfo_dbname,
    dump_path,
    restore_errors,
    without_passwords_of,
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
GLOBALS = """CREATE ROLE kb;
ALTER ROLE kb WITH SUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:it''s';
ALTER ROLE kbinfra_monitor WITH LOGIN PASSWORD 'md5x';
"""


def test_restore_keeps_the_passwords_kbinfra_manages() -> None:
    filtered = without_passwords_of(GLOBALS, ["kb", "kbinfra_monitor"])
    assert "ALTER ROLE kb WITH SUPERUSER INHERIT LOGIN;" in filtered
    assert "ALTER ROLE kbinfra_monitor WITH LOGIN;" in filtered
    assert "ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:it''s';" in filtered


def test_database_names_are_passed_as_conninfo_and_file_names_are_safe() -> None:
    assert conninfo_dbname("kb") == "dbname='kb'"
    assert conninfo_dbname("a=b'c\\") == "dbname='a=b\\'c\\\\'"
    assert dump_path("kb") == "postgres/kb.dump"
    odd = dump_path("../x y")
    assert odd.startswith("postgres/db-") and odd.endswith(".dump") and ".." not in odd


def test_globals_restore_ignores_only_existing_roles() -> None:
    stderr = (
        'psql:<stdin>:1: ERROR:  role "kb" already exists\n'
        'psql:<stdin>:9: ERROR:  permission denied to alter role "x"\n'
    )
    assert restore_errors(stderr) == ['psql:<stdin>:9: ERROR:  permission denied to alter role "x"']


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
