"""``kbinfra upgrade``'s decisions: versions read from tags, and what each store refuses."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import yaml

from kbinfra.errors import KbinfraError
from kbinfra.services.postgres.upgrade import COPY_SCRIPT, data_migration, migration_container
from kbinfra.services.postgres.upgrade import upgrade_refusal as postgres_refusal
from kbinfra.services.qdrant.upgrade import upgrade_refusal as qdrant_refusal
from kbinfra.services.redis.upgrade import upgrade_refusal as redis_refusal
from kbinfra.stack import Stack
from kbinfra.upgrade import (
    image_version,
    new_image_for,
    version_tuple,
    with_images,
    with_settings,
)


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("qdrant/qdrant:v1.17.2", (1, 17, 2)),
        ("postgres:16-bookworm", (16,)),
        ("registry.local:5000/redis:7.2", (7, 2)),
        ("redis", None),
        ("redis:latest", None),
        ("redis@sha256:" + "a" * 64, None),
        ("localhost:5000/redis", None),
    ],
)
def test_the_version_an_image_tag_starts_with(image: str, version: tuple[int, ...] | None) -> None:
    assert image_version(image) == version


def test_to_takes_a_tag_or_a_whole_image() -> None:
    assert new_image_for("qdrant/qdrant:v1.16.3", "v1.17.0") == "qdrant/qdrant:v1.17.0"
    assert new_image_for("registry.local:5000/qdrant", "v1.17.0") == (
        "registry.local:5000/qdrant:v1.17.0"
    )
    assert new_image_for("qdrant/qdrant:v1.16.3", "mine/qdrant:v1.17.0") == "mine/qdrant:v1.17.0"


def test_the_new_image_is_set_and_every_comment_kept() -> None:
    text = "# mine\nname: kb\nservices:\n  qdrant:\n    port: 6333  # keep\n  redis: {}\n"
    out = with_images(text, {"qdrant": "q:v1.17.0", "redis": "r:7.2"}, where="kbinfra.yaml")
    assert "# mine" in out and "# keep" in out
    data = yaml.safe_load(out)
    assert data["services"]["qdrant"] == {"port": 6333, "image": "q:v1.17.0"}
    assert data["services"]["redis"] == {"image": "r:7.2"}
    with pytest.raises(KbinfraError, match=r"services\.redis in kbinfra\.yaml is not a mapping"):
        with_images("services:\n  redis: [1]\n", {"redis": "r:7.2"}, where="kbinfra.yaml")


@pytest.mark.parametrize(
    ("running", "image", "refused"),
    [
        ("1.16.3", "q:v1.16.4", None),
        ("1.16.3", "q:v1.17.0", None),
        ("1.16.3", "q:v1.18.0", "one minor version at a time"),
        ("1.16.3", "q:v2.0.0", "one minor version at a time"),
        ("1.16.3", "q:v1.16.2", "a downgrade"),
        ("1.16.3", "q:v1.15.9", "a downgrade"),
        ("1.16.3", "q:latest", "cannot tell"),
        ("1.16.3", "q:v1", "cannot tell"),
    ],
)
def test_qdrant_moves_one_minor_version_up_at_a_time(
    running: str, image: str, refused: str | None
) -> None:
    refusal = qdrant_refusal(running, image, None)
    assert (refusal is None) == (refused is None)
    if refusal is not None:
        assert refused in refusal.reason
        assert refusal.how


@pytest.mark.parametrize(
    ("running", "image", "refused"),
    [
        ("7.0.15", "r:7.0.16", None),
        ("7.0.15", "r:7.2.5", None),
        ("7.0.15", "r:8", None),
        ("7.2.5", "r:7.0.15", "a downgrade"),
        ("7.0.15", "r:6.2.14", "a downgrade"),
        ("7.0.15", "r:6", "a downgrade"),
        ("7.0.15", "r:7", "cannot tell"),
        ("7.0.15", "r:latest", "cannot tell"),
    ],
)
def test_redis_never_moves_to_an_older_release_line(
    running: str, image: str, refused: str | None
) -> None:
    refusal = redis_refusal(running, image, None)
    assert (refusal is None) == (refused is None)
    if refusal is not None:
        assert refused in refusal.reason


@pytest.mark.parametrize(
    ("running", "image", "declared", "refused"),
    [
        ("15", "postgres:15.8", None, None),
        ("15", "mine:build-7", 15, None),
        ("15", "postgres:16.4", None, None),  # by dump and restore: see below
        ("15", "kbinfra-testbed/postgres:18-c0350ac9d8ce", None, None),
        ("16", "postgres:15.8", None, "a downgrade"),
        ("15", "postgres:16.4", 15, "the tag of postgres:16.4 says PostgreSQL 16"),
        ("15", "mine:latest", None, "cannot tell"),
    ],
)
def test_postgres_refuses_a_downgrade_and_an_unknown_major(
    running: str, image: str, declared: int | None, refused: str | None
) -> None:
    refusal = postgres_refusal(running, image, SimpleNamespace(version=declared))
    assert (refusal is None) == (refused is None)
    if refusal is not None:
        assert refused in refusal.reason


def test_a_version_is_read_from_the_start_of_a_text() -> None:
    assert version_tuple("v1.16.3-rc1") == (1, 16, 3)
    assert version_tuple("unknown") is None


@pytest.mark.parametrize(
    ("running", "image", "volume", "moves_to"),
    [
        ("15", "postgres:15.8", "data", None),  # same major: the same volume
        ("15", "postgres:18.1", "data", "data-18"),
        ("18", "postgres:19.0", "data-18", "data-19"),
        ("16", "postgres:15.8", "data", None),  # a downgrade is refused, never moved
        ("15", "mine:latest", "data", None),
    ],
)
def test_a_newer_postgres_major_moves_the_data_to_a_volume_of_its_own(
    running: str, image: str, volume: str, moves_to: str | None
) -> None:
    migration = data_migration(running, image, SimpleNamespace(version=None, volume=volume))
    if moves_to is None:
        assert migration is None
        return
    assert migration is not None
    assert migration.settings == {"volume": moves_to}
    assert (migration.volume_purpose, migration.old_volume_purpose) == (moves_to, volume)
    assert "dump and restore" in migration.summary
    assert any("keep the old volume" in step for step in migration.steps)


def test_the_new_majors_throwaway_server_starts_empty(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    spec = stack.containers["postgres"]
    throwaway = migration_container(spec)
    assert throwaway.env["POSTGRES_DB"] == "postgres"  # the copy creates the stack's own
    assert any(f.target.startswith("/docker-entrypoint-initdb.d/") for f in spec.files)
    assert not any(f.target.startswith("/docker-entrypoint-initdb.d/") for f in throwaway.files)
    assert {f.target for f in throwaway.files} >= {
        "/etc/postgresql/postgresql.conf",
        "/etc/postgresql/pg_hba.conf",
    }
    assert throwaway.secret_env == spec.secret_env


def test_the_copy_stops_at_the_first_statement_the_new_major_refuses() -> None:
    assert "set -euo pipefail" in COPY_SCRIPT
    assert "ON_ERROR_STOP=1" in COPY_SCRIPT
    # the one statement that must fail, quoted as --quote-all-identifiers writes it
    assert "--quote-all-identifiers" in COPY_SCRIPT
    assert 'grep -vxF "CREATE ROLE \\"$POSTGRES_USER\\";"' in COPY_SCRIPT
    assert "PGPASSWORD" in COPY_SCRIPT and "TESTSECRET" not in COPY_SCRIPT


def test_the_data_volume_follows_the_setting(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    moved = make_stack("minimum", {"services": {"postgres": {"volume": "data-18"}}})
    (volume,) = stack.containers["postgres"].volumes
    (moved_volume,) = moved.containers["postgres"].volumes
    assert volume.volume == f"{stack.spec.name}-postgres-data"
    assert moved_volume.volume == f"{moved.spec.name}-postgres-data-18"
    with pytest.raises(KbinfraError, match="volume"):
        make_stack("minimum", {"services": {"postgres": {"volume": "../other-stack"}}})


def test_settings_are_set_and_every_comment_kept() -> None:
    text = "name: kb\nservices:\n  postgres:\n    image: postgres:15.8 # pinned\n"
    changed = with_settings(
        text, {"postgres": {"image": "postgres:18.1", "volume": "data-18"}}, where="x"
    )
    assert yaml.safe_load(changed)["services"]["postgres"] == {
        "image": "postgres:18.1",
        "volume": "data-18",
    }
    assert "# pinned" in changed
