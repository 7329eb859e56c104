"""The test bed itself: every image starts and keeps its upstream contract, sshd is strict."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import paramiko
import psycopg
import pytest
import requests
from docker.models.containers import Container

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .testbed_support import (
        SSHTarget,
        Testbed,
        exec_ok,
        output_text,
        published_port,
        ssh_docker_client,
        wait_for,
    )
except ImportError:
    from testbed_support import (  # type: ignore[no-redef]
        SSHTarget,
        Testbed,
        exec_ok,
        output_text,
        published_port,
        ssh_docker_client,
        wait_for,
    )

pytestmark = pytest.mark.integration

SERVICES = {
    "qdrant",
    "postgres",
    "redis",
    "nginx",
    "unstructured",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
}
# docker-py publishes on a free port when the host port is None (its stubs do not know that).
LOOPBACK_ANY_PORT: Any = ("127.0.0.1", None)
Cleanup = Callable[[Any], Any]
Namer = Callable[[str], str]


def put_file(container: Container, path: str, text: str, mode: int = 0o644) -> None:
    """Copy a file into a (possibly not yet started) container."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(str(Path(path).parent), buffer.getvalue())


def logs(container: Container) -> str:
    return container.logs().decode(errors="replace")


def start(
    docker_client: docker.DockerClient,
    cleanup: Cleanup,
    image: str,
    name: str,
    **kwargs: Any,
) -> Container:
    container: Container = cleanup(
        docker_client.containers.run(image, name=name, detach=True, **kwargs)
    )
    return container


def network(docker_client: docker.DockerClient, cleanup: Cleanup, name: str) -> str:
    cleanup(docker_client.networks.create(name))
    return name


# ------------------------------------------------------------------ the image map
def _command_line(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _parent(pid: str) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[1]  # after "pid (comm) state": the ppid


def _started_by_a_running_up(pid: str) -> bool:
    """Whether ``pid`` is a `scripts/testbed up` still running, or one of its children (which
    hold its lock rightly, until it ends)."""
    while pid not in ("0", "1"):
        if "scripts/testbed" in _command_line(pid):
            return True
        pid = _parent(pid)
    return False


def _processes_holding(path: Path) -> list[str]:
    """Every process with `path` open, but a running `up` and its children: "PID COMMAND"."""
    held = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.readlink() != path:
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        pid = fd.parts[2]
        if not _started_by_a_running_up(pid):
            held.add(f"{pid} {_command_line(pid)}")
    return sorted(held)


def test_no_daemon_up_started_keeps_its_lock(testbed: Testbed) -> None:
    """A daemon `up` starts (dockerd, sshd) that inherits the lock's fd holds it while it runs,
    and every later `up` of the state dir then waits forever (CI did, for an hour)."""
    lock = testbed.images_file.parent / "up.lock"
    assert lock.exists()
    assert _processes_holding(lock) == []


def test_image_map_names_every_service_and_every_image_exists(
    images: dict[str, str], image_map_path: Path, docker_client: docker.DockerClient
) -> None:
    assert image_map_path.is_absolute()
    assert image_map_path.read_text().startswith("# kbinfra image map: service name -> image")
    assert set(images) >= SERVICES, f"missing services: {SERVICES - set(images)}"
    assert "grafana" not in images
    for service, ref in images.items():
        image = docker_client.images.get(ref)
        assert image.labels.get("org.kbinfra.testbed.recipe-sha256"), f"{service}: no recipe hash"
        assert ref.split(":")[1].endswith(image.labels["org.kbinfra.testbed.recipe-sha256"][:12])


def test_stand_ins_say_they_are_stand_ins(
    images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    for service in ("qdrant", "unstructured"):
        ref = images[service]
        assert "standin" in ref
        label = docker_client.images.get(ref).labels.get("org.kbinfra.testbed.standin", "")
        assert "STAND-IN" in label, f"{service}: {label!r}"


# ------------------------------------------------------------------ PostgreSQL
def test_postgres_initialises_from_env_and_checks_the_password(
    docker_client: docker.DockerClient,
    images: dict[str, str],
    cleanup: Cleanup,
    unique_name: Namer,
) -> None:
    container = cleanup(
        docker_client.containers.create(
            images["postgres"],
            ["postgres", "-c", "shared_buffers=48MB"],
            name=unique_name("pg"),
            environment={
                "POSTGRES_PASSWORD": "right-pass",
                "POSTGRES_USER": "kb",
                "POSTGRES_DB": "kbdb",
                "POSTGRES_INITDB_ARGS": "--data-checksums",
            },
            ports={"5432/tcp": LOOPBACK_ANY_PORT},
        )
    )
    put_file(
        container,
        "/docker-entrypoint-initdb.d/10-schema.sql",
        "CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (42);",
    )
    container.start()
    port = published_port(container, "5432/tcp")
    dsn = f"host=127.0.0.1 port={port} dbname=kbdb user=kb connect_timeout=5"

    def connects() -> psycopg.Connection[Any]:
        return psycopg.connect(f"{dsn} password=right-pass")

    with wait_for(connects, f"PostgreSQL on 127.0.0.1:{port}\n{logs(container)}") as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting('shared_buffers'),"
            " current_setting('data_checksums'), (SELECT id FROM seeded),"
            " current_setting('password_encryption')"
        ).fetchone()
    assert row == ("kb", "kbdb", "48MB", "on", 42, "scram-sha-256")

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"{dsn} password=wrong-pass")

    assert exec_ok(container, "id", "-u", "postgres").strip() == "999"
    assert exec_ok(container, "pg_isready", "-U", "kb").strip().endswith("accepting connections")
    for tool in ("postgres", "pg_dump", "pg_restore", "psql", "pgbench"):
        exec_ok(container, "sh", "-c", f"command -v {tool}")
    exec_ok(
        container, "psql", "-U", "kb", "-d", "kbdb", "-c", "CREATE EXTENSION pg_stat_statements"
    )


def test_postgres_refuses_to_initialise_without_a_password(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    container = start(docker_client, cleanup, images["postgres"], unique_name("pg"))
    result = container.wait(timeout=60)
    assert result["StatusCode"] != 0
    assert "superuser password is not specified" in logs(container)


# ------------------------------------------------------------------ Redis
def test_redis_runs_a_config_file_like_upstream(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    container = cleanup(
        docker_client.containers.create(
            images["redis"],
            ["redis-server", "/usr/local/etc/redis/redis.conf"],
            name=unique_name("redis"),
        )
    )
    put_file(container, "/usr/local/etc/redis/redis.conf", "requirepass s3cret\nappendonly yes\n")
    container.start()
    wait_for(
        lambda: exec_ok(container, "redis-cli", "--no-auth-warning", "-a", "s3cret", "ping"),
        "redis PONG",
    )
    assert "NOAUTH" in exec_ok(container, "redis-cli", "ping")
    assert exec_ok(container, "id", "-u", "redis").strip() == "999"
    exec_ok(container, "sh", "-c", "command -v redis-benchmark")
    info = exec_ok(container, "redis-cli", "--no-auth-warning", "-a", "s3cret", "INFO", "server")
    assert "redis_version:7." in info
    assert container.attrs["Config"]["WorkingDir"] == "/data"


def test_redis_without_config_accepts_other_containers_like_upstream(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    net = network(docker_client, cleanup, unique_name("net"))
    server_name = unique_name("redis")
    server = start(docker_client, cleanup, images["redis"], server_name, network=net)
    wait_for(lambda: "PONG" in exec_ok(server, "redis-cli", "ping"), "redis PONG")
    client = start(
        docker_client,
        cleanup,
        images["redis"],
        unique_name("cli"),
        network=net,
        command=["sleep", "300"],
    )
    # Upstream's redis has protected mode off by default; Debian's binary would refuse this.
    assert exec_ok(client, "redis-cli", "-h", server_name, "ping").strip() == "PONG"


# ------------------------------------------------------------------ nginx
def test_nginx_includes_conf_d_in_http_and_serves(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    container = cleanup(
        docker_client.containers.create(
            images["nginx"], name=unique_name("nginx"), ports={"80/tcp": LOOPBACK_ANY_PORT}
        )
    )
    # limit_req_zone is valid only in the http context: conf.d must be included there.
    put_file(
        container,
        "/etc/nginx/conf.d/default.conf",
        "limit_req_zone $binary_remote_addr zone=api:1m rate=10r/s;\n"
        "server {\n  listen 80;\n"
        "  location /ping { limit_req zone=api burst=5; return 200 'pong'; }\n}\n",
    )
    container.start()
    port = published_port(container, "80/tcp")
    response = wait_for(
        lambda: requests.get(f"http://127.0.0.1:{port}/ping", timeout=5), "nginx on /ping"
    )
    assert response.status_code == 200
    assert response.text == "pong"
    assert exec_ok(container, "curl", "-fsS", "http://127.0.0.1/ping") == "pong"
    assert "GET /ping" in logs(container)  # access log goes to stdout


# ------------------------------------------------------------------ monitoring
@pytest.mark.parametrize(
    ("service", "url", "expected"),
    [
        ("prometheus", "http://127.0.0.1:9090/-/healthy", "Healthy"),
        ("alertmanager", "http://127.0.0.1:9093/-/healthy", "OK"),
        ("node-exporter", "http://127.0.0.1:9100/metrics", "node_exporter_build_info"),
    ],
)
def test_monitoring_images_answer_their_health_check_with_wget(
    docker_client: docker.DockerClient,
    images: dict[str, str],
    cleanup: Cleanup,
    unique_name: Namer,
    service: str,
    url: str,
    expected: str,
) -> None:
    container = start(docker_client, cleanup, images[service], unique_name(service))
    body = wait_for(
        lambda: exec_ok(container, "wget", "-qO-", url), f"{service} at {url}\n{logs(container)}"
    )
    assert expected in body
    assert container.attrs["Config"]["User"] == "nobody"


def test_promtool_and_amtool_are_present(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    for service, tool in (("prometheus", "promtool"), ("alertmanager", "amtool")):
        output = docker_client.containers.run(
            images[service], ["--version"], entrypoint=tool, remove=True, stderr=True
        )
        assert b"version" in output.lower()


def test_exporters_read_upstream_env_names(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    net = network(docker_client, cleanup, unique_name("net"))
    pg = start(
        docker_client,
        cleanup,
        images["postgres"],
        unique_name("pg"),
        network=net,
        environment={"POSTGRES_PASSWORD": "pg-pass"},
    )
    redis = start(
        docker_client,
        cleanup,
        images["redis"],
        unique_name("redis"),
        network=net,
        command=["redis-server", "--requirepass", "redis-pass"],
    )
    pg_exporter = start(
        docker_client,
        cleanup,
        images["postgres-exporter"],
        unique_name("pgx"),
        network=net,
        environment={
            "DATA_SOURCE_URI": f"{pg.name}:5432/postgres?sslmode=disable",
            "DATA_SOURCE_USER": "postgres",
            "DATA_SOURCE_PASS": "pg-pass",
        },
    )
    redis_exporter = start(
        docker_client,
        cleanup,
        images["redis-exporter"],
        unique_name("rx"),
        network=net,
        environment={
            "REDIS_ADDR": f"redis://{redis.name}:6379",
            "REDIS_USER": "default",
            "REDIS_PASSWORD": "redis-pass",
        },
    )
    pg_exporter_dsn = start(
        docker_client,
        cleanup,
        images["postgres-exporter"],
        unique_name("pgx-dsn"),
        network=net,
        environment={
            "DATA_SOURCE_NAME": f"postgresql://postgres:pg-pass@{pg.name}:5432/postgres?sslmode=disable"
        },
    )
    probe = start(
        docker_client,
        cleanup,
        images["prometheus"],
        unique_name("probe"),
        network=net,
        entrypoint=["sleep", "300"],
    )

    def metric(target: str, line: str) -> bool:
        code, output = probe.exec_run(["wget", "-qO-", target])
        return code == 0 and line in output_text(output)

    wait_for(
        lambda: metric(f"http://{pg_exporter.name}:9187/metrics", "\npg_up 1"),
        f"pg_up 1 from postgres-exporter\n{logs(pg_exporter)}",
    )
    wait_for(
        lambda: metric(f"http://{pg_exporter_dsn.name}:9187/metrics", "\npg_up 1"),
        f"pg_up 1 from postgres-exporter with DATA_SOURCE_NAME\n{logs(pg_exporter_dsn)}",
    )
    wait_for(
        lambda: metric(f"http://{redis_exporter.name}:9121/metrics", "\nredis_up 1"),
        f"redis_up 1 from redis-exporter\n{logs(redis_exporter)}",
    )


# ------------------------------------------------------------------ Qdrant stand-in
@pytest.fixture
def qdrant(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> tuple[Container, str]:
    container = start(
        docker_client,
        cleanup,
        images["qdrant"],
        unique_name("qdrant"),
        environment={
            "QDRANT__SERVICE__API_KEY": "rw-key",
            "QDRANT__SERVICE__READ_ONLY_API_KEY": "ro-key",
        },
        ports={"6333/tcp": LOOPBACK_ANY_PORT},
    )
    url = f"http://127.0.0.1:{published_port(container, '6333/tcp')}"
    wait_for(
        lambda: requests.get(f"{url}/readyz", timeout=5).ok, f"qdrant /readyz\n{logs(container)}"
    )
    return container, url


RW = {"api-key": "rw-key"}


def test_qdrant_stand_in_announces_itself_and_checks_keys_like_upstream(
    qdrant: tuple[Container, str],
) -> None:
    container, url = qdrant
    assert "STAND-IN" in logs(container)
    root = requests.get(f"{url}/", timeout=5).json()
    assert root["title"] == "qdrant - vector search engine"
    assert root["version"] == "1.16.3"
    for path in ("/healthz", "/livez", "/readyz"):
        assert requests.get(f"{url}{path}", timeout=5).status_code == 200

    missing = requests.get(f"{url}/collections", timeout=5)
    assert missing.status_code == 401
    assert missing.text == "Must provide an API key or an Authorization bearer token"
    wrong = requests.get(f"{url}/collections", headers={"api-key": "nope"}, timeout=5)
    assert wrong.status_code == 401
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 401

    bearer = {"Authorization": "Bearer rw-key"}
    created = requests.put(
        f"{url}/collections/docs",
        json={"vectors": {"size": 4, "distance": "Cosine"}},
        headers=bearer,
        timeout=10,
    )
    assert created.json()["result"] is True

    read_only = {"api-key": "ro-key"}
    assert requests.get(f"{url}/collections/docs", headers=read_only, timeout=5).ok
    counted = requests.post(
        f"{url}/collections/docs/points/count", json={}, headers=read_only, timeout=5
    )
    assert counted.json()["result"] == {"count": 0}
    write = requests.put(
        f"{url}/collections/docs/points?wait=true",
        json={"points": [{"id": 1, "vector": [1, 0, 0, 0]}]},
        headers=read_only,
        timeout=5,
    )
    assert write.status_code == 403
    assert write.json()["status"]["error"].startswith("Forbidden:")

    metrics = requests.get(f"{url}/metrics", headers=RW, timeout=5)
    assert "\ncollections_total 1\n" in metrics.text


def test_qdrant_snapshot_round_trip_restores_the_points(qdrant: tuple[Container, str]) -> None:
    _, url = qdrant
    collection = f"{url}/collections/kb"
    requests.put(
        collection, json={"vectors": {"size": 3, "distance": "Dot"}}, headers=RW, timeout=10
    ).raise_for_status()
    points = [
        {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"doc": "a"}},
        {"id": str(uuid.uuid4()), "vector": [0.0, 1.0, 0.0], "payload": {"doc": "b"}},
        {"id": 3, "vector": [0.0, 0.0, 1.0], "payload": {"doc": "c"}},
    ]
    upsert = requests.put(
        f"{collection}/points?wait=true", json={"points": points}, headers=RW, timeout=10
    )
    assert upsert.json()["result"]["status"] == "completed"

    snapshot = requests.post(f"{collection}/snapshots?wait=true", headers=RW, timeout=30).json()
    description = snapshot["result"]
    assert set(description) >= {"name", "creation_time", "size", "checksum"}
    download = requests.get(
        f"{collection}/snapshots/{description['name']}", headers=RW, timeout=30, stream=True
    )
    download.raise_for_status()
    data = b"".join(download.iter_content(1 << 16))
    assert len(data) == description["size"]
    assert hashlib.sha256(data).hexdigest() == description["checksum"]

    requests.delete(
        f"{collection}/snapshots/{description['name']}", headers=RW, timeout=10
    ).raise_for_status()
    assert requests.get(f"{collection}/snapshots", headers=RW, timeout=10).json()["result"] == []
    assert requests.delete(collection, headers=RW, timeout=10).json()["result"] is True
    assert requests.get(collection, headers=RW, timeout=10).status_code == 404

    upload = requests.post(
        f"{collection}/snapshots/upload",
        params={"priority": "snapshot", "checksum": description["checksum"]},
        files={"snapshot": (description["name"], data, "application/octet-stream")},
        headers=RW,
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    count = requests.post(
        f"{collection}/points/count", json={"exact": True}, headers=RW, timeout=10
    )
    assert count.json()["result"]["count"] == 3
    hits = requests.post(
        f"{collection}/points/query",
        json={"query": [0.0, 0.0, 2.0], "limit": 1, "with_payload": True},
        headers=RW,
        timeout=10,
    ).json()["result"]["points"]
    assert hits[0]["payload"] == {"doc": "c"}


def test_qdrant_cosine_vectors_are_stored_normalized_and_stay_so_after_a_restore(
    qdrant: tuple[Container, str],
) -> None:
    """Upstream normalizes Cosine vectors on upload and returns what it stored; the stand-in
    once returned the raw vectors after a snapshot restore (norm 11.6 instead of 1)."""
    _, url = qdrant
    collection = f"{url}/collections/cos"
    requests.put(
        collection, json={"vectors": {"size": 2, "distance": "Cosine"}}, headers=RW, timeout=10
    ).raise_for_status()
    requests.put(
        f"{collection}/points?wait=true",
        json={"points": [{"id": 1, "vector": [3.0, 4.0]}]},
        headers=RW,
        timeout=10,
    ).raise_for_status()
    requests.put(
        f"{collection}/points?wait=true",
        json={"batch": {"ids": [2], "vectors": [[0.0, 5.0]]}},
        headers=RW,
        timeout=10,
    ).raise_for_status()

    def vectors() -> list[float]:
        points = requests.post(
            f"{collection}/points/scroll", json={"with_vector": True}, headers=RW, timeout=10
        ).json()["result"]["points"]
        return [x for p in sorted(points, key=lambda p: p["id"]) for x in p["vector"]]

    expected = [0.6, 0.8, 0.0, 1.0]
    assert vectors() == pytest.approx(expected)
    snapshot = requests.post(f"{collection}/snapshots?wait=true", headers=RW, timeout=30).json()
    name = snapshot["result"]["name"]
    data = requests.get(f"{collection}/snapshots/{name}", headers=RW, timeout=30).content
    requests.delete(collection, headers=RW, timeout=10).raise_for_status()
    requests.post(
        f"{collection}/snapshots/upload",
        params={"priority": "snapshot"},
        files={"snapshot": (name, data, "application/octet-stream")},
        headers=RW,
        timeout=60,
    ).raise_for_status()
    assert vectors() == pytest.approx(expected)


def test_qdrant_data_survives_a_restart(qdrant: tuple[Container, str]) -> None:
    container, url = qdrant
    requests.put(
        f"{url}/collections/keep",
        json={"vectors": {"size": 2, "distance": "Euclid"}},
        headers=RW,
        timeout=10,
    ).raise_for_status()
    requests.put(
        f"{url}/collections/keep/points?wait=true",
        json={"points": [{"id": 7, "vector": [0.5, 0.5], "payload": {"k": "v"}}]},
        headers=RW,
        timeout=10,
    ).raise_for_status()
    container.restart(timeout=10)
    url = f"http://127.0.0.1:{published_port(container, '6333/tcp')}"
    wait_for(lambda: requests.get(f"{url}/readyz", timeout=5).ok, "qdrant after restart")
    scrolled = requests.post(
        f"{url}/collections/keep/points/scroll",
        json={"limit": 10, "with_vector": True, "with_payload": True},
        headers=RW,
        timeout=10,
    ).json()["result"]["points"]
    assert [(p["id"], p["payload"], p["vector"]) for p in scrolled] == [(7, {"k": "v"}, [0.5, 0.5])]


# ------------------------------------------------------------------ Unstructured stand-in
def test_unstructured_stand_in_partitions_markdown(
    docker_client: docker.DockerClient, images: dict[str, str], cleanup: Cleanup, unique_name: Namer
) -> None:
    container = start(
        docker_client,
        cleanup,
        images["unstructured"],
        unique_name("unstructured"),
        environment={"UNSTRUCTURED_API_KEY": "u-key"},
        ports={"8000/tcp": LOOPBACK_ANY_PORT},
    )
    url = f"http://127.0.0.1:{published_port(container, '8000/tcp')}"
    health = wait_for(
        lambda: requests.get(f"{url}/healthcheck", timeout=5).json(),
        f"unstructured /healthcheck\n{logs(container)}",
    )
    assert health == {"healthcheck": "HEALTHCHECK STATUS: EVERYTHING OK!"}
    assert "STAND-IN" in logs(container)

    markdown = (
        b"# Deploying kbinfra\n\nThe stack runs Qdrant and PostgreSQL. It is backed up nightly.\n"
    )
    files = {"files": ("guide.md", markdown, "text/markdown")}
    refused = requests.post(
        f"{url}/general/v0/general",
        files=files,
        headers={"unstructured-api-key": "wrong"},
        timeout=60,
    )
    assert refused.status_code == 401
    assert refused.json() == {"detail": "API key wrong is invalid"}

    response = requests.post(
        f"{url}/general/v0/general",
        files=files,
        data={"strategy": "fast"},
        headers={"unstructured-api-key": "u-key"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    elements = response.json()
    assert [(e["type"], e["text"]) for e in elements] == [
        ("Title", "Deploying kbinfra"),
        ("NarrativeText", "The stack runs Qdrant and PostgreSQL. It is backed up nightly."),
    ]
    metadata = elements[1]["metadata"]
    assert metadata["filename"] == "guide.md"
    assert metadata["filetype"] == "text/markdown"
    assert metadata["languages"] == ["eng"]
    assert all(len(e["element_id"]) == 32 for e in elements)


# ------------------------------------------------------------------ SSH
def test_container_started_over_ssh_is_seen_by_the_local_engine(
    ssh_docker: docker.DockerClient,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    cleanup: Cleanup,
    unique_name: Namer,
) -> None:
    name = unique_name("over-ssh")
    remote = cleanup(
        ssh_docker.containers.run(images["redis"], name=name, detach=True, labels={"via": "ssh"})
    )
    local = docker_client.containers.get(name)
    assert local.id == remote.id
    assert local.labels["via"] == "ssh"
    wait_for(lambda: "PONG" in exec_ok(local, "redis-cli", "ping"), "redis started over ssh")


def test_ssh_rejects_a_host_key_that_is_not_the_known_one(
    ssh_target: SSHTarget, tmp_path: Path
) -> None:
    other_key = paramiko.Ed25519Key.from_private_key_file(str(ssh_target.key_path))
    entry = f"[{ssh_target.host}]:{ssh_target.port}"
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{entry} {other_key.get_name()} {other_key.get_base64()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_docker_client(ssh_target, tmp_path / "home-wrong", known_hosts=wrong)

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        ssh_docker_client(ssh_target, tmp_path / "home-unknown", known_hosts=empty)

    if shutil.which("ssh"):
        result = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(ssh_target.key_path),
                "-p",
                str(ssh_target.port),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={wrong}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                f"{ssh_target.user}@{ssh_target.host}",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
        assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_ssh_refuses_a_key_it_does_not_know(ssh_target: SSHTarget, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(paramiko.AuthenticationException):
        ssh_docker_client(
            SSHTarget(
                user=ssh_target.user,
                host=ssh_target.host,
                port=ssh_target.port,
                key_path=stranger,
                known_hosts_path=ssh_target.known_hosts_path,
            ),
            tmp_path / "home",
        )
