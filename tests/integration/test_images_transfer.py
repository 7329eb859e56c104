"""``kbinfra images save`` / ``load``: a stack's images out to one tarball and back in."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from typer.testing import CliRunner

from kbinfra.cli import app
from kbinfra.stack import Stack

from .testbed_support import Cluster, SSHTarget, paramiko_home

pytestmark = pytest.mark.integration

KBINFRA = [sys.executable, "-m", "kbinfra"]


@pytest.fixture
def unique_image(docker_client: Any) -> Iterator[str]:
    """A small image no other test or engine has: its one layer is random bytes."""
    tag = f"kbinfra-test/roundtrip:{uuid.uuid4().hex[:12]}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (
            ("Dockerfile", b"FROM scratch\nCOPY blob /blob\n"),
            ("blob", os.urandom(8 * 2**20)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag
    for image in docker_client.images.list(name=tag):
        docker_client.images.remove(image.id, force=True)


def only_postgres(make_stack: Callable[..., Stack], image: str) -> dict[str, Any]:
    """Overrides that enable one service, running ``image``: the test owns every image."""
    names = make_stack("minimum").spec.services.names()
    services: dict[str, Any] = {name: {"enabled": False} for name in names}
    # The tag is random hex, so it does not always start with a major version: say it.
    services["postgres"] = {"enabled": True, "image": image, "version": 15}
    return {"services": services}


def test_save_then_load_restores_the_stack_images(
    docker_client: Any,
    unique_image: str,
    make_stack: Callable[..., Stack],
    tmp_path: Path,
) -> None:
    stack = make_stack("minimum", only_postgres(make_stack, unique_image))
    assert [s.container(stack.contexts[n]).image for n, s in stack.services.items()] == [
        unique_image
    ]
    image_id = docker_client.images.get(unique_image).id
    archive = tmp_path / "images.tar"
    runner = CliRunner()

    saved = runner.invoke(app, ["images", "save", str(archive), "--dir", str(stack.dir)])
    assert saved.exit_code == 0, saved.output
    assert archive.stat().st_size > 8 * 2**20
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()

    docker_client.images.remove(unique_image, force=True)
    assert not docker_client.images.list(name=unique_image)

    loaded = runner.invoke(
        app, ["images", "load", str(archive), "--dir", str(stack.dir), "-o", "json"]
    )
    assert loaded.exit_code == 0, loaded.output
    assert docker_client.images.get(unique_image).id == image_id


def test_load_streams_the_archive_to_an_ssh_target(
    docker_client: Any,
    unique_image: str,
    ssh_target: SSHTarget,
    make_stack: Callable[..., Stack],
    tmp_path: Path,
) -> None:
    image_id = docker_client.images.get(unique_image).id
    stack, archive = saved_ssh_stack(docker_client, unique_image, ssh_target, make_stack, tmp_path)

    # The test bed's sshd fronts this same engine: what arrives over SSH shows up here.
    loaded = CliRunner().invoke(
        app, ["images", "load", str(archive), *ssh_options(stack, ssh_target)]
    )
    assert loaded.exit_code == 0, loaded.output
    assert f"into {ssh_target.docker_base_url}" in loaded.output
    assert docker_client.images.get(unique_image).id == image_id


def test_load_refuses_an_ssh_target_whose_host_key_is_not_trusted(
    docker_client: Any,
    unique_image: str,
    ssh_target: SSHTarget,
    make_stack: Callable[..., Stack],
    tmp_path: Path,
) -> None:
    """The same known_hosts rule as apply: no trust on first use, not even for images."""
    stack, archive = saved_ssh_stack(docker_client, unique_image, ssh_target, make_stack, tmp_path)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    # Even a user whose own ~/.ssh/known_hosts trusts the host: kbinfra's file decides.
    with paramiko_home(ssh_target, tmp_path / "home"):
        refused = subprocess.run(
            [
                *KBINFRA,
                "images",
                "load",
                str(archive),
                *ssh_options(stack, ssh_target, known_hosts=empty),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert refused.returncode == 2, refused.stderr
    error = refused.stderr.strip().splitlines()[-1]
    assert "unknown SSH host key" in error
    assert f"kbinfra ssh trust {ssh_target.host}:{ssh_target.port}" in error
    assert not docker_client.images.list(name=unique_image)


def saved_ssh_stack(
    docker_client: Any,
    image: str,
    ssh_target: SSHTarget,
    make_stack: Callable[..., Stack],
    tmp_path: Path,
) -> tuple[Stack, Path]:
    """A stack on the SSH target running ``image``, saved to an archive, then the image
    removed from the engine: only a load can bring it back."""
    overrides = only_postgres(make_stack, image)
    overrides["target"] = ssh_target.docker_base_url
    stack = make_stack("minimum", overrides)
    archive = tmp_path / "images.tar"
    saved = CliRunner().invoke(app, ["images", "save", str(archive), "--dir", str(stack.dir)])
    assert saved.exit_code == 0, saved.output
    docker_client.images.remove(image, force=True)
    return stack, archive


def ssh_options(stack: Stack, ssh_target: SSHTarget, known_hosts: Path | None = None) -> list[str]:
    return [
        "--dir",
        str(stack.dir),
        "--known-hosts",
        str(known_hosts or ssh_target.known_hosts_path),
        "--identity",
        str(ssh_target.key_path),
    ]


def test_save_names_the_images_the_engine_lacks(
    docker_client: Any, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    missing = f"kbinfra-test/absent:{uuid.uuid4().hex[:12]}"
    stack = make_stack("minimum", only_postgres(make_stack, missing))
    result = CliRunner().invoke(
        app, ["images", "save", str(tmp_path / "x.tar"), "--dir", str(stack.dir)]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "x.tar").exists()


def test_copy_streams_only_what_another_engine_lacks(
    docker_client: Any,
    unique_image: str,
    cluster: Cluster,
    make_stack: Callable[..., Stack],
) -> None:
    """`images copy`: from this engine into a node's (another engine, over SSH, strict host
    keys), checked by image ID; a second copy sends nothing."""
    node = cluster.nodes[1]
    overrides = only_postgres(make_stack, unique_image)
    overrides["target"] = node.url
    stack = make_stack("minimum", overrides)
    options = ["--dir", str(stack.dir), "--known-hosts", str(cluster.known_hosts)]
    options += ["--identity", str(cluster.identity), "-o", "json"]
    node_engine = docker.DockerClient(base_url=f"unix://{node.socket}")
    try:
        assert not node_engine.images.list(name=unique_image)
        first = CliRunner().invoke(app, ["images", "copy", *options])
        assert first.exit_code == 0, first.output
        sent = json.loads(first.stdout)
        assert sent["copied"] == [unique_image] and sent["present"] == []
        assert sent["bytes"] > 8 * 2**20
        assert node_engine.images.get(unique_image).id == docker_client.images.get(unique_image).id

        again = CliRunner().invoke(app, ["images", "copy", *options])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout) | {"seconds": 0} == {
            "target": node.url,
            "copied": [],
            "present": [unique_image],
            "bytes": 0,
            "seconds": 0,
        }
    finally:
        for image in node_engine.images.list(name=unique_image):
            node_engine.images.remove(image.id, force=True)
        node_engine.close()


def test_apply_copies_what_a_remote_engine_lacks_from_this_one(
    docker_client: Any,
    images: dict[str, str],
    cluster: Cluster,
    make_stack: Callable[..., Stack],
) -> None:
    """No registry answers here: apply onto another engine over SSH streams the images that
    engine lacks from this machine's, and the container runs on them."""
    node = cluster.nodes[2]
    names = make_stack("minimum").spec.services.names()
    services: dict[str, Any] = {name: {"enabled": False} for name in names}
    services["nginx"] = {"enabled": True, "image": images["nginx"]}
    stack = make_stack(
        "minimum",
        {"name": f"kbcopy{uuid.uuid4().hex[:6]}", "target": node.url, "services": services},
    )
    options = ["--dir", str(stack.dir), "--known-hosts", str(cluster.known_hosts)]
    options += ["--identity", str(cluster.identity)]
    node_engine = docker.DockerClient(base_url=f"unix://{node.socket}")
    try:
        for image in node_engine.images.list(name=images["nginx"]):
            node_engine.images.remove(image.id, force=True)
        applied = CliRunner().invoke(app, ["apply", "--yes", *options, "-o", "json"])
        assert applied.exit_code == 0, applied.output
        assert "copying from here" in applied.stderr
        here = docker_client.images.get(images["nginx"]).id
        assert node_engine.images.get(images["nginx"]).id == here
        (container,) = node_engine.containers.list(filters={"name": f"{stack.spec.name}-nginx"})
        assert container.image.id == here
    finally:
        destroyed = CliRunner().invoke(
            app, ["destroy", "--yes", "--delete-data", "--confirm-name", stack.spec.name, *options]
        )
        node_engine.close()
        assert destroyed.exit_code == 0, destroyed.output
