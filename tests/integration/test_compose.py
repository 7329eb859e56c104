"""The compose export runs as is: `docker-compose up -d` with the test bed's images, every
service healthy, then `down -v`. Compose v1 is the one packaged here (the file is written to
the compose specification, which v2 reads too; v2 cannot be run here)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .stack_support import Deployment, free_port, new_deployment
from .testbed_support import Testbed

#: Every service with a test bed image; grafana needs its upstream image, embeddings a build.
SERVICES = (
    "postgres", "postgres-exporter", "redis", "redis-exporter", "qdrant", "unstructured",
    "nginx", "prometheus", "alertmanager", "node-exporter",
)  # fmt: skip
HEALTHY_WITHIN_S = 600


@pytest.fixture
def compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is not installed (.ci/apt-packages.txt installs it)")
    return found


@pytest.fixture
def exported(tmp_path: Path, testbed: Testbed, image_map_path: Path) -> Iterator[Deployment]:
    images = yaml.safe_load(image_map_path.read_text())["images"]
    copied = tmp_path / "images.yaml"
    copied.write_text(yaml.safe_dump({"images": images}))
    # A copy: another worktree's `scripts/testbed up` may rewrite the shared map meanwhile.
    bed = dataclasses.replace(testbed, images_file=copied)
    deployment = new_deployment("local", tmp_path / "stack", bed, SERVICES, prefix="kbc")

    def free_ports(data: dict[str, Any]) -> None:
        taken = {s.get("port") for s in data["services"].values()}

        def another() -> int:  # free_port may hand out a port it just gave another service
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        data["services"]["nginx"]["http_port"] = another()
        data["services"]["nginx"]["https_port"] = another()
        data["services"]["qdrant"]["grpc_port"] = another()
        data["services"]["prometheus"]["scrape_app"] = False  # no user API here

    deployment.edit(free_ports)
    rendered = deployment.run("render")
    assert rendered.code == 0, rendered.err
    yield deployment


def run_compose(compose: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose, *args], cwd=folder, capture_output=True, text=True, timeout=900, check=False
    )


def states(client: docker.DockerClient, project: str) -> dict[str, tuple[str, str, int]]:
    """service -> (status, health, exit code) of every container of the compose project."""
    found = {}
    for container in client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    ):
        state = container.attrs["State"]
        service = container.labels["com.docker.compose.service"]
        health = (state.get("Health") or {}).get("Status", "none")
        found[service] = (state["Status"], health, int(state.get("ExitCode") or 0))
    return found


def test_compose_up_runs_every_service_healthy(
    exported: Deployment, compose: str, docker_client: docker.DockerClient
) -> None:
    folder = exported.dir / "rendered"
    project_lines = [
        line for line in (folder / ".env").read_text().splitlines() if "PROJECT" in line
    ]  # only those: the other lines are secrets
    assert project_lines == [f"COMPOSE_PROJECT_NAME={exported.name}"]
    try:
        up = run_compose(compose, folder, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while True:
            seen = states(docker_client, exported.name)
            one_shot = {s: v for s, v in seen.items() if s.endswith("-files")}
            running = {s: v for s, v in seen.items() if not s.endswith("-files")}
            healthy = set(running) == set(SERVICES) and all(
                status == "running" and health == "healthy"
                for status, health, _ in running.values()
            )
            if healthy:
                break
            broken = {s: v for s, v in running.items() if v[0] in ("exited", "dead", "restarting")}
            assert not broken, (broken, run_compose(compose, folder, "logs", "--tail=20").stdout)
            assert time.monotonic() < deadline, seen
            time.sleep(2)
        # redis and prometheus read their 0600 files as their own users (the -files one-shots);
        # postgres' and redis' hand their data volumes to the user they start as.
        assert set(one_shot) == {
            "redis-files",
            "prometheus-files",
            "alertmanager-files",
            "postgres-files",
        }
        assert all(v == ("exited", "none", 0) for v in one_shot.values()), one_shot
        for service in running:
            attrs = docker_client.containers.get(f"{exported.name}-{service}").attrs
            info = attrs["HostConfig"]
            assert info["CapDrop"] == ["ALL"] and info["PidsLimit"], service
            assert info["SecurityOpt"] == ["no-new-privileges:true"], service
            assert info["ReadonlyRootfs"] is True, service
            if service in ("postgres", "redis"):
                assert attrs["Config"]["User"] == "999:999", service
                assert not info["CapAdd"], service
    finally:
        down = run_compose(compose, folder, "down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stderr
    assert states(docker_client, exported.name) == {}


def test_compose_refuses_to_start_without_the_secrets(exported: Deployment, compose: str) -> None:
    folder = exported.dir / "rendered"
    env = folder / ".env"
    env.write_text(f"COMPOSE_PROJECT_NAME={exported.name}\n")
    config = run_compose(compose, folder, "config", "-q")
    assert config.returncode != 0
    # ${VAR:?}: compose names what is missing instead of starting with an empty password.
    assert re.search(r"\$\{KBINFRA_[A-Z_]+(PASSWORD|KEY)", config.stderr), config.stderr
    assert "run kbinfra render" in config.stderr
