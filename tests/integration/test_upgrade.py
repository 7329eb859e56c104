"""``kbinfra upgrade`` against a real engine: refusals before any change, then a real upgrade.

One stack of the three stores (PostgreSQL, Redis, and the Qdrant stand-in, which reports
version 1.16.3 at ``GET /`` as upstream does). Upgrades the data cannot follow are refused
with the way to do them, and nothing is changed or backed up: PostgreSQL 15 → 16 (its
``PG_VERSION`` is read from the data directory), Qdrant 1.16 → 1.18 (one minor at a time),
Redis 7 → 6.2 (an older RDB line). Then Qdrant 1.16.3 → 1.17.0, an image built here from the
stand-in that reports 1.17.0: ``--check`` changes nothing; the upgrade backs Qdrant up first
(the backup verifies), recreates Qdrant alone, keeps its points, and kbinfra.yaml names the
new image, so the next plan has nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from .stack_support import Deployment, build_image, fixed_secret, new_deployment
from .testbed_support import Testbed

pytestmark = pytest.mark.integration

#: Built by :func:`qdrant_next` from the test bed's Qdrant stand-in.
REPOSITORY = "kbinfra-test/qdrant-next"
QDRANT_NEXT = f"{REPOSITORY}:v1.17.0"
COLLECTION = "kept_through_upgrade"


def qdrant_next(client: docker.DockerClient, standin: str) -> str:
    """The stand-in, reporting version 1.17.0: its id."""
    dockerfile = f"FROM {standin}\nENV KBINFRA_STANDIN_QDRANT_VERSION=1.17.0\n"
    return build_image(client, dockerfile, QDRANT_NEXT)


def qdrant(stack: Deployment) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.port('qdrant')}",
        headers={"api-key": fixed_secret("qdrant_api_key")},
        timeout=60,
    )


def points(stack: Deployment) -> dict[Any, Any]:
    with qdrant(stack) as client:
        found = client.post(
            f"/collections/{COLLECTION}/points/scroll",
            json={"limit": 100, "with_payload": True, "with_vector": False},
        ).json()["result"]["points"]
    return {p["id"]: p["payload"] for p in found}


def container_ids(client: docker.DockerClient, stack: Deployment) -> dict[str, str]:
    found = client.containers.list(all=True, filters={"label": f"kbinfra.stack={stack.name}"})
    return {c.labels["kbinfra.service"]: c.id for c in found if "kbinfra.service" in c.labels}


@pytest.fixture(scope="module")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("upgrade") / "stack"
    deployment = new_deployment("local", folder, testbed, ["postgres", "redis", "qdrant"], "kbu")
    applied = deployment.run("apply", "--yes")
    assert applied.code == 0, applied.out + applied.err
    with qdrant(deployment) as client:
        made = client.put(
            f"/collections/{COLLECTION}", json={"vectors": {"size": 4, "distance": "Cosine"}}
        )
        assert made.status_code == 200, made.text
        upserted = client.put(
            f"/collections/{COLLECTION}/points?wait=true",
            json={
                "points": [
                    {"id": i, "vector": [1.0, i, 0.5, 0.25], "payload": {"n": i}}
                    for i in range(1, 21)
                ]
            },
        )
        assert upserted.status_code == 200, upserted.text
    yield deployment
    deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)


@pytest.mark.parametrize(
    ("service", "to", "reason", "how"),
    [
        ("postgres", "16-bookworm", "cannot open PostgreSQL 15's data directory", "dump"),
        ("qdrant", "v1.18.0", "one minor version at a time: 1.16.3 → 1.18.0", "v1.17"),
        ("redis", "6.2.14", "cannot load the RDB", "stay on 7"),
    ],
)
def test_an_upgrade_the_data_cannot_follow_is_refused_before_any_change(
    stack: Deployment,
    docker_client: docker.DockerClient,
    service: str,
    to: str,
    reason: str,
    how: str,
) -> None:
    before = container_ids(docker_client, stack)
    stack_file = (stack.dir / "kbinfra.yaml").read_text()
    backups = stack.dir / "backups"
    had = sorted(backups.iterdir()) if backups.exists() else []
    for extra in ((), ("--check",)):
        refused = stack.run("upgrade", service, "--to", to, "--yes", *extra)
        assert refused.code == 2, refused.out + refused.err
        assert reason in refused.err
        assert how in refused.err
        assert "nothing was changed" in refused.err
        assert "Traceback" not in refused.err
    assert container_ids(docker_client, stack) == before
    assert (stack.dir / "kbinfra.yaml").read_text() == stack_file
    assert (sorted(backups.iterdir()) if backups.exists() else []) == had


def test_qdrant_one_minor_up_is_backed_up_then_applied_alone(
    stack: Deployment, testbed: Testbed, docker_client: docker.DockerClient
) -> None:
    new_id = qdrant_next(docker_client, testbed.images["qdrant"])
    kept = points(stack)
    assert len(kept) == 20
    before = container_ids(docker_client, stack)

    checked = stack.run("upgrade", "qdrant", "--to", QDRANT_NEXT, "--check", "-o", "json")
    assert checked.code == 0, checked.out + checked.err
    (step,) = checked.json()["steps"]
    assert step["running_version"] == "1.16.3"
    assert step["allowed"] and step["backed_up"]
    assert container_ids(docker_client, stack) == before

    upgraded = stack.run("upgrade", "qdrant", "--to", QDRANT_NEXT, "--yes", "-o", "json")
    assert upgraded.code == 0, upgraded.out + upgraded.err
    result = upgraded.json()
    changed = {r["service"]: r["outcome"] for r in result["services"] if r["action"] != "nothing"}
    assert changed == {"qdrant": "recreated"}
    after = container_ids(docker_client, stack)
    assert after["qdrant"] != before["qdrant"]
    assert {k: v for k, v in after.items() if k != "qdrant"} == {
        k: v for k, v in before.items() if k != "qdrant"
    }
    assert docker_client.containers.get(after["qdrant"]).image.id == new_id
    with qdrant(stack) as client:
        assert client.get("/").json()["version"] == "1.17.0"
    assert points(stack) == kept

    prefix = "the backup taken before it (drill passed): "
    (note,) = [n for n in result["notes"] if n.startswith(prefix)]
    # The drill ran before the upgrade: now, on 1.17, that 1.16 snapshot no longer restores.
    later = stack.run("backup", "verify", note.removeprefix(prefix))
    assert later.code == 2, later.out + later.err
    assert "a snapshot restores only onto the same minor version" in later.err
    assert QDRANT_NEXT in (stack.dir / "kbinfra.yaml").read_text()
    plan = stack.run("plan")
    assert plan.code == 0, plan.out + plan.err
    nothing = stack.run("upgrade", "--yes")
    assert nothing.code == 0
    assert "nothing to upgrade" in nothing.err
