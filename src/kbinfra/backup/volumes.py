"""Extra named volumes (``backup.volumes``, e.g. uploaded files): tar streams in and out.

No service owns them, so nothing runs for them: a container of the file-less image is
created (never started) with the volume mounted, and the engine streams its content out
(``get_archive``) into ``volumes/<name>.tar`` or a backup's tar back in (``put_archive``).
The copy is consistent only if nothing writes to the volume meanwhile; uploaded files are
usually written once and never changed, which is the case this is meant for.

Restore extracts over what is there: every backed-up file comes back; files added since
the backup stay and are reported.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kbinfra.backup.handler import BackupError, BackupOutput, Observed, artifact_of
from kbinfra.backup.manifest import Artifact
from kbinfra.backup.streams import (
    CHUNK,
    ChunkReader,
    archive_to,
    ensure_empty_image,
    file_chunks,
    put_stream,
)
from kbinfra.containers import HELPER_PIDS_LIMIT, locked_down
from kbinfra.progress import Progress

if TYPE_CHECKING:
    from docker import APIClient

SERVICE = "volumes"
MOUNT = "/kbinfra-volume"
#: The one top folder of every tar: ``get_archive`` of ``MOUNT`` names members after it, and
#: ``put_archive`` at ``/`` of the helper extracts them into the volume through it.
TOP = MOUNT.lstrip("/")
FILES = "files"
BYTES = "bytes"
#: On a Swarm, the node the volume was backed up on (volumes are node-local): a restore
#: into a volume that no node holds any more creates it there.
NODE_META = "node"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def tar_path(volume: str) -> str:
    if _SAFE.match(volume) and not volume.startswith("."):
        return f"volumes/{volume}.tar"
    return f"volumes/volume-{hashlib.sha256(volume.encode()).hexdigest()[:16]}.tar"


@dataclass(frozen=True)
class Contents:
    files: int
    bytes: int


def tar_contents(handle: IO[bytes]) -> Contents:
    """Regular files and their bytes in a tar stream (read forward only)."""
    files = size = 0
    with tarfile.open(fileobj=handle, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                files += 1
                size += member.size
    return Contents(files, size)


def _inside_top(path: str) -> bool:
    return path == TOP or path.startswith(TOP + "/")


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not reach ``put_archive``: it would land outside the volume, link
    out of it, or create a device; None for a file, folder or link that stays inside."""
    name = member.name
    normal = posixpath.normpath(name)
    if name.startswith("/") or ".." in name.split("/") or not _inside_top(normal):
        return f"member {name!r} is not inside the volume"
    if member.issym():
        if member.linkname.startswith("/"):
            return f"symlink {name!r} points to the absolute path {member.linkname!r}"
        target = posixpath.normpath(posixpath.join(posixpath.dirname(normal), member.linkname))
        if not _inside_top(target):
            return f"symlink {name!r} points outside the volume ({member.linkname!r})"
    elif member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/") or not _inside_top(target):
            return f"hard link {name!r} points outside the volume ({target!r})"
    elif not (member.isreg() or member.isdir()):
        return f"member {name!r} is a device, FIFO or other special file"
    return None


def tar_problem(handle: IO[bytes]) -> str | None:
    """The first member of a tar stream that must not be restored, or None (read forward)."""
    try:
        with tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                problem = member_problem(member)
                if problem is not None:
                    return problem
    except tarfile.TarError as error:
        return f"not a readable tar: {error}"
    return None


def check_tar(path: Path, artifact_path: str) -> None:
    """Refuse a volume tar with a member :func:`member_problem` refuses, naming it."""
    with path.open("rb") as handle:
        problem = tar_problem(handle)
    if problem is not None:
        raise BackupError(
            f"{artifact_path}: {problem}",
            where=str(path.parent.parent),
            fix="nothing was changed; use another backup",
        )


def volumes_to_restore(artifacts: Iterable[Artifact], configured: Iterable[str]) -> dict[str, str]:
    """Each volume tar of the backup and the volume of the stack's ``backup.volumes`` it
    restores into, matched by its file name: the manifest's ``meta.volume`` is never used.

    A tar for a volume the stack does not list is refused before anything is touched.
    """
    by_path = {tar_path(volume): volume for volume in configured}
    targets: dict[str, str] = {}
    for artifact in artifacts:
        volume = by_path.get(artifact.path)
        if volume is None:
            raise BackupError(
                f"the backup holds {artifact.path}, a volume that backup.volumes of this stack "
                "does not list",
                fix="add the volume to backup.volumes in kbinfra.yaml, or leave volumes out "
                "with --only",
            )
        targets[artifact.path] = volume
    return targets


@contextmanager
def _mounted(api: APIClient, volume: str, label: str) -> Iterator[str]:
    """A created, never started container with ``volume`` at ``MOUNT``."""
    import docker.errors  # noqa: PLC0415
    from docker.types import Mount  # noqa: PLC0415

    try:
        api.inspect_volume(volume)
    except docker.errors.NotFound:
        raise BackupError(
            f"volume {volume} does not exist",
            fix="create it, or remove it from backup.volumes in kbinfra.yaml",
        ) from None
    image = ensure_empty_image(api)
    # Never started (the image has no files): locked down all the same, like every container.
    # Its root stays writable, the one exception: a restore extracts the tar at "/" so that
    # its members, all under TOP, land in the volume, and the engine refuses any extraction
    # at "/" of a read-only container. No process ever runs in it to write there.
    host_config = api.create_host_config(
        mounts=[Mount(target=MOUNT, source=volume, type="volume")],
        network_mode="none",
        **locked_down(pids_limit=HELPER_PIDS_LIMIT, read_only=False),
    )
    created = api.create_container(
        image,
        command=["none"],
        host_config=host_config,
        network_disabled=True,
        labels={"kbinfra.helper": label},
        name=f"kbinfra-volume-{uuid.uuid4().hex[:12]}",
    )
    try:
        yield created["Id"]
    finally:
        api.remove_container(created["Id"], force=True)


class VolumeBackup:
    """Backup, restore and counting of named volumes that no service module owns."""

    service = SERVICE

    def backup(
        self, api: APIClient, volume: str, out: BackupOutput, *, node: str | None = None
    ) -> Artifact:
        """``node``: on a Swarm, the node whose engine ``api`` is (recorded in the meta)."""
        path = tar_path(volume)
        where = f" on {node}" if node else ""
        out.progress.note(SERVICE, f"copying volume {volume}{where}")
        with _mounted(api, volume, "backup") as helper, out.file(path) as handle:
            archive_to(api, helper, MOUNT, handle.write)
        with (out.root / path).open("rb") as written:
            contents = tar_contents(written)
        return artifact_of(
            handle,
            path,
            SERVICE,
            "volume_tar",
            counts={FILES: contents.files, BYTES: contents.bytes},
            meta={"volume": volume, **({NODE_META: node} if node else {})},
        )

    def restore(
        self, api: APIClient, volume: str, artifact: Artifact, backup_dir: Path, progress: Progress
    ) -> None:
        check_tar(backup_dir / artifact.path, artifact.path)  # again, right before it is used
        with (
            _mounted(api, volume, "restore") as helper,
            progress.transfer(f"{artifact.path} → {volume}", artifact.size) as advance,
        ):
            put_stream(api, helper, "/", file_chunks(backup_dir / artifact.path, advance))

    def observe(self, api: APIClient, volume: str) -> Observed:
        with _mounted(api, volume, "count") as helper:
            chunks, _ = api.get_archive(helper, MOUNT, chunk_size=CHUNK)
            contents = tar_contents(ChunkReader(iter(chunks)))  # type: ignore[arg-type]
        return Observed(counts={FILES: contents.files, BYTES: contents.bytes})


VOLUMES = VolumeBackup()
