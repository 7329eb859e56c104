"""The manifest and the pure checks around it: parsing, names, verification plan, counts."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from kbinfra.backup.manifest import (
    Artifact,
    Difference,
    Manifest,
    ManifestError,
    backup_name,
    compare_counts,
    compare_samples,
    hash_problems,
    is_partial,
    manifest_sum_line,
    not_older,
    parse_manifest,
    plan_verification,
    same_minor,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
SHA = "a" * 64


def artifact(path: str = "postgres/kb.dump", **fields: Any) -> Artifact:
    values: dict[str, Any] = {
        "path": path,
        "service": "postgres",
        "kind": "pg_dump",
        "size": 10,
        "sha256": SHA,
    }
    values.update(fields)
    return Artifact(**values)


def manifest(*artifacts: Artifact) -> Manifest:
    return Manifest(
        kbinfra_version="0.1.0",
        name="kb-20260102T030405Z",
        stack="kb",
        profile="minimum",
        target="local",
        created_at=T0,
        finished_at=T0,
        artifacts=list(artifacts),
    )


# ---------------------------------------------------------------- model and parsing
def test_round_trip_through_json_and_its_checksum() -> None:
    original = manifest(artifact(counts={"public.docs": 3}))
    data = original.to_json().encode()
    assert parse_manifest(data, manifest_sum_line(data)) == original
    assert manifest_sum_line(data) == f"{hashlib.sha256(data).hexdigest()}  manifest.json\n"


def test_a_flipped_byte_in_the_manifest_is_caught_by_its_sum() -> None:
    data = manifest(artifact(counts={"public.docs": 3})).to_json().encode()
    flipped = data.replace(b'"public.docs": 3', b'"public.docs": 4')
    with pytest.raises(ManifestError, match=r"does not match manifest\.sha256"):
        parse_manifest(flipped, manifest_sum_line(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"format": 99}', "format 99"),
        (b'{"format": 1, "name": "x"}', "kbinfra_version"),
    ],
)
def test_unreadable_manifests_say_why(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data, None)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside", "a/../../b", "a//b", "manifest.json", "a\\b", ""]
)
def test_artifact_paths_stay_inside_the_backup(path: str) -> None:
    with pytest.raises(ValidationError):
        artifact(path)


def test_times_must_carry_a_timezone() -> None:
    with pytest.raises(ValidationError):
        Manifest(
            kbinfra_version="0.1.0",
            name="x",
            stack="kb",
            profile="minimum",
            target="local",
            created_at=dt.datetime(2026, 1, 1),
            finished_at=T0,
        )


def test_data_services_in_backup_order_without_stack_files() -> None:
    stack_file = artifact("stack/kbinfra.yaml", service="stack", kind="stack_file")
    redis = artifact("redis/dump.rdb", service="redis", kind="redis_rdb")
    pg = artifact()
    assert manifest(stack_file, pg, redis).data_services() == ["postgres", "redis"]
    assert manifest(stack_file, pg, redis).for_service("redis") == [redis]


# ---------------------------------------------------------------- names
def test_backup_names_sort_by_time_and_never_collide() -> None:
    assert backup_name("kb", T0) == "kb-20260102T030405Z"
    assert backup_name("kb", T0, ["kb-20260102T030405Z"]) == "kb-20260102T030405Z-2"
    taken = ["kb-20260102T030405Z", "kb-20260102T030405Z-2.partial"]
    assert backup_name("kb", T0, taken) == "kb-20260102T030405Z-3"
    assert is_partial("kb-20260102T030405Z.partial")
    assert not is_partial("kb-20260102T030405Z")


# ---------------------------------------------------------------- verification plan
def test_verification_plan_names_missing_and_resized_files_and_hashes_the_rest() -> None:
    a, b, c = artifact("a"), artifact("b"), artifact("c")
    plan = plan_verification(manifest(a, b, c).artifacts, {"a": 10, "b": 11})
    assert [p.describe() for p in plan.problems] == [
        "b: size 11 bytes, manifest says 10",
        "c: missing",
    ]
    assert plan.to_hash == (a,)


def test_hash_problems_name_every_corrupt_file() -> None:
    a, b = artifact("a"), artifact("b")
    problems = hash_problems([a, b], {"a": SHA, "b": "b" * 64})
    assert [p.describe() for p in problems] == [
        "b: sha256 differs from the manifest: the file is corrupt"
    ]


# ---------------------------------------------------------------- counts and samples
def test_counts_identical_means_no_difference() -> None:
    assert compare_counts(artifact(counts={"t": 5, "u": 0}), {"t": 5, "u": 0}) == []


def test_a_missing_or_different_count_is_a_difference() -> None:
    differences = compare_counts(artifact(counts={"t": 5, "u": 2}), {"t": 4})
    assert [d.describe() for d in differences] == [
        "postgres/kb.dump: t expected 5, found 4",
        "postgres/kb.dump: u expected 2, found none",
    ]


def test_ranges_accept_keys_that_may_have_expired() -> None:
    rdb = artifact(counts={"db0": 10}, counts_min={"db0": 7})
    assert compare_counts(rdb, {"db0": 8}) == []
    assert compare_counts(artifact(counts={"db0": 3}, counts_min={"db0": 0}), {}) == []
    [low] = compare_counts(rdb, {"db0": 6})
    assert low.expected == "7..10" and low.kind == "different"


def test_extra_names_are_reported_as_extra() -> None:
    [extra] = compare_counts(artifact(counts={"t": 1}), {"t": 1, "new": 3, "empty": 0})
    assert extra == Difference("postgres/kb.dump", "new", "none", "3", "extra")
    assert extra.describe() == "postgres/kb.dump: new is not in the backup (now 3)"


def test_samples_must_match_exactly() -> None:
    sampled = artifact(samples={"t": "x", "u": "y"})
    assert compare_samples(sampled, {"t": "x", "u": "y", "other": "z"}) == []
    assert [d.name for d in compare_samples(sampled, {"t": "x", "u": "nope"})] == ["u"]
    assert [d.actual for d in compare_samples(sampled, {"t": "x"})] == ["none"]


def test_difference_json_has_every_field() -> None:
    difference = Difference("p", "n", "1", "2", "different")
    assert json.loads(json.dumps(difference.as_json())) == {
        "artifact": "p",
        "name": "n",
        "expected": "1",
        "actual": "2",
        "kind": "different",
    }


# ---------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("backup", "current", "ok"),
    [("1.16.3", "1.16.0", True), ("v1.16.3", "1.16.9", True), ("1.16.3", "1.17.0", False),
     ("1.16", "1.15.2", False), ("", "1.16.0", False)],
)  # fmt: skip
def test_qdrant_snapshots_need_the_same_minor(backup: str, current: str, ok: bool) -> None:
    assert same_minor(backup, current) is ok


@pytest.mark.parametrize(
    ("backup", "current", "parts", "ok"),
    [("15.4", "15.14", 1, True), ("15.4", "17.6", 1, True), ("17.6", "15.14", 1, False),
     ("7.0.15", "7.2.4", 2, True), ("7.2.4", "7.0.15", 2, False), ("8.2.1", "8.2.0", 2, True)],
)  # fmt: skip
def test_restore_needs_a_server_at_least_as_new(
    backup: str, current: str, parts: int, ok: bool
) -> None:
    assert not_older(backup, current, parts) is ok
