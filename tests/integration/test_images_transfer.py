"""``kbinfra images save`` / ``load``: a stack's images out to one tarball and back in."""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kbinfra.cli import app
from kbinfra.stack import Stack

from .testbed_support import SSHTarget, paramiko_home

pytestmark = pytest.mark.integration


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
    services["postgres"] = {"enabled": True, "image": image}
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
    overrides = only_postgres(make_stack, unique_image)
    overrides["target"] = ssh_target.docker_base_url
    stack = make_stack("minimum", overrides)
    image_id = docker_client.images.get(unique_image).id
    archive = tmp_path / "images.tar"
    runner = CliRunner()
    saved = runner.invoke(app, ["images", "save", str(archive), "--dir", str(stack.dir)])
    assert saved.exit_code == 0, saved.output
    docker_client.images.remove(unique_image, force=True)

    # The test bed's sshd fronts this same engine: what arrives over SSH shows up here.
    with paramiko_home(ssh_target, tmp_path / "home"):
        loaded = runner.invoke(app, ["images", "load", str(archive), "--dir", str(stack.dir)])
    assert loaded.exit_code == 0, loaded.output
    assert f"into {ssh_target.docker_base_url}" in loaded.output
    assert docker_client.images.get(unique_image).id == image_id


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
