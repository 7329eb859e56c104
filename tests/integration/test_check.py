"""`kbinfra check` and `kbinfra bench` against the real test bed, locally and over SSH.

A stack is applied once per target; the real CLI then checks and benchmarks it. Every
security check is also shown to FAIL: the probe functions run against deliberately weakened
containers (a Redis without ACLs, a Qdrant stand-in without api keys, a PostgreSQL that
trusts everyone or speaks md5, an nginx that speaks TLS 1.1 without headers, a port on
0.0.0.0, secret files others can read). A check that cannot fail would be a defect.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
import pytest
import redis
import yaml

from kbinfra.names import LABEL_SERVICE, LABEL_STACK
from kbinfra.probing import stack_checks as stack_probe
from kbinfra.probing.probe import CheckRow, ProbeContext
from kbinfra.probing.run import probe_module
from kbinfra.render import render_stack
from kbinfra.stack import Stack, open_stack
from kbinfra.targets import Target, open_target
from kbinfra.targets.local import LocalTarget
from kbinfra.targets.ssh import SSHAddress, SSHOptions
from kbinfra.targets.ssh import SSHTarget as KbinfraSSHTarget
from tests.conftest import fixed_secret, write_stack_dir
from tests.integration.stack_support import SECRET_MARK, Run, free_port
from tests.integration.stack_support import Deployment as StackDeployment
from tests.integration.testbed_support import SSHTarget, wait_for

pytestmark = pytest.mark.integration

#: The embedding service's image is built by `kbinfra images build` (its own tests tag it);
#: the stack enables the service only when one of these is on the engine.
EMBEDDINGS_IMAGES = ("kbinfra-test/embeddings:it",)
PROBED = {
    "postgres",
    "qdrant",
    "redis",
    "embeddings",
    "unstructured",
    "nginx",
    "prometheus",
    "alertmanager",
}
BENCHED = {"postgres", "qdrant", "redis", "embeddings", "unstructured", "nginx"}
LEFTOVER = "kbinfra_bench_deadbeef0042"


def image_present(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


@dataclass
class Deployment(StackDeployment):
    """A stack applied to one target, and the CLI pointed at it."""

    ssh: SSHTarget | None = None
    enabled: set[str] = field(default_factory=set)

    def run(self, *args: str, timeout: float = 900) -> Run:
        return super().run(*args, timeout=timeout)

    def stack(self) -> Stack:
        return open_stack(self.dir)

    @contextmanager
    def target(self) -> Iterator[Target]:
        stack = self.stack()
        known = self.ssh.known_hosts_path if self.ssh else None
        identity = self.ssh.key_path if self.ssh else None
        with open_target(stack.spec, self.dir, known_hosts=known, identity=identity) as target:
            yield target


def ssh_kbinfra_target(ssh: SSHTarget) -> KbinfraSSHTarget:
    return KbinfraSSHTarget(
        SSHAddress(ssh.user, ssh.host, ssh.port),
        SSHOptions(known_hosts=ssh.known_hosts_path, identity=ssh.key_path),
    )


# ---------------------------------------------------------------- the applied stacks
def deploy(
    kind: str,
    folder: Path,
    images_file: Path,
    images: dict[str, str],
    ssh: SSHTarget | None,
    client: docker.DockerClient,
) -> Deployment:
    name = f"kbc{kind[0]}{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    target = "local"
    if ssh is not None:
        target = f"ssh://{ssh.user}@{ssh.host}:{ssh.port}"
        env["KBINFRA_KNOWN_HOSTS"] = str(ssh.known_hosts_path)
        env["KBINFRA_SSH_IDENTITY"] = str(ssh.key_path)
    deployment = Deployment(folder, name, kind, env, ssh)
    init = deployment.run(
        "init", "--profile", "minimum", "--images", str(images_file), "--target", target
    )
    assert init.code == 0, init.err
    embeddings = next((i for i in EMBEDDINGS_IMAGES if image_present(client, i)), None)

    path = folder / "kbinfra.yaml"
    data = yaml.safe_load(path.read_text())
    data["name"] = name
    for service, settings in data["services"].items():
        settings["enabled"] = service in images or (service == "embeddings" and bool(embeddings))
        if settings.get("port"):
            settings["port"] = free_port()
    if embeddings:
        data["services"]["embeddings"]["image"] = embeddings
    data["services"]["nginx"]["http_port"] = free_port()
    data["services"]["nginx"]["https_port"] = free_port()
    data["services"]["qdrant"]["grpc_port"] = free_port()
    data["services"]["prometheus"]["scrape_app"] = False  # the user's API is not deployed here
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
    (folder / "secrets.yaml").write_text(yaml.safe_dump({k: fixed_secret(k) for k in secrets}))
    deployment.enabled = {s for s, v in data["services"].items() if v["enabled"]}
    # With the embedding service, minimum's allocations add up to 24.3 GiB: more than this
    # 24 GB test bed (below minimum's 32 GB host) has, which plan and apply refuse by default.
    oversized = ["--allow-oversized-profile"] if embeddings else []
    applied = deployment.run("apply", "--yes", *oversized)
    assert applied.code == 0, applied.out + applied.err
    return deployment


@pytest.fixture(scope="module", params=["local", "ssh"])
def deployed(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    images: dict[str, str],
    docker_client: docker.DockerClient,
    embeddings_image: str,  # built first, so the stack always has the embedding service
) -> Iterator[Deployment]:
    ssh = request.getfixturevalue("ssh_target") if request.param == "ssh" else None
    folder = tmp_path_factory.mktemp(f"check-{request.param}") / "stack"
    # The session's image map, copied: another worktree's `scripts/testbed up` may rewrite
    # the shared file with its own recipes' tags meanwhile.
    image_map = folder.parent / "images.yaml"
    image_map.write_text(yaml.safe_dump({"images": images}))
    created = deploy(request.param, folder, image_map, images, ssh, docker_client)
    yield created
    created.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", created.name, "--force-unlock"
    )


# ---------------------------------------------------------------- leftovers, seen from outside
def bench_leftovers(deployment: Deployment) -> list[str]:
    """Everything named kbinfra_bench_* in Qdrant, PostgreSQL and Redis (and pgbench files)."""

    stack = deployment.stack()
    services = stack.spec.services
    found: list[str] = []
    with deployment.target() as target:
        with target.tunnel(services.get("qdrant").port) as (host, port):
            listed = httpx.get(
                f"http://{host}:{port}/collections",
                headers={"api-key": fixed_secret("qdrant_api_key")},
                timeout=30,
            ).json()["result"]["collections"]
            found += [f"collection {c['name']}" for c in listed if "kbinfra_bench_" in c["name"]]
        with (
            target.tunnel(services.get("postgres").port) as (host, port),
            psycopg.connect(
                host=host,
                port=port,
                user="kb",
                dbname="kb",
                password=fixed_secret("postgres_password"),
                autocommit=True,
            ) as conn,
        ):
            found += [
                f"table {r[0]}"
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE tablename LIKE 'kbinfra\\_bench\\_%'"
                ).fetchall()
            ]
            found += [
                f"role {r[0]}"
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE 'kbinfra\\_bench\\_%'"
                ).fetchall()
            ]
        with target.tunnel(services.get("redis").port) as (host, port):
            admin = redis.Redis(
                host=host,
                port=port,
                username="admin",
                protocol=2,
                password=fixed_secret("redis_admin_password"),
                decode_responses=True,
            )
            for db in range(16):
                admin.execute_command("SELECT", db)
                found += [f"key {k} (db {db})" for k in admin.scan_iter(match="kbinfra_bench_*")]
            found += [
                f"user {u}"
                for u in admin.execute_command("ACL", "USERS")
                if u.startswith("kbinfra_bench_")
            ]
            admin.close()
        container = target.docker_client().containers.get(f"{deployment.name}-postgres")
        _, listing = container.exec_run(["sh", "-c", "ls /tmp"])
        found += [f"file /tmp/{n}" for n in listing.decode().split() if "kbinfra_bench_" in n]
    return sorted(found)


def plant_leftovers(deployment: Deployment) -> None:
    """What a bench killed with SIGKILL would leave: the next bench must sweep it."""

    services = deployment.stack().spec.services
    with deployment.target() as target:
        with target.tunnel(services.get("qdrant").port) as (host, port):
            httpx.put(
                f"http://{host}:{port}/collections/{LEFTOVER}",
                headers={"api-key": fixed_secret("qdrant_api_key")},
                json={"vectors": {"size": 4, "distance": "Dot"}},
                timeout=30,
            ).raise_for_status()
        with (
            target.tunnel(services.get("postgres").port) as (host, port),
            psycopg.connect(
                host=host,
                port=port,
                user="kb",
                dbname="kb",
                password=fixed_secret("postgres_password"),
                autocommit=True,
            ) as conn,
        ):
            conn.execute(f"CREATE ROLE {LEFTOVER} LOGIN")
            conn.execute(f"CREATE TABLE {LEFTOVER}_accounts (aid int)")
            conn.execute(f"ALTER TABLE {LEFTOVER}_accounts OWNER TO {LEFTOVER}")
        with target.tunnel(services.get("redis").port) as (host, port):
            admin = redis.Redis(
                host=host,
                port=port,
                username="admin",
                protocol=2,
                password=fixed_secret("redis_admin_password"),
                db=15,
            )
            admin.set(f"{LEFTOVER}:1", "x")
            admin.execute_command("ACL", "SETUSER", LEFTOVER, "on", "nopass")
            admin.close()
    assert len(bench_leftovers(deployment)) == 5


# ---------------------------------------------------------------- check and bench, for real
def test_every_check_passes_on_a_fresh_apply(deployed: Deployment) -> None:
    result = deployed.run("check", "--output", "json")
    report = result.json()
    failed = [r for r in report["checks"] if not r["ok"]]
    assert result.code == 0 and report["ok"], json.dumps(failed, indent=1)
    services = {r["service"] for r in report["checks"]}
    assert services == (deployed.enabled & PROBED) | {"stack"}
    by_service: dict[str, set[str]] = {}
    for row in report["checks"]:
        by_service.setdefault(row["service"], set()).add(row["category"])
    for service in ("postgres", "qdrant", "redis", "nginx"):
        assert by_service[service] == {"reachable", "locked-down", "configured"}, service
    assert "refuses-non-scram" in {r["check"] for r in report["checks"]}

    text = deployed.run("check", "--only", "redis,stack")
    assert text.code == 0, text.out + text.err
    assert "refuses-anonymous" in text.out and "internal-ports-on-loopback" in text.out
    # Off a terminal the table is plain text: a header, then a line per row (a value's
    # further lines on continuation lines whose service column is empty).
    lines = text.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("service "))
    end = next(i for i, line in enumerate(lines) if " checks: " in line and "passed" in line)
    rows = [line.split("  ", 1)[0].strip() for line in lines[header + 1 : end]]
    assert "│" not in text.out
    assert {service for service in rows if service} == {"redis", "stack"}


def test_bench_quick_measures_every_service_and_sweeps_old_leftovers(
    deployed: Deployment, tmp_path: Path
) -> None:
    plant_leftovers(deployed)
    textfile = tmp_path / "bench.prom"
    result = deployed.run(
        "bench", "--quick", "--output", "json", "--prometheus-textfile", str(textfile)
    )
    report = result.json()
    # Thresholds are about the upstream services; the stand-ins may miss one (exit 1).
    assert result.code in (0, 1), result.err
    errors = [r for r in report["results"] if r["error"]]
    assert not errors, json.dumps(errors, indent=1)
    assert result.code == (0 if report["ok"] else 1)
    measured = {r["service"] for r in report["results"]}
    assert measured == deployed.enabled & BENCHED
    for row in report["results"]:
        assert row["throughput_per_s"] > 0 and row["operations"] > 0, row
        assert row["latency"]["p50_s"] > 0 and row["latency"]["p99_s"] >= row["latency"]["p50_s"]
        assert row["concurrency"] >= 1 and row["duration_s"] > 0 and row["thresholds"], row
    clients = {(r["service"], r["client"]) for r in report["results"]}
    assert ("postgres", "pgbench (in the container)") in clients
    assert ("postgres", "kbinfra (psycopg)") in clients
    assert ("redis", "redis-benchmark (in the container)") in clients
    search = next(r for r in report["results"] if r["name"] == "search")
    assert search["extra"]["recall_at_10"] > 0
    assert "kbinfra_bench_latency_seconds_count" in textfile.read_text()
    assert "removed leftovers of an earlier bench" in result.err
    assert bench_leftovers(deployed) == []


@pytest.mark.parametrize(
    ("service", "marker"),
    [
        ("postgres", "kbinfra client (psycopg)"),
        ("qdrant", "upserting into collection"),
        ("redis", "kbinfra client, SET/GET plain"),
    ],
)
def test_an_interrupted_bench_leaves_nothing_behind(
    deployed: Deployment, service: str, marker: str
) -> None:
    proc = deployed.popen("bench", "--only", service)  # the full run: long enough to interrupt
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    time.sleep(1.0)  # data written, load running
    prefix = next(
        line.split("objects named ")[1].strip() for line in seen if "objects named" in line
    )
    assert prefix.startswith("kbinfra_bench_")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert SECRET_MARK not in out + err
    assert "removed" in err, "".join(seen) + err
    assert bench_leftovers(deployed) == []


# ---------------------------------------------------------------- weakened containers
@pytest.fixture(scope="module")
def weak_stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stack folder whose ports are pointed, per test, at a weakened container."""
    folder = tmp_path_factory.mktemp("weak") / "stack"
    name = f"kbw{uuid.uuid4().hex[:6]}"
    write_stack_dir(folder, "minimum", {"name": name, "services": {"grafana": {"enabled": False}}})
    (folder / "tls" / "key.pem").chmod(0o600)  # copied from tests/fixtures as 0644
    return folder


def point_at(folder: Path, service: str, **ports: int) -> Stack:
    path = folder / "kbinfra.yaml"
    data = yaml.safe_load(path.read_text())
    data["services"][service].update(ports)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return open_stack(folder)


@pytest.fixture(params=["local", "ssh"])
def probe_target(request: pytest.FixtureRequest, weak_stack_dir: Path) -> Iterator[Target]:
    """The weakened containers run on the local engine; the probes reach them directly or
    through the test bed's sshd, exactly as they reach a deployed stack."""
    if request.param == "local":
        target: Target = LocalTarget(weak_stack_dir)
    else:
        target = ssh_kbinfra_target(request.getfixturevalue("ssh_target"))
    with target:
        yield target


def run_probe(stack: Stack, service: str, target: Target) -> dict[str, CheckRow]:
    module = probe_module(stack.services[service])
    assert module is not None
    with ProbeContext(stack, stack.services[service], target) as probe:
        rows: list[CheckRow] = module.checks(probe)
    return {row.check: row for row in rows}


class Containers:
    """Containers started for one test module; all removed at the end."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.started: list[Any] = []

    def start(
        self,
        image: str,
        *,
        command: list[str] | None = None,
        environment: dict[str, str] | None = None,
        ports: dict[str, Any] | None = None,
        files: dict[str, tuple[bytes, int, int]] | None = None,
        labels: dict[str, str] | None = None,
        hardening: dict[str, Any] | None = None,
    ) -> Any:
        # A port Docker picks itself can be held by a process Docker does not know (another
        # run's ssh forward on this shared machine): then the start fails with "address
        # already in use". The container is removed at once (a created container's 0.0.0.0
        # binding would fail the next test's checks) and made again, on another port.
        for attempt in range(3):
            container = self.client.containers.create(
                image,
                command=command,
                environment=environment or {},
                ports=ports or {},
                labels=labels or {},
                name=f"kbt-weak-{uuid.uuid4().hex[:8]}",
                **(hardening or {}),
            )
            self.started.append(container)
            for path, (data, mode, uid) in (files or {}).items():
                archive = io.BytesIO()
                with tarfile.open(fileobj=archive, mode="w") as tar:
                    info = tarfile.TarInfo(path.lstrip("/"))
                    info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
                    tar.addfile(info, io.BytesIO(data))
                container.put_archive("/", archive.getvalue())
            try:
                container.start()
            except docker.errors.APIError as error:
                container.remove(force=True, v=True)
                self.started.remove(container)
                if "address already in use" not in str(error) or attempt == 2:
                    raise
                continue
            return container
        raise AssertionError("unreachable")

    def remove_all(self) -> None:
        for container in self.started:
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)


@pytest.fixture(scope="module")
def containers(docker_client: docker.DockerClient) -> Iterator[Containers]:
    made = Containers(docker_client)
    yield made
    made.remove_all()


def host_port(container: Any, inside: str) -> int:
    def published() -> int | None:
        container.reload()
        bindings = container.ports.get(inside) or []
        return int(bindings[0]["HostPort"]) if bindings else None

    port: int = wait_for(published, f"{container.name} to publish {inside}")
    return port


def loopback(port: str) -> dict[str, Any]:
    return {port: ("127.0.0.1", None)}


@pytest.fixture(scope="module")
def weak(containers: Containers, images: dict[str, str], weak_stack_dir: Path) -> dict[str, Any]:
    """Every weakened container, started once (their start-up overlaps)."""
    stack = open_stack(weak_stack_dir)
    rendered = {f.path: f.text for f in render_stack(stack)}
    acl = rendered["redis/users.acl"].replace("+@all -@dangerous", "+@all")
    assert "-@dangerous" not in acl.split("user app", 1)[1].splitlines()[0]
    pg_env = {
        "POSTGRES_USER": "kb",
        "POSTGRES_DB": "kb",
        "POSTGRES_PASSWORD": fixed_secret("postgres_password"),
    }
    weak_nginx = (
        "events {}\nhttp {\n"
        '  server { listen 80; location / { return 200 "plain\\n"; } }\n'
        "  server { listen 443 ssl;\n"
        "    ssl_certificate /etc/nginx/tls/cert.pem; ssl_certificate_key /etc/nginx/tls/key.pem;\n"
        '    ssl_protocols TLSv1 TLSv1.1 TLSv1.2; ssl_ciphers "ALL:@SECLEVEL=0";\n'
        '    location = /healthz { return 200 "ok\\n"; } }\n}\n'
    )
    return {
        # No ACL file at all: the default user is open.
        "redis-open": containers.start(
            images["redis"], command=["redis-server"], ports=loopback("6379/tcp")
        ),
        # The rendered ACL file, but the app user may run everything.
        "redis-app-all": containers.start(
            images["redis"],
            command=["redis-server", "/usr/local/etc/redis/redis.conf"],
            ports=loopback("6379/tcp"),
            files={
                "/usr/local/etc/redis/redis.conf": (
                    rendered["redis/redis.conf"].encode(),
                    0o644,
                    0,
                ),
                "/usr/local/etc/redis/acl/users.acl": (acl.encode(), 0o600, 999),
            },
        ),
        "qdrant-open": containers.start(images["qdrant"], ports=loopback("6333/tcp")),
        "postgres-trust": containers.start(
            images["postgres"],
            environment={**pg_env, "POSTGRES_HOST_AUTH_METHOD": "trust"},
            ports=loopback("5432/tcp"),
        ),
        "postgres-md5": containers.start(
            images["postgres"],
            environment={**pg_env, "POSTGRES_HOST_AUTH_METHOD": "md5"},
            ports=loopback("5432/tcp"),
        ),
        "nginx-weak": containers.start(
            images["nginx"],
            ports={**loopback("80/tcp"), **loopback("443/tcp")},
            files={
                "/etc/nginx/nginx.conf": (weak_nginx.encode(), 0o644, 0),
                "/etc/nginx/tls/cert.pem": (stack.tls_certificate.encode(), 0o644, 0),
                "/etc/nginx/tls/key.pem": (stack.tls_key.encode(), 0o600, 0),
            },
        ),
        "unstructured-open": containers.start(images["unstructured"], ports=loopback("8000/tcp")),
    }


def failing(rows: dict[str, CheckRow]) -> set[str]:
    return {name for name, row in rows.items() if not row.ok}


def test_redis_checks_fail_without_acls(
    weak: dict[str, Any], weak_stack_dir: Path, probe_target: Target
) -> None:
    open_port = host_port(weak["redis-open"], "6379/tcp")
    wait_for(lambda: socket.create_connection(("127.0.0.1", open_port), 1), "redis-open")
    rows = run_probe(point_at(weak_stack_dir, "redis", port=open_port), "redis", probe_target)
    assert not rows["refuses-anonymous"].ok
    assert "answered" in rows["refuses-anonymous"].value

    app_all = host_port(weak["redis-app-all"], "6379/tcp")
    stack = point_at(weak_stack_dir, "redis", port=app_all)
    rows = wait_for(
        lambda: (r := run_probe(stack, "redis", probe_target))["ping-as-app"].ok and r,
        "redis-app-all to answer",
    )
    assert failing(rows) == {"app-cannot-run-dangerous"}, rows
    assert "FLUSHALL" in rows["app-cannot-run-dangerous"].value


def test_qdrant_checks_fail_without_api_keys(
    weak: dict[str, Any], weak_stack_dir: Path, probe_target: Target
) -> None:
    port = host_port(weak["qdrant-open"], "6333/tcp")
    stack = point_at(weak_stack_dir, "qdrant", port=port)
    rows = wait_for(
        lambda: (r := run_probe(stack, "qdrant", probe_target))["ready"].ok and r,
        "the qdrant stand-in to start",
    )
    assert {"refuses-without-key", "read-only-key-cannot-write"} <= failing(rows)
    assert rows["read-only-key-cannot-write"].value == "the read-only key created a collection"
    assert rows["collections-with-api-key"].ok  # reachable: the failures are the lock-down


def _pg_ready(stack: Stack, target: Target) -> dict[str, CheckRow] | None:
    rows = run_probe(stack, "postgres", target)
    return rows if rows["login-select-1"].ok else None


def test_postgres_checks_fail_when_it_trusts_or_speaks_md5(
    weak: dict[str, Any], weak_stack_dir: Path, probe_target: Target
) -> None:

    trust = point_at(weak_stack_dir, "postgres", port=host_port(weak["postgres-trust"], "5432/tcp"))
    rows = wait_for(lambda: _pg_ready(trust, probe_target), "postgres-trust", timeout_s=120)
    assert {"refuses-wrong-password", "refuses-non-scram", "hba-rules-scram-only"} <= failing(rows)

    md5_port = host_port(weak["postgres-md5"], "5432/tcp")
    md5 = point_at(weak_stack_dir, "postgres", port=md5_port)
    wait_for(lambda: _pg_ready(md5, probe_target), "postgres-md5", timeout_s=120)
    # The entrypoint stored a SCRAM hash (PostgreSQL 15's default), and an md5 line in
    # pg_hba.conf then still authenticates with SCRAM. Store an md5 hash: now it speaks md5.
    with psycopg.connect(
        host="127.0.0.1",
        port=md5_port,
        user="kb",
        dbname="kb",
        autocommit=True,
        password=fixed_secret("postgres_password"),
    ) as conn:
        conn.execute("SET password_encryption = 'md5'")
        conn.execute(f"ALTER ROLE kb PASSWORD '{fixed_secret('postgres_password')}'")
    rows = run_probe(md5, "postgres", probe_target)
    assert rows["refuses-wrong-password"].ok  # the password is still checked…
    assert {"refuses-non-scram", "passwords-stored-as-scram", "hba-rules-scram-only"} <= failing(
        rows
    )  # …but not with SCRAM
    assert "without SCRAM" in rows["refuses-non-scram"].value


def test_nginx_checks_fail_with_old_tls_no_headers_and_no_redirect(
    weak: dict[str, Any], weak_stack_dir: Path, probe_target: Target
) -> None:
    container = weak["nginx-weak"]
    stack = point_at(
        weak_stack_dir,
        "nginx",
        http_port=host_port(container, "80/tcp"),
        https_port=host_port(container, "443/tcp"),
    )
    rows = wait_for(
        lambda: (
            (r := run_probe(stack, "nginx", probe_target))["https-with-stack-certificate"].ok and r
        ),
        "the weakened nginx",
    )
    assert {
        "refuses-tls-below-1.2",
        "security-headers",
        "http-redirects-to-https",
        "no-version-in-server-header",
    } <= failing(rows)
    assert "succeeded" in rows["refuses-tls-below-1.2"].value


def test_unstructured_check_fails_without_api_key(
    weak: dict[str, Any], weak_stack_dir: Path, probe_target: Target
) -> None:
    port = host_port(weak["unstructured-open"], "8000/tcp")
    stack = point_at(weak_stack_dir, "unstructured", port=port)
    rows = wait_for(
        lambda: (r := run_probe(stack, "unstructured", probe_target))["healthcheck"].ok and r,
        "the unstructured stand-in",
        timeout_s=180,
    )
    # an API with no key takes any key too: behind nginx's key gate that row fails as well
    assert failing(rows) == {"refuses-without-key", "refuses-other-keys"}


def test_a_port_on_all_addresses_and_readable_secret_files_fail(
    containers: Containers, images: dict[str, str], weak_stack_dir: Path, probe_target: Target
) -> None:
    stack = open_stack(weak_stack_dir)
    store = probe_target.file_store(stack.spec.name)
    secret_files = stack_probe.secret_paths(stack)
    for path in secret_files:
        store.put(path, b"x", 0o600)
    labels = {LABEL_STACK: stack.spec.name, LABEL_SERVICE: "redis"}
    inside = containers.start(
        images["redis"],
        command=["redis-server"],
        ports=loopback("6379/tcp"),
        labels=labels,
        hardening={
            "cap_drop": ["ALL"],
            "cap_add": list(stack.containers["redis"].cap_add),
            "security_opt": ["no-new-privileges:true"],
            "pids_limit": 256,
            "read_only": True,
            "tmpfs": {"/tmp": "size=16m,noexec,nosuid"},
            "user": stack.containers["redis"].user,
        },
    )
    host_port(inside, "6379/tcp")
    rows = {r.check: r for r in stack_probe.checks(stack, probe_target)}
    assert all(r.ok for r in rows.values()), rows  # loopback binding, 0600 files

    outside = containers.start(
        images["redis"],
        command=["redis-server"],
        ports={"6379/tcp": ("0.0.0.0", None)},
        labels=labels,
    )
    host_port(outside, "6379/tcp")
    store.put(secret_files[0], b"x", 0o644)
    private = [weak_stack_dir / "secrets.yaml", weak_stack_dir / "tls" / "key.pem"]
    for path in private:
        path.chmod(0o644)
    try:
        rows = {r.check: r for r in stack_probe.checks(stack, probe_target)}
    finally:
        for path in private:
            path.chmod(0o600)
        outside.remove(force=True)
    assert not rows["internal-ports-on-loopback"].ok
    assert "0.0.0.0:" in rows["internal-ports-on-loopback"].value
    # Started as docker run does: every capability of Docker's default set, no PIDs limit.
    assert not rows["containers-hardened"].ok
    hardening = rows["containers-hardened"].value
    assert f"{outside.name}: no no-new-privileges" in hardening
    assert f"{outside.name}: capabilities not dropped" in hardening
    assert f"{outside.name}: no PIDs limit" in hardening
    assert f"{outside.name}: root file system writable (read_only)" in hardening
    assert f"{outside.name}: runs as root" in hardening  # redis starts as its own user
    assert f"{inside.name}:" not in hardening
    assert not rows["deployed-secret-files-private"].ok
    assert f"{secret_files[0]} 0644" in rows["deployed-secret-files-private"].value
    assert not rows["secrets-file-private"].ok
    assert not rows["tls-key-private"].ok
    assert rows["secrets-file-private"].value.endswith("secrets.yaml is 0644")
