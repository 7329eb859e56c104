"""A Python base image built on this machine, standing in for ``python:3.11-slim-bookworm``.

There is no image registry here, so the tests build their own base: Debian bookworm
(minbase, debootstrap'd from the mirror apt already uses) plus Debian's python3.11 and
python3-venv, imported with ``docker import``. The tag carries the recipe's hash, so it is
built once per machine and reused.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
REPOSITORY = "kbinfra-test/python-base"


def debian_mirror() -> str:
    """The first Debian mirror apt uses for ``bookworm`` (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "security" not in fields.get("URIs", ""):
                return fields["URIs"].split()[0].strip()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise RuntimeError("no Debian bookworm mirror found in /etc/apt/sources.list{,.d}")


TESTBED_DEBIAN = "kbinfra-testbed/debian"


def python_base_image(client: docker.DockerClient) -> str:
    """The tag of a Debian bookworm + python3.11 image, built here if missing.

    On top of the test bed's debootstrap'd Debian when ``scripts/testbed up`` made one (a
    minute of apt instead of a second debootstrap), else from a debootstrap of its own.
    """
    testbed_debian = sorted(
        (tag for image in client.images.list(name=TESTBED_DEBIAN) for tag in image.tags),
        reverse=True,
    )
    if testbed_debian:
        return _python_on(client, testbed_debian[0])
    mirror = debian_mirror()
    recipe = json.dumps({"suite": SUITE, "packages": PACKAGES, "mirror": mirror}, sort_keys=True)
    tag = f"{REPOSITORY}:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if client.images.list(name=tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="kbinfra-base-") as scratch:
        root = Path(scratch) / "root"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "--change", "ENV LANG=C.UTF-8", "-", tag],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap tree failed")
    return tag


def _python_on(client: docker.DockerClient, debian: str) -> str:
    """``debian`` plus PACKAGES, tagged by the parent's image id and the package list."""
    parent_id = client.images.get(debian).id
    recipe = json.dumps({"parent": parent_id, "packages": PACKAGES}, sort_keys=True)
    tag = f"{REPOSITORY}:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if client.images.list(name=tag):
        return tag
    dockerfile = (
        f"FROM {debian}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends "
        f"{' '.join(PACKAGES)} && rm -rf /var/lib/apt/lists/*\n"
        "ENV LANG=C.UTF-8\n"
    )
    with tempfile.TemporaryDirectory(prefix="kbinfra-base-") as context:
        (Path(context) / "Dockerfile").write_text(dockerfile)
        client.images.build(path=context, tag=tag, rm=True)
    return tag
