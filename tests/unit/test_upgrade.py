"""``kbinfra upgrade``'s decisions: versions read from tags, and what each store refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from kbinfra.errors import KbinfraError
from kbinfra.services.postgres.upgrade import upgrade_refusal as postgres_refusal
from kbinfra.services.qdrant.upgrade import upgrade_refusal as qdrant_refusal
from kbinfra.services.redis.upgrade import upgrade_refusal as redis_refusal
from kbinfra.upgrade import image_version, new_image_for, version_tuple, with_images


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
        ("15", "postgres:16.4", None, "cannot open PostgreSQL 15's data directory"),
        ("16", "postgres:15.8", None, "a downgrade"),
        ("15", "postgres:16.4", 15, "the tag of postgres:16.4 says PostgreSQL 16"),
        ("15", "mine:latest", None, "cannot tell"),
    ],
)
def test_postgres_keeps_its_data_directory_only_within_a_major(
    running: str, image: str, declared: int | None, refused: str | None
) -> None:
    refusal = postgres_refusal(running, image, SimpleNamespace(version=declared))
    assert (refusal is None) == (refused is None)
    if refusal is not None:
        assert refused in refusal.reason


def test_a_version_is_read_from_the_start_of_a_text() -> None:
    assert version_tuple("v1.16.3-rc1") == (1, 16, 3)
    assert version_tuple("unknown") is None
