"""Zero-downtime changes to the app tier, with traffic through nginx, locally and over SSH.

One stack per target (PostgreSQL, Redis, nginx; the reference app with a migration and one
worker) is shared by the tests of this module, which run in order and each leave it serving.
On both targets:

- a new app image rolls replica by replica while a client sends requests through nginx over
  HTTPS: zero failed requests, every replica replaced, one at a time, nginx not recreated;
- a failing migration leaves the old release serving (no replica replaced, no failed
  request), exit 1 with the migration's own reason;
- ``secrets rotate`` under uploads through nginx fails no request: locally of the app's
  Redis password, over SSH ``--all`` (Redis, the backup key, an offsite repository's restic
  password).

On the local engine only (``LOCAL_ONLY``), where the stack starts with one replica:

- an apply stopped between a new replica's health gate and nginx's reload leaves nginx on
  the old container's address; the next apply reloads nginx before it removes the old one;
- a second replica reloads nginx in place (same container) and nginx routes to it;
- a certificate nginx rejects (``nginx -t``) leaves the old files served, exit 1 with
  nginx's own line;
- an image whose health check fails leaves the old release serving, exit 1 with the reason,
  within the default health timeout;
- a rollback to the other good release rolls replica by replica without a failed request.

The two extra releases are the test bed's reference app plus one ``ENV`` line each, built here.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from kbinfra.names import OLD_SUFFIX

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import (
        DOCUMENTS_WORKER,
        SECRET_MARK,
        Deployment,
        add_offsite_repository,
        app_deployment,
        build_image,
        restic,
        stack_secrets,
    )
    from .testbed_support import Testbed, wait_for
    from .traffic import BackgroundTraffic
except ImportError:
    from stack_support import (  # type: ignore[no-redef]
        DOCUMENTS_WORKER,
        SECRET_MARK,
        Deployment,
        add_offsite_repository,
        app_deployment,
        build_image,
        restic,
        stack_secrets,
    )
    from testbed_support import Testbed, wait_for  # type: ignore[no-redef]
    from traffic import BackgroundTraffic  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

SERVICES = ("postgres", "redis", "nginx")
#: Where this module's own builds go (tests/unit/test_testbed_images.py reads this name).
REPOSITORY = "kbinfra-testbed/kb-app-rollout"
#: The reference app, one ENV line on: a new image that serves exactly as the old one.
NEXT = f"{REPOSITORY}:next"
#: The reference app whose /health answers 503 (KB_APP_FAIL_HEALTH): a broken release.
BROKEN = f"{REPOSITORY}:unhealthy"
VARIANTS = {NEXT: "ENV KB_APP_RELEASE=next", BROKEN: "ENV KB_APP_FAIL_HEALTH=1"}
#: The client's bounds: it stops at whichever comes first (or when the apply ends).
MAX_REQUESTS = 3000
MAX_SECONDS = 600.0
APPLY = ("apply", "--yes", "--allow-oversized-profile", "--output", "json")
#: The offsite repository the SSH stack's ``secrets rotate --all`` rotates the password of.
OFFSITE = "offsite_disk_password"
#: For the tests that need one target only: they share the local stack.
LOCAL_ONLY = pytest.mark.parametrize("deployed", ["local"], indirect=True)


@pytest.fixture(scope="module")
def releases(testbed: Testbed, docker_client: docker.DockerClient) -> dict[str, str]:
    if "app" not in testbed.images:
        pytest.fail("the test bed's image map has no app: run scripts/testbed up")
    base = testbed.images["app"]
    for tag, line in VARIANTS.items():
        build_image(docker_client, f"FROM {base}\n{line}\n", tag)
    return {"first": base, "next": NEXT, "broken": BROKEN}


@pytest.fixture(scope="module", params=["local", "ssh"])
def deployed(
    request: pytest.FixtureRequest,
    testbed: Testbed,
    tmp_path_factory: pytest.TempPathFactory,
    releases: dict[str, str],
) -> Iterator[Deployment]:
    """The stack on ``local`` (one replica: the local tests scale it out) or over ``ssh``
    (two replicas from the start: the rollout needs two)."""
    folder = tmp_path_factory.mktemp(f"app-rollout-{request.param}") / "stack"

    def fast_client(data: dict[str, Any]) -> None:
        # the client below sends ~20 requests a second from one address
        nginx = data["services"]["nginx"]
        nginx["rate_limit_rps"], nginx["rate_limit_burst"] = 1000, 1000

    app = {
        "image": releases["first"],
        "replicas": 1 if request.param == "local" else 2,
        "migrate": ["migrate"],
        "workers": [DOCUMENTS_WORKER],
    }
    deployment = app_deployment(
        request.param, folder, testbed, SERVICES, app, prefix="kbr", configure=fast_client
    )
    started = time.monotonic()
    applied = deployment.run(*APPLY, timeout=900)
    print(f"apply of the rollout stack ({request.param}): {time.monotonic() - started:.1f} s")
    try:
        assert applied.code == 0, applied.out + applied.err
        yield deployment
    finally:
        deployment.run(
            "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
        )


def other_release(deployment: Deployment, releases: dict[str, str]) -> str:
    """The serving release's successor: ``next`` after ``first``, ``first`` after any other."""
    return (
        releases["next"]
        if deployment.spec["app"]["image"] == releases["first"]
        else (releases["first"])
    )


def container_id(client: docker.DockerClient, name: str) -> str:
    found: str = client.api.inspect_container(name)["Id"]
    return found


def app_containers(client: docker.DockerClient, deployment: Deployment) -> dict[str, str]:
    """Container name → id of the stack's API replicas (renamed old ones included)."""
    listed = client.api.containers(all=True, filters={"label": f"kbinfra.stack={deployment.name}"})
    prefix = f"{deployment.name}-app-"
    return {
        c["Names"][0].lstrip("/"): c["Id"]
        for c in listed
        if c["Names"][0].lstrip("/").startswith(prefix) and "migrate" not in c["Names"][0]
    }


def nginx_address(client: docker.DockerClient, deployment: Deployment) -> str:
    networks = client.api.inspect_container(deployment.container("nginx"))["NetworkSettings"]
    address: str = networks["Networks"][f"{deployment.name}-net"]["IPAddress"]
    return address


class Traffic(BackgroundTraffic):
    """``GET /health`` through nginx over HTTPS, a new connection each time, in a thread,
    until stopped (at most MAX_REQUESTS, MAX_SECONDS); the replicas' containers are listed
    along the way, to tell when each was replaced."""

    max_seconds = MAX_SECONDS
    pause_s = 0.05

    def __init__(
        self, deployment: Deployment, client: docker.DockerClient, *, upload: bool = False
    ) -> None:
        super().__init__()
        self.deployment = deployment
        self.client = client
        #: every other request uploads a document: the API queues it on Redis (Celery)
        self.upload = upload
        self.snapshots: list[dict[str, str]] = []

    def send(self) -> None:
        spec = self.deployment.spec
        port = spec["services"]["nginx"]["https_port"]
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}",
            headers={"Host": spec["domain"], "Connection": "close"},
            verify=False,  # the stack's self-signed certificate
            timeout=30,
        ) as https:
            for _ in self.rounds():
                if self.sent >= MAX_REQUESTS:
                    break
                self.sent += 1
                try:
                    if self.upload and self.sent % 2 == 0:
                        files = {"file": (f"doc-{self.sent}.txt", b"rotation", "text/plain")}
                        response = https.post("/documents", files=files)
                        if response.status_code != 202 or "id" not in response.json():
                            text = response.text[:100]
                            self.failures.append(f"upload: HTTP {response.status_code}: {text}")
                        continue
                    response = https.get("/health")
                    if response.status_code != 200 or response.json().get("status") != "ok":
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:100]}")
                except (httpx.HTTPError, ValueError) as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                if self.sent % 4 == 0:
                    self.snapshots.append(app_containers(self.client, self.deployment))


def apply_with_traffic(
    deployment: Deployment,
    client: docker.DockerClient,
    *extra: str,
    command: tuple[str, ...] = APPLY,
) -> tuple[Any, Traffic]:
    """``command`` (an apply by default) run while :class:`Traffic` sends requests."""
    with Traffic(deployment, client) as traffic:
        time.sleep(1)  # requests before the command starts, too
        applied = deployment.run(*command, *extra, timeout=900)
        time.sleep(1)
    print(traffic.report())
    assert traffic.sent >= 20, traffic.report()
    return applied, traffic


def outcomes(applied: Any) -> dict[str, dict[str, Any]]:
    return {r["service"]: r for r in applied.json()["services"]}


def assert_rolled_one_at_a_time(
    deployment: Deployment, traffic: Traffic, after: dict[str, str]
) -> None:
    """Never two old replicas at once, and one replica done before the next one started
    (``after``: replica → its new container id), as the client's snapshots saw them."""
    olds = [sum(1 for name in snap if name.endswith(".kbinfra-old")) for snap in traffic.snapshots]
    assert max(olds, default=0) <= 1, olds
    done_at = {
        replica: next(
            i
            for i, snap in enumerate(traffic.snapshots)
            if snap.get(deployment.container(replica)) == after[replica]
            and f"{deployment.container(replica)}.kbinfra-old" not in snap
        )
        for replica in after
    }
    first, second = sorted(done_at, key=done_at.__getitem__)
    started_second = next(
        i
        for i, snap in enumerate(traffic.snapshots)
        if snap.get(deployment.container(second)) == after[second]
    )
    assert done_at[first] <= started_second, (done_at, started_second)


def replica_ids(client: docker.DockerClient, deployment: Deployment) -> dict[str, str]:
    return {
        replica: container_id(client, deployment.container(replica))
        for replica in ("app-1", "app-2")
    }


def reached_through_nginx(
    deployment: Deployment, client: docker.DockerClient, container: str, requests: int = 10
) -> bool:
    """Whether ``requests`` GETs through nginx put a request from nginx in ``container``'s
    log (its health checks come from 127.0.0.1, nginx's from its address)."""
    port = deployment.spec["services"]["nginx"]["https_port"]
    with httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        headers={"Host": deployment.spec["domain"]},
        verify=False,
    ) as https:
        for _ in range(requests):
            assert https.get("/health").status_code == 200
    logs = client.api.logs(container).decode("utf-8", "replace")
    return f"{nginx_address(client, deployment)}:" in logs


def docker_says_healthy(client: docker.DockerClient, container: str) -> bool:
    state = client.api.inspect_container(container)["State"]
    return bool((state.get("Health") or {}).get("Status") == "healthy")


@LOCAL_ONLY
def test_an_apply_stopped_before_nginx_reloads_onto_a_new_replica_is_converged_by_the_next(
    deployed: Deployment, docker_client: docker.DockerClient, releases: dict[str, str]
) -> None:
    """The apply is killed the moment it says it reloads nginx onto the new app-1: the new
    replica is healthy under its name, the old one renamed beside it, and nginx still sends
    to the old one's address. The next apply moves nginx onto the new one before the old
    one goes: with one replica, a removal first would be a 502 for every request."""
    replica = deployed.container("app-1")
    old_id = container_id(docker_client, replica)
    deployed.edit(lambda data: data["app"].__setitem__("image", other_release(deployed, releases)))
    stopped = deployed.popen(*APPLY)
    assert stopped.stderr is not None
    said: list[str] = []
    for line in stopped.stderr:
        said.append(line)
        if "app-1: reloading nginx onto the new one" in line:
            stopped.kill()
            break
    stopped.wait(timeout=60)
    assert stopped.returncode == -signal.SIGKILL, "".join(said)
    assert not any(SECRET_MARK in line for line in said)

    # The half-done state, for real: both containers run, and nginx sends to the old one.
    names = app_containers(docker_client, deployed)
    assert names[f"{replica}{OLD_SUFFIX}"] == old_id, names
    assert names[replica] != old_id
    assert not reached_through_nginx(deployed, docker_client, replica), "nginx was reloaded"
    wait_for(
        lambda: docker_says_healthy(docker_client, replica),
        "Docker to find the new app-1 healthy (what the next apply's repair goes by)",
        timeout_s=120,
        interval_s=1,
    )

    applied, traffic = apply_with_traffic(deployed, docker_client)
    assert applied.code == 0, applied.out + applied.err
    assert traffic.failures == [], traffic.report()
    repaired = applied.json()["repaired"]
    assert "nginx: reloaded onto the containers an interrupted apply left serving" in repaired
    assert f"{replica}: removed the previous container left by an interrupted apply" in repaired
    assert set(app_containers(docker_client, deployed)) == {replica}
    assert reached_through_nginx(deployed, docker_client, replica)
    again = deployed.run("plan")
    assert again.code == 0, again.out + again.err


@LOCAL_ONLY
def test_a_new_replica_reloads_nginx_in_place(
    deployed: Deployment, docker_client: docker.DockerClient
) -> None:
    nginx = deployed.container("nginx")
    before = container_id(docker_client, nginx)
    deployed.edit(lambda data: data["app"].__setitem__("replicas", 2))

    plan = deployed.run("plan", "--output", "json")
    assert plan.code == 3, plan.out + plan.err
    actions = {a["service"]: a for a in plan.json()["services"]}
    assert actions["app-2"]["action"] == "create"
    assert actions["nginx"]["action"] == "reload", actions["nginx"]
    assert "file nginx/nginx.conf changed: reloaded in place" in actions["nginx"]["reasons"]

    applied, traffic = apply_with_traffic(deployed, docker_client)
    assert applied.code == 0, applied.out + applied.err
    assert outcomes(applied)["nginx"]["outcome"] == "reloaded"
    assert container_id(docker_client, nginx) == before, "nginx was recreated, not reloaded"
    assert traffic.failures == [], traffic.report()

    # nginx now routes to the new replica: it appears in app-2's access log from nginx
    assert reached_through_nginx(deployed, docker_client, deployed.container("app-2"))

    again = deployed.run("plan")
    assert again.code == 0, again.out + again.err


def other_certificate(folder: Path, key: str) -> str:
    """A self-signed certificate of a new ``key`` (``ec``: the stack's own key type, P-256;
    ``rsa``): what a renewal with the wrong key file looks like."""
    options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    if key == "rsa":
        options = ["-newkey", "rsa:2048"]
    subprocess.run(
        ["openssl", "req", "-x509", *options, "-nodes", "-days", "1",
         "-subj", "/CN=other.example", "-keyout", str(folder / f"{key}.key"),
         "-out", str(folder / f"{key}.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return (folder / f"{key}.pem").read_text()


def apply_certificate(
    deployed: Deployment, docker_client: docker.DockerClient, certificate: str, *extra: str
) -> Any:
    """Apply the stack with ``certificate`` in place of its own (put back afterwards), and
    check that nginx was meant to reload, was not recreated, and serves the old one."""
    nginx = deployed.container("nginx")
    before = container_id(docker_client, nginx)
    port = deployed.spec["services"]["nginx"]["https_port"]
    served = ssl.get_server_certificate(("127.0.0.1", port))
    cert = deployed.dir / "tls" / "cert.pem"
    original = cert.read_text()
    cert.write_text(certificate)
    try:
        plan = deployed.run("plan", "--output", "json")
        nginx_action = next(a for a in plan.json()["services"] if a["service"] == "nginx")
        assert nginx_action["action"] == "reload", nginx_action
        applied = deployed.run(*APPLY, *extra)
        print(applied.err)
        assert applied.code == 1, applied.out + applied.err
        assert "nginx was not reloaded" in applied.err
        assert container_id(docker_client, nginx) == before
        assert ssl.get_server_certificate(("127.0.0.1", port)) == served
        exec_id = docker_client.api.exec_create(nginx, ["cat", "/etc/nginx/tls/cert.pem"])["Id"]
        assert docker_client.api.exec_start(exec_id).decode() == original
    finally:
        cert.write_text(original)
    again = deployed.run("plan")
    assert again.code == 0, again.out + again.err
    return applied


@LOCAL_ONLY
def test_a_certificate_nginx_rejects_keeps_the_old_one_serving(
    deployed: Deployment, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    applied = apply_certificate(deployed, docker_client, other_certificate(tmp_path, "ec"))
    assert "[emerg]" in applied.err and "key values mismatch" in applied.err  # nginx's line
    assert "its previous files were put back and it still serves them" in applied.err


@LOCAL_ONLY
def test_a_certificate_only_clients_refuse_is_reloaded_back(
    deployed: Deployment, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # An RSA certificate beside the EC key: nginx -t passes (OpenSSL keeps one slot per key
    # type), and every TLS handshake fails. The health gate after the reload catches it.
    applied = apply_certificate(
        deployed, docker_client, other_certificate(tmp_path, "rsa"), "--timeout", "15"
    )
    assert "handshake failure" in applied.err
    assert "its previous files were put back and reloaded: it serves them again" in applied.err


def test_a_new_image_rolls_replica_by_replica_without_a_failed_request(
    deployed: Deployment, docker_client: docker.DockerClient, releases: dict[str, str]
) -> None:
    nginx = container_id(docker_client, deployed.container("nginx"))
    worker = container_id(docker_client, deployed.container("worker-documents-1"))
    before = replica_ids(docker_client, deployed)
    release = other_release(deployed, releases)
    deployed.edit(lambda data: data["app"].__setitem__("image", release))

    applied, traffic = apply_with_traffic(deployed, docker_client)
    assert applied.code == 0, applied.out + applied.err
    assert traffic.failures == [], traffic.report()
    after = replica_ids(docker_client, deployed)
    for replica in before:
        assert after[replica] != before[replica], f"{replica} was not replaced"
        assert outcomes(applied)[replica]["outcome"] == "recreated"
    assert container_id(docker_client, deployed.container("nginx")) == nginx
    assert container_id(docker_client, deployed.container("worker-documents-1")) != worker

    assert_rolled_one_at_a_time(deployed, traffic, after)

    again = deployed.run("plan")
    assert again.code == 0, again.out + again.err
    rows = deployed.run("status", "--output", "json").json()["services"]
    status = {row["service"]: row for row in rows}
    assert status["app-1"]["running_image"] == status["app-2"]["running_image"] == release


def test_a_failing_migration_keeps_the_old_release_serving(
    deployed: Deployment, docker_client: docker.DockerClient, releases: dict[str, str]
) -> None:
    before = replica_ids(docker_client, deployed)
    release = other_release(deployed, releases)

    def failing(data: dict[str, Any]) -> None:
        data["app"]["image"] = release
        data["app"]["migrate"] = ["no-such-migration"]

    deployed.edit(failing)
    try:
        applied, traffic = apply_with_traffic(deployed, docker_client)
    finally:
        deployed.edit(lambda data: data["app"].__setitem__("migrate", ["migrate"]))
    assert applied.code == 1, applied.out + applied.err
    print(applied.err)
    # what failed, its exit code and its own last log line, in the error itself
    assert (
        "app-migrate: migration failed (exit 2): kb_app: unknown command 'no-such-migration'"
        in applied.err
    )
    assert "did not become healthy" not in applied.err
    results = outcomes(applied)
    for replica in before:
        assert results[replica]["outcome"] == "skipped", results[replica]
    assert replica_ids(docker_client, deployed) == before
    assert traffic.failures == [], traffic.report()


@LOCAL_ONLY
def test_an_image_whose_health_check_fails_keeps_the_old_release_serving(
    deployed: Deployment, docker_client: docker.DockerClient, releases: dict[str, str]
) -> None:
    before = replica_ids(docker_client, deployed)
    worker = container_id(docker_client, deployed.container("worker-documents-1"))
    deployed.edit(lambda data: data["app"].__setitem__("image", releases["broken"]))

    # The default health timeout: Docker's own check fails the replica once its start
    # period is over and three checks in a row have failed, well before kbinfra's timeout.
    applied, traffic = apply_with_traffic(deployed, docker_client)
    assert applied.code == 1, applied.out + applied.err
    print(applied.err)
    assert (
        "did not become healthy: Docker's health check found it unhealthy (3 failed checks "
        "in a row after its 30s start period); last check:" in applied.err
    )
    assert "HTTP Error 503" in applied.err
    results = outcomes(applied)
    failed = [r for r in ("app-1", "app-2") if results[r]["outcome"] == "failed"]
    assert len(failed) == 1, results
    (other,) = {"app-1", "app-2"} - set(failed)
    assert results[other]["outcome"] == "skipped"
    assert "not rolled" in results[other]["error"]
    assert replica_ids(docker_client, deployed) == before
    assert results["worker-documents-1"]["outcome"] == "skipped"  # the workers follow the API
    assert container_id(docker_client, deployed.container("worker-documents-1")) == worker
    # the failed replica never got a request from nginx: only its own health checks
    address = nginx_address(docker_client, deployed)
    logs = results[failed[0]]["logs"]
    assert logs and not any(f"{address}:" in line for line in logs), logs
    assert traffic.failures == [], traffic.report()


@LOCAL_ONLY
def test_a_rollback_rolls_back_to_the_old_image_without_a_failed_request(
    deployed: Deployment, docker_client: docker.DockerClient, releases: dict[str, str]
) -> None:
    # The tests before leave one of the two good releases serving (and kbinfra.yaml naming
    # the broken image): roll back to the newest complete release of the other one on two
    # replicas.
    serving = docker_client.containers.get(deployed.container("app-1")).image.id
    first_id, next_id = (docker_client.images.get(releases[r]).id for r in ("first", "next"))
    assert serving in (first_id, next_id), "a good release should be serving"
    back_id = next_id if serving == first_id else first_id  # the release to roll back to
    recorded = deployed.run("history", "-o", "json")
    assert recorded.code == 0, recorded.err
    back_to = next(
        r
        for r in recorded.json()["releases"]
        if not r["failed"]
        and r["images"].get("app-1", {}).get("id") == back_id
        and "app-2" in r["images"]
    )
    before = replica_ids(docker_client, deployed)
    for replica in before.values():
        assert docker_client.containers.get(replica).image.id != back_id
    nginx = container_id(docker_client, deployed.container("nginx"))

    rollback = ("rollback", str(back_to["release"]), "--yes", "--output", "json")
    rolled, traffic = apply_with_traffic(deployed, docker_client, command=rollback)
    assert rolled.code == 0, rolled.out + rolled.err
    assert traffic.failures == [], traffic.report()
    after = replica_ids(docker_client, deployed)
    for replica in before:
        assert after[replica] != before[replica], f"{replica} was not replaced"
        assert docker_client.containers.get(after[replica]).image.id == back_id
        assert outcomes(rolled)[replica]["outcome"] == "recreated"
    assert_rolled_one_at_a_time(deployed, traffic, after)
    assert container_id(docker_client, deployed.container("nginx")) == nginx

    newest = deployed.run("history", "-o", "json").json()["releases"][0]
    assert newest["rollback_of"] == back_to["release"], newest
    assert newest["images"]["app-1"]["id"] == back_id
    again = deployed.run("plan")
    assert again.code == 0, again.out + again.err


def test_rotating_the_app_passwords_fails_no_request_through_nginx(
    deployed: Deployment,
    docker_client: docker.DockerClient,
    releases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``secrets rotate`` of the app's Redis and PostgreSQL passwords while uploads are
    queued on Redis and stored in PostgreSQL by the API through nginx: the replicas are moved
    one at a time (to the other login role of ``kb_app``, whose tables, made through the
    first, they keep using), no request fails, and the old passwords are refused afterwards.
    Over SSH it is ``secrets rotate --all``, an offsite repository's restic password and the
    backup key included."""
    import psycopg  # noqa: PLC0415
    import redis  # noqa: PLC0415

    from kbinfra.services.postgres.roles import login_role, login_roles  # noqa: PLC0415

    deployed.edit(lambda data: data["app"].__setitem__("image", releases["next"]))  # serving
    # converged first: a rotation refuses to start over changes not applied yet (and the
    # test images' tags are shared by every checkout on this engine: one may have moved)
    converged = deployed.run(*APPLY, timeout=900)
    assert converged.code == 0, converged.out + converged.err
    every = deployed.kind == "ssh"
    offsite = tmp_path_factory.mktemp("offsite")
    repository = add_offsite_repository(deployed, offsite) if every else None
    old = stack_secrets(deployed)
    before = app_containers(docker_client, deployed)
    assert before
    names = ["--all"] if every else ["redis_app_password", "postgres_app_password"]
    with Traffic(deployed, docker_client, upload=True) as traffic:
        time.sleep(1)
        rotated = deployed.run("secrets", "rotate", *names, "--yes", "-o", "json", timeout=900)
        time.sleep(1)
    print(traffic.report())
    assert rotated.code == 0, rotated.out + rotated.err
    assert traffic.sent >= 20 and traffic.failures == [], traffic.report()
    moved = next(a for a in rotated.json()["applies"] if a["phase"] == "moved")
    assert {r["service"]: r["outcome"] for r in moved["services"]}["app-1"] == "recreated"
    after = app_containers(docker_client, deployed)
    assert set(after) == set(before)
    assert all(after[replica] != before[replica] for replica in before), (before, after)
    new = stack_secrets(deployed)
    assert new["redis_app_password"] != old["redis_app_password"]
    port = deployed.port("redis")
    for password, opens in ((old["redis_app_password"], False), (new["redis_app_password"], True)):
        client = redis.Redis(host="127.0.0.1", port=port, username="app", password=password)
        try:
            assert bool(client.ping()) is opens
        except redis.AuthenticationError:
            assert not opens
        finally:
            client.close()
    old_pg, new_pg = old["postgres_app_password"], new["postgres_app_password"]
    assert login_role("kb_app", new_pg) != login_role("kb_app", old_pg)
    for role, password, opens in [
        *((role, old_pg, False) for role in (*login_roles("kb_app"), "kb_app")),
        (login_role("kb_app", new_pg), new_pg, True),
    ]:
        try:
            with deployed.postgres("kb_app", role, password) as conn:
                tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tableowner = 'kb_app'")
                assert opens and (tables.fetchone() or (0,))[0] > 0  # the app's, still its
        except psycopg.OperationalError as error:
            assert not opens, f"{role}: {error}"
    if repository is None:
        return
    wanted = {"redis_app_password", "redis_admin_password", "backup_hmac_key", OFFSITE}
    wanted.add("postgres_app_password")
    assert wanted <= set(rotated.json()["rotated"]), rotated.out
    assert all(new[name] != old[name] for name in wanted)
    assert new["backup_hmac_keys_previous"].split()[0] == old["backup_hmac_key"]
    assert restic(repository, new[OFFSITE], "snapshots", "--json").returncode == 0
    refused = restic(repository, old[OFFSITE], "snapshots")
    assert refused.returncode != 0 and "wrong password" in refused.stderr
