"""``kbinfra history`` and ``kbinfra rollback`` against a real engine, locally and over SSH.

One Redis stack per target kind. Release 1 is the test bed's Redis image; release 2 a new
image (built here from it, so its id differs) on a new port. Rolling back returns the
container to release 1's image id, config hash and port, keeps the data (a key set on release
2 is still there), and leaves kbinfra.yaml as release 1's so the next plan has nothing to do.
Then a rebuilt image under release 2's tag: rolling back to release 2 puts the tag back on
release 2's image id (a tag that moved since is moved back).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import redis

from .stack_support import Deployment, build_image, fixed_secret, free_port, new_deployment
from .testbed_support import Testbed

pytestmark = pytest.mark.integration

#: Built by :func:`build_next_image` from the test bed's Redis image.
REPOSITORY = "kbinfra-test/redis-next"
NEXT_IMAGE = f"{REPOSITORY}:it"


def build_next_image(client: docker.DockerClient, base: str, mark: str) -> str:
    """``NEXT_IMAGE``: ``base`` with one label more, so its id is its own; the id."""
    dockerfile = f"FROM {base}\nLABEL org.kbinfra.test.release-mark={mark}\n"
    return build_image(client, dockerfile, NEXT_IMAGE)


def client_of(stack: Deployment) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=stack.port("redis"),
        username="admin",
        password=fixed_secret("redis_admin_password"),
        socket_timeout=10,
    )


def container(client: docker.DockerClient, stack: Deployment) -> Any:
    return client.containers.get(stack.container("redis"))


def history(stack: Deployment) -> list[dict[str, Any]]:
    shown = stack.run("history", "-o", "json")
    assert shown.code == 0, shown.err
    releases: list[dict[str, Any]] = shown.json()["releases"]
    return releases


@pytest.fixture(scope="module", params=["local", "ssh"])
def stack(
    request: pytest.FixtureRequest,
    testbed: Testbed,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp(f"releases-{request.param}") / "stack"
    deployment = new_deployment(request.param, folder, testbed, ["redis"], prefix="kbr")
    yield deployment
    deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)


def test_rollback_returns_images_and_configuration_and_keeps_data(
    stack: Deployment, testbed: Testbed, docker_client: docker.DockerClient
) -> None:
    assert history(stack) == []
    first = stack.run("apply", "--yes", "-o", "json")
    assert first.code == 0, first.err
    assert first.json()["release"] == 1
    release_1 = container(docker_client, stack)
    stack_file_1 = (stack.dir / "kbinfra.yaml").read_text()

    again = stack.run("apply", "--yes", "-o", "json")
    assert again.json()["release"] is None, "a no-op apply records no release"

    next_id = build_next_image(docker_client, testbed.images["redis"], stack.name)
    new_port = free_port()

    def upgrade(data: dict[str, Any]) -> None:
        data["services"]["redis"]["image"] = NEXT_IMAGE
        data["services"]["redis"]["port"] = new_port

    stack.edit(upgrade)
    second = stack.run("apply", "--yes", "-o", "json")
    assert second.code == 0, second.err
    assert second.json()["release"] == 2
    assert container(docker_client, stack).image.id == next_id
    client_of(stack).set("written-on-release-2", "kept")

    releases = history(stack)
    assert [r["release"] for r in releases] == [2, 1]
    assert releases[0]["changed"] == ["redis"]
    assert releases[0]["images"]["redis"] == {"ref": NEXT_IMAGE, "id": next_id}
    assert releases[1]["images"]["redis"]["id"] == release_1.image.id
    assert all("stack_file" not in r for r in releases)
    assert fixed_secret("redis_admin_password") not in json.dumps(releases)
    plan = stack.run("plan")
    assert plan.code == 0, plan.out + plan.err

    back = stack.run("rollback", "--yes", "-o", "json")
    assert back.code == 0, back.out + back.err
    report = back.json()
    assert report["release"] == 3
    assert "data is not rolled back" in back.err
    now = container(docker_client, stack)
    assert now.image.id == release_1.image.id
    assert now.labels["kbinfra.config-hash"] == release_1.labels["kbinfra.config-hash"]
    assert (stack.dir / "kbinfra.yaml").read_text() == stack_file_1
    assert NEXT_IMAGE in (stack.dir / "kbinfra.yaml.before-rollback").read_text()
    assert client_of(stack).get("written-on-release-2") == b"kept"
    after = stack.run("plan")
    assert after.code == 0, after.out + after.err
    assert history(stack)[0]["rollback_of"] == 1

    # Release 2's tag is rebuilt (another id) and applied; rolling back to release 2 moves
    # the tag back to the image release 2 ran.
    stack.edit(upgrade)
    rebuilt_id = build_next_image(docker_client, testbed.images["redis"], f"{stack.name}-b")
    assert rebuilt_id != next_id
    fourth = stack.run("apply", "--yes", "-o", "json")
    assert fourth.code == 0, fourth.err
    assert container(docker_client, stack).image.id == rebuilt_id
    to_2 = stack.run("rollback", "2", "--yes")
    assert to_2.code == 0, to_2.out + to_2.err
    assert container(docker_client, stack).image.id == next_id
    assert docker_client.images.get(NEXT_IMAGE).id == next_id
    assert client_of(stack).get("written-on-release-2") == b"kept"
    assert [r["rollback_of"] for r in history(stack)[:2]] == [2, None]


def test_a_missing_release_or_a_tampered_record_is_one_line(stack: Deployment) -> None:
    unknown = stack.run("rollback", "99", "--yes")
    assert unknown.code == 2
    assert "release 99 is not recorded" in unknown.err
    assert "Traceback" not in unknown.err


def test_destroy_keeps_the_history_unless_the_data_goes_too(stack: Deployment) -> None:
    kept = stack.run("destroy", "--yes")
    assert kept.code == 0, kept.err
    assert [r["release"] for r in history(stack)][:1] == [5]
    gone = stack.run("destroy", "--yes", "--delete-data", "--confirm-name", stack.name)
    assert gone.code == 0, gone.err
    assert history(stack) == []
