"""Move a stack's images without a registry: one tarball out, into the target's engine, or
straight from this machine's engine into another.

Every direction streams: ``save`` writes the engine's archive to disk chunk by chunk,
``load`` sends the file to the engine (local socket or ``ssh://``) from an open file, and
``copy`` pipes one engine's archive into the other's load, so none ever holds a whole image
in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from kbinfra.errors import KbinfraError
from kbinfra.progress import Progress

if TYPE_CHECKING:
    import docker

    from kbinfra.stack import Stack

CHUNK_BYTES = 2**20
PROGRESS_EVERY_BYTES = 64 * 2**20


def stack_images(stack: Stack) -> list[str]:
    """Every image the stack's enabled services run, sorted, each once."""
    return sorted({spec.image for spec in stack.containers.values()})


@dataclass(frozen=True)
class TransferResult:
    file: Path
    images: list[str]
    bytes: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "images": self.images,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
        }


class _Meter:
    """Counts bytes and reports every ``PROGRESS_EVERY_BYTES``."""

    def __init__(self, verb: str, total: int | None, progress: Progress) -> None:
        self.verb = verb
        self.total = total
        self.progress = progress
        self.done = 0
        self._next = PROGRESS_EVERY_BYTES
        self.started = time.perf_counter()

    def add(self, count: int) -> None:
        self.done += count
        if self.done >= self._next:
            self._next += PROGRESS_EVERY_BYTES
            self.report()

    def report(self) -> None:
        rate = self.done / max(time.perf_counter() - self.started, 1e-6) / 2**20
        of = f" of {self.total / 2**20:.0f}" if self.total else ""
        self.progress.note(
            "images", f"{self.verb} {self.done / 2**20:.0f}{of} MiB ({rate:.0f} MiB/s)"
        )


def save_images(
    client: docker.DockerClient, images: list[str], file: Path, progress: Progress
) -> TransferResult:
    """Write ``images`` (shared layers once) into one ``docker save`` tarball at ``file``."""
    import docker.errors  # noqa: PLC0415
    import requests  # noqa: PLC0415 (docker-py's HTTP client)

    if not images:
        raise KbinfraError("no images to save: the stack enables no service")
    present_here(client, images)
    started = time.perf_counter()
    meter = _Meter("saved", None, progress)
    partial = file.with_name(file.name + ".partial")
    try:
        with partial.open("wb") as out:
            for chunk in _image_archive(client, images):
                out.write(chunk)
                meter.add(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(file)
    # requests' errors are OSErrors: caught before the file's own.
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise KbinfraError(
            f"the engine stopped sending the images: {error}",
            where=str(file),
            fix="nothing was written; check the engine (`docker info`) and run it again",
        ) from None
    except OSError as error:
        raise KbinfraError(
            f"cannot write the image archive: {error.strerror or error}",
            where=str(file),
            fix="pass a file path in a folder that exists and has room",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    meter.report()
    return TransferResult(file, images, meter.done, time.perf_counter() - started)


def _image_archive(client: docker.DockerClient, images: list[str]) -> Iterator[bytes]:
    # docker-py's get_image() takes one name; the Engine's GET /images/get takes several
    # and writes each shared layer once, which is what makes one tarball worth having.
    api: Any = client.api
    response = api._get(api._url("/images/get"), params={"names": images}, stream=True)
    yield from api._stream_raw_result(response, chunk_size=CHUNK_BYTES, decode=False)


class _CountingReader:
    """A file object for requests' body: read() by blocks, and a length for Content-Length."""

    def __init__(self, stream: BinaryIO, size: int, meter: _Meter) -> None:
        self._stream = stream
        self._size = size
        self._meter = meter

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(CHUNK_BYTES if size is None or size < 0 else size)
        self._meter.add(len(data))
        return data


def check_archive(file: Path) -> None:
    """Refuse a path that is not a file, before any engine is asked to load it."""
    if not file.is_file():
        state = "is a directory, not an image archive" if file.is_dir() else "no such image archive"
        raise KbinfraError(
            state, where=str(file), fix="pass the tarball written by `kbinfra images save`"
        )


def load_images(client: docker.DockerClient, file: Path, progress: Progress) -> TransferResult:
    """Send the tarball at ``file`` to ``client``'s engine; the images it loaded."""
    check_archive(file)
    size = file.stat().st_size
    started = time.perf_counter()
    meter = _Meter("sent", size, progress)
    loaded: list[str] = []
    with file.open("rb") as stream:
        reader = _CountingReader(stream, size, meter)
        # types-docker leaves load_image unannotated; it yields the engine's JSON messages.
        for item in client.api.load_image(reader):  # type: ignore[no-untyped-call]
            if "error" in item:
                raise KbinfraError(f"the engine refused the archive: {item['error']}")
            text = str(item.get("stream", "")).strip()
            if text.startswith("Loaded image"):
                loaded.append(text.split(": ", 1)[-1])
                progress.note("images", text)
    meter.report()
    return TransferResult(file, loaded, size, time.perf_counter() - started)


@dataclass(frozen=True)
class CopyResult:
    """What one engine was given: the images it lacked (by image ID), and what it had."""

    target: str
    copied: list[str]
    present: list[str]
    bytes: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "copied": self.copied,
            "present": self.present,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
        }


def image_ids(client: docker.DockerClient, images: list[str]) -> dict[str, str | None]:
    """Each reference's image ID on ``client``'s engine, None where it has none."""
    import docker.errors  # noqa: PLC0415

    found: dict[str, str | None] = {}
    for ref in images:
        try:
            found[ref] = str(client.api.inspect_image(ref)["Id"])  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            found[ref] = None
    return found


def present_here(client: docker.DockerClient, images: list[str]) -> dict[str, str]:
    """Each image's ID on this machine's engine; one line naming those it lacks."""
    found = image_ids(client, images)
    missing = [ref for ref in images if found[ref] is None]
    if missing:
        raise KbinfraError(
            f"not on this engine: {', '.join(missing)}",
            fix="pull or build them first (`kbinfra images build` for kbinfra's own)",
        )
    return {ref: image_id for ref, image_id in found.items() if image_id is not None}


def copy_images(
    source: docker.DockerClient,
    target: docker.DockerClient,
    images: list[str],
    progress: Progress,
    *,
    target_name: str,
) -> CopyResult:
    """Give ``target`` every image of ``images`` it lacks, streamed from ``source``.

    An image counts as present only with the same image ID (a tag pointing at another build
    is replaced); what is present is not sent. The missing ones go in one archive, so layers
    they share are sent once, straight from one engine into the other: no file, no copy in
    memory. After the load every copied reference is checked by ID again.
    """
    import docker.errors  # noqa: PLC0415
    import requests  # noqa: PLC0415 (docker-py's HTTP client)

    wanted = present_here(source, images)
    have = image_ids(target, images)
    missing = [ref for ref in images if have[ref] != wanted[ref]]
    present = [ref for ref in images if ref not in missing]
    started = time.perf_counter()
    if not missing:
        return CopyResult(target_name, [], present, 0, 0.0)
    progress.note("images", f"{target_name}: sending {', '.join(missing)}")
    meter = _Meter(f"{target_name}: sent", None, progress)

    def archive() -> Iterator[bytes]:
        for chunk in _image_archive(source, missing):
            meter.add(len(chunk))
            yield chunk

    try:
        # A generator body goes out chunked (no length needed): read from one engine while
        # the other loads it.
        for item in target.api.load_image(archive()):  # type: ignore[no-untyped-call]
            if "error" in item:
                raise KbinfraError(
                    f"the engine refused the images: {item['error']}", where=target_name
                )
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise KbinfraError(
            f"the image copy broke off: {error}",
            where=target_name,
            fix="check both engines (`docker info`) and run it again: only missing images are sent",
        ) from None
    landed = image_ids(target, missing)
    wrong = [ref for ref in missing if landed[ref] != wanted[ref]]
    if wrong:
        raise KbinfraError(
            f"after the copy {', '.join(wrong)} has another image ID than here",
            where=target_name,
            fix="remove the image there (`docker image rm`) and run it again",
        )
    meter.report()
    return CopyResult(target_name, missing, present, meter.done, time.perf_counter() - started)
