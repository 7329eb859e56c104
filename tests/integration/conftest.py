"""Fixtures for the integration tests: the kbinfra test bed, brought up once per session.

`scripts/testbed up` installs and starts what is missing (Docker Engine, an sshd on loopback),
builds the images and prints the image map's path as its last line. Without a test bed the
tests skip locally with the reason, and fail in CI (CI=true): a CI run that silently tested
nothing would look green.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .testbed_support import (
        Cluster,
        SSHTarget,
        Testbed,
        leave_swarm,
        read_cluster,
        ssh_docker_client,
    )
except ImportError:
    from testbed_support import (  # type: ignore[no-redef]
        Cluster,
        SSHTarget,
        Testbed,
        leave_swarm,
        read_cluster,
        ssh_docker_client,
    )

REPO_DIR = Path(__file__).resolve().parents[2]
TESTBED_SCRIPT = REPO_DIR / "scripts" / "testbed"
UP_TIMEOUT_S = 3600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the real test bed (Docker Engine, sshd, images): scripts/testbed up",
    )


def testbed_unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must never pass by testing nothing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"test bed unavailable: {reason}")


def bring_up_testbed() -> Testbed:
    if os.geteuid() != 0:
        testbed_unavailable(
            "scripts/testbed up must run as root (installs packages, starts dockerd and sshd)"
        )
    try:
        proc = subprocess.run(
            [str(TESTBED_SCRIPT), "up"],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        testbed_unavailable(f"scripts/testbed up did not finish: {exc}")
        raise  # unreachable: testbed_unavailable raises
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        testbed_unavailable(f"scripts/testbed up exited {proc.returncode}:\n{tail}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        testbed_unavailable("scripts/testbed up printed no image map path")
    images_file = Path(lines[-1])
    state = json.loads((images_file.parent / "testbed.json").read_text())
    ssh = state["ssh"]
    images = yaml.safe_load(images_file.read_text())["images"]
    return Testbed(
        images_file=images_file,
        images={str(k): str(v) for k, v in images.items()},
        ssh=SSHTarget(
            user=ssh["user"],
            host=ssh["host"],
            port=int(ssh["port"]),
            key_path=Path(ssh["key_path"]),
            known_hosts_path=Path(ssh["known_hosts_path"]),
        ),
        up_log=proc.stderr,
        base_image=str(state.get("base_image") or ""),
        recipe_images={str(k): str(v) for k, v in (state.get("recipe_images") or {}).items()},
    )


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    return bring_up_testbed()


@pytest.fixture(scope="session")
def cluster(testbed: Testbed) -> Cluster:
    """The test bed's three-node cluster (`scripts/testbed cluster up`, idempotent)."""
    proc = subprocess.run(
        [str(TESTBED_SCRIPT), "cluster", "up"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        testbed_unavailable(f"scripts/testbed cluster up exited {proc.returncode}:\n{tail}")
    return read_cluster(Path(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def clean_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster's nodes in no Swarm before the module and after it: the session's Swarm
    modules share one cluster."""
    leave_swarm(cluster)
    try:
        yield cluster
    finally:
        leave_swarm(cluster)


@pytest.fixture(scope="session")
def image_map_path(testbed: Testbed) -> Path:
    """The file to hand to `kbinfra init --images`."""
    return testbed.images_file


@pytest.fixture(scope="session")
def images(testbed: Testbed) -> dict[str, str]:
    return testbed.images


@pytest.fixture(scope="session")
def embeddings_image(docker_client: docker.DockerClient) -> str:
    """The embedding service's image, built by kbinfra's own builder on the test bed's
    Python base (cached by the hash of its inputs: built once per machine). A session
    fixture, so that whichever test needs it first builds it, whatever the order."""
    from kbinfra.images.build import build_image  # noqa: PLC0415

    from .debian_base import python_base_image  # noqa: PLC0415

    base = python_base_image(docker_client)
    # The tag as a literal: tests/unit/test_testbed_images.py reads it as built by the tests.
    return build_image(docker_client, base_image=base, tag="kbinfra-test/embeddings:it").tag


@pytest.fixture(scope="session")
def base_image(testbed: Testbed, docker_client: docker.DockerClient) -> str:
    """The test bed's plain Debian image, present in the engine (no registry can provide it)."""
    step = "scripts/testbed up builds it (ensure_base_image) and records it in testbed.json"
    if not testbed.base_image:
        pytest.fail(f"the test bed recorded no base image: {step}", pytrace=False)
    try:
        docker_client.images.get(testbed.base_image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {testbed.base_image} is missing: {step}", pytrace=False)
    return testbed.base_image


@pytest.fixture(scope="session")
def ssh_target(testbed: Testbed) -> SSHTarget:
    return testbed.ssh


@pytest.fixture(scope="session")
def docker_client(testbed: Testbed) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        testbed_unavailable(f"the local Docker Engine does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def ssh_docker(
    ssh_target: SSHTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[docker.DockerClient]:
    client = ssh_docker_client(ssh_target, tmp_path_factory.mktemp("paramiko-home"))
    yield client
    client.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Container and network names unique per test (and per run), so runs never collide."""

    def make(purpose: str) -> str:
        test = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:30].strip("-")
        return f"kbt-{test}-{purpose}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def cleanup(docker_client: docker.DockerClient) -> Iterator[Callable[[Any], Any]]:
    """Register containers and networks to remove (with their anonymous volumes) after the test."""
    resources: list[Any] = []

    def register(resource: Any) -> Any:
        resources.append(resource)
        return resource

    yield register
    for resource in reversed(resources):
        try:
            if hasattr(resource, "remove") and hasattr(resource, "exec_run"):
                docker_client.containers.get(resource.id).remove(force=True, v=True)
            else:
                docker_client.networks.get(resource.id).remove()
        except docker.errors.NotFound:
            pass
