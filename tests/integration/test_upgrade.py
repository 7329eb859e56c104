"""``kbinfra upgrade`` against a real engine: refusals before any change, then a real upgrade.

One stack of the three stores (PostgreSQL, Redis, and the Qdrant stand-in, which reports
version 1.16.3 at ``GET /`` as upstream does). Upgrades the data cannot follow are refused
with the way to do them, and nothing is changed or backed up: PostgreSQL 15 → 16 (its
``PG_VERSION`` is read from the data directory), Qdrant 1.16 → 1.18 (one minor at a time),
Redis 7 → 6.2 (an older RDB line). Then Qdrant 1.16.3 → 1.17.0, an image built here from the
stand-in that reports 1.17.0: ``--check`` changes nothing; the upgrade backs Qdrant up first
(the backup verifies), recreates Qdrant alone, keeps its points, and kbinfra.yaml names the
new image, so the next plan has nothing to do.

Last, PostgreSQL 15 → 18 (the test bed's ``postgres18`` image: real PostgreSQL 18 binaries),
by dump and restore into a new volume, with rows of several types, a second role and its
own database: first with a database setting PostgreSQL 18 no longer knows (16 renamed
``force_parallel_mode``), which stops the copy and leaves 15 serving on its volume; then,
without it, every row, role and password is on 18, the old volume is kept, ``check``
passes, a rollback across it is refused, and the documented way back serves 15 again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, NamedTuple

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


def upgrade_alone(
    stack: Deployment,
    client: docker.DockerClient,
    service: str,
    image: str,
    before: dict[str, str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """``upgrade SERVICE --to IMAGE --yes``: it passes, recreates ``service`` alone and keeps
    every other container (``before``: service → container id); its JSON, and the ids after."""
    upgraded = stack.run("upgrade", service, "--to", image, "--yes", "-o", "json")
    assert upgraded.code == 0, upgraded.out + upgraded.err
    result: dict[str, Any] = upgraded.json()
    changed = {r["service"]: r["outcome"] for r in result["services"] if r["action"] != "nothing"}
    assert changed == {service: "recreated"}
    after = container_ids(client, stack)
    assert after[service] != before[service]
    assert {k: v for k, v in after.items() if k != service} == {
        k: v for k, v in before.items() if k != service
    }
    return result, after


@pytest.fixture(scope="module")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("upgrade") / "stack"
    deployment = new_deployment("local", folder, testbed, ["postgres", "redis", "qdrant"], "kbu")
    # The PostgreSQL 18 build of the test bed has no lz4 (official images do): for the
    # upgrade to 18 at the end, both majors compress WAL with pglz.
    deployment.edit(lambda data: data["services"]["postgres"].update(wal_compression="pglz"))
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
        ("postgres", "14-bookworm", "cannot read a data directory of PostgreSQL 15", "restore"),
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

    result, after = upgrade_alone(stack, docker_client, "qdrant", QDRANT_NEXT, before)
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


# ---------------------------------------------------------------- PostgreSQL 15 → 18
#: A second role with its own database, as the app tier's ``kb_app`` has.
EXTRA_ROLE = "kb_extra"
ROWS_SQL = "SELECT * FROM items ORDER BY id"


class Major(NamedTuple):
    """The PostgreSQL 18 image, and the rows the upgrade to it must carry over."""

    image: str
    rows: dict[str, list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def major(testbed: Testbed, stack: Deployment) -> Major:
    image = testbed.recipe_images.get("postgres18")
    if image is None:
        pytest.fail("the test bed has no postgres18 image: run scripts/testbed up")
    return Major(image, postgres_rows(stack))


def postgres_rows(stack: Deployment) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of several types in the stack's database and in the extra role's own one: what
    the upgrade must carry over, read back as the tests' reference."""
    with stack.postgres() as kb:
        kb.execute(
            f"CREATE ROLE {EXTRA_ROLE} LOGIN PASSWORD '{fixed_secret('extra_role_password')}'"
        )
        kb.execute(f"CREATE DATABASE {EXTRA_ROLE} OWNER {EXTRA_ROLE}")
        kb.execute(
            "CREATE TABLE items (id int PRIMARY KEY, body text, price numeric(12, 2), "
            "ratio float8, at timestamptz, tags text[], doc jsonb)"
        )
        kb.execute(
            "INSERT INTO items SELECT i, repeat(md5(i::text), 1 + i % 5), i * 1.25, i / 7.0, "
            "timestamptz '2026-01-01 00:00+00' + i * interval '1 minute', "
            "ARRAY['t' || i % 3, 't' || i % 5], jsonb_build_object('n', i, 'odd', i % 2 = 1) "
            "FROM generate_series(1, 2000) AS i"
        )
    with stack.postgres(EXTRA_ROLE) as extra:  # the role logs in over the socket only
        extra.execute(f"SET ROLE {EXTRA_ROLE}")
        extra.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
        extra.execute("INSERT INTO items SELECT i, 'extra ' || i FROM generate_series(1, 300) i")
    return read_rows(stack)


def read_rows(stack: Deployment) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both databases, the owner of the extra one's table, and the extra
    role's password verifier (SCRAM: no password in it)."""
    with stack.postgres() as kb:
        rows = {"kb": kb.execute(ROWS_SQL).fetchall()}
        rows["verifier"] = kb.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (EXTRA_ROLE,)
        ).fetchall()
    with stack.postgres(EXTRA_ROLE) as extra:
        rows[EXTRA_ROLE] = extra.execute(ROWS_SQL).fetchall()
        rows["owner"] = extra.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ).fetchall()
    return rows


def extra_role_logs_in(client: docker.DockerClient, stack: Deployment) -> bool:
    """The extra role, with its password, over the server's own socket (as pg_hba.conf
    lets it in)."""
    container = client.containers.get(stack.container("postgres"))
    code, output = container.exec_run(
        [
            "psql",
            "-X",
            "-w",
            "-U",
            EXTRA_ROLE,
            "-d",
            EXTRA_ROLE,
            "-Atc",
            "SELECT count(*) FROM items",
        ],
        environment={"PGPASSWORD": fixed_secret("extra_role_password")},
    )
    return code == 0 and output.decode().strip() == "300"


def data_version(client: docker.DockerClient, stack: Deployment) -> str:
    container = client.containers.get(stack.container("postgres"))
    code, output = container.exec_run(["cat", "/var/lib/postgresql/data/PG_VERSION"])
    assert code == 0, output
    return str(output.decode().strip())


def volume_names(client: docker.DockerClient, stack: Deployment) -> set[str]:
    return {v.name for v in client.volumes.list(filters={"label": f"kbinfra.stack={stack.name}"})}


def test_a_postgres_major_upgrade_whose_copy_fails_leaves_15_serving_on_its_volume(
    stack: Deployment, docker_client: docker.DockerClient, major: Major
) -> None:
    postgres18, postgres_rows = major
    before = container_ids(docker_client, stack)
    stack_file = (stack.dir / "kbinfra.yaml").read_text()
    volumes = volume_names(docker_client, stack)
    with stack.postgres() as kb:  # renamed debug_parallel_query in 16: 18 refuses it
        kb.execute("ALTER DATABASE kb SET force_parallel_mode = off")
    try:
        failed = stack.run("upgrade", "postgres", "--to", postgres18, "--yes")
    finally:
        with stack.postgres() as kb:
            kb.execute("ALTER DATABASE kb RESET force_parallel_mode")
    assert failed.code == 1, failed.out + failed.err
    assert "the copy into the new major version failed" in failed.err
    assert 'unrecognized configuration parameter "force_parallel_mode"' in failed.err
    assert f"still serves {stack.spec['services']['postgres']['image']}" in failed.err
    assert "Traceback" not in failed.err
    assert container_ids(docker_client, stack) == before
    assert data_version(docker_client, stack) == "15"
    assert read_rows(stack) == postgres_rows
    assert extra_role_logs_in(docker_client, stack)
    assert (stack.dir / "kbinfra.yaml").read_text() == stack_file
    assert volume_names(docker_client, stack) == volumes  # the copy's volume is gone


def test_a_postgres_major_upgrade_moves_every_row_to_18_and_keeps_the_old_volume(
    stack: Deployment, docker_client: docker.DockerClient, major: Major
) -> None:
    postgres18, postgres_rows = major
    before = container_ids(docker_client, stack)
    image_15 = stack.spec["services"]["postgres"]["image"]
    old_volume, new_volume = f"{stack.name}-postgres-data", f"{stack.name}-postgres-data-18"
    checked = stack.run("upgrade", "postgres", "--to", postgres18, "--check", "-o", "json")
    assert checked.code == 0, checked.out + checked.err
    (step,) = checked.json()["steps"]
    assert step["running_version"] == "15" and step["allowed"] and step["backed_up"]
    assert "dump and restore" in step["migration"]["summary"]
    assert container_ids(docker_client, stack) == before
    assert new_volume not in volume_names(docker_client, stack)

    result, after = upgrade_alone(stack, docker_client, "postgres", postgres18, before)
    container = docker_client.containers.get(after["postgres"])
    assert container.image.id == docker_client.images.get(postgres18).id
    assert [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"].count(
        new_volume
    ) == 1
    assert data_version(docker_client, stack) == "18"
    assert read_rows(stack) == postgres_rows  # every row, owner and password verifier
    assert extra_role_logs_in(docker_client, stack)
    assert {old_volume, new_volume} <= volume_names(docker_client, stack)
    assert any(f"the old volume {old_volume} is kept" in note for note in result["notes"])
    postgres = stack.spec["services"]["postgres"]
    assert (postgres["image"], postgres["volume"]) == (postgres18, "data-18")

    checks = stack.run("check", "--only", "postgres")
    assert checks.code == 0, checks.out + checks.err
    assert stack.run("plan").code == 0
    releases = stack.run("history", "-o", "json").json()["releases"]
    text = (stack.dir / "kbinfra.yaml").read_text()
    assert releases[0]["stack_sha256"] == hashlib.sha256(text.encode()).hexdigest()

    id_15 = docker_client.images.get(image_15).id
    on_15 = next(r for r in releases if r["images"]["postgres"]["id"] == id_15)
    refused = stack.run("rollback", str(on_15["release"]), "--yes")
    assert refused.code == 2, refused.out + refused.err
    assert "a rollback never moves data" in refused.err
    assert old_volume in refused.err and "nothing was changed" in refused.err
    assert container_ids(docker_client, stack) == after

    # The documented way back: the old image and volume in kbinfra.yaml, then apply.
    stack.edit(lambda data: data["services"]["postgres"].update(image=image_15, volume="data"))
    returned = stack.run("apply", "--yes")
    assert returned.code == 0, returned.out + returned.err
    assert data_version(docker_client, stack) == "15"
    assert read_rows(stack) == postgres_rows
