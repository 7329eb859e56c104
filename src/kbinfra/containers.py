"""What is desired of and observed about a stack's containers. Shared by the planner
(``plan``) and the engine (``targets.engine``); pure data, no I/O. Their names and labels
are in :mod:`kbinfra.names`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kbinfra.container_status import exit_code_of, health_of
from kbinfra.names import LABEL_CONFIG_HASH, LABEL_HASH_PREFIX, LABEL_SERVICE, LABEL_STACK
from kbinfra.service import ContainerSpec, FileMount, RenderedFile, TmpfsMount

#: Every container kbinfra creates: all capabilities dropped (a service adds back the few
#: its entrypoint needs, ``ContainerSpec.cap_add``), and no privilege gained by exec (setuid
#: binaries, file capabilities).
DROPPED_CAPABILITIES = ("ALL",)
SECURITY_OPTIONS = ("no-new-privileges:true",)
#: Processes a helper container may run (the backup streams, the compose export's copy).
HELPER_PIDS_LIMIT = 64
#: What the one-shot that hands a kept data volume to its service's user needs: chown files
#: of others, and enter their folders (PostgreSQL's PGDATA is 0700) to find them.
CLAIM_CAPABILITIES = ("CHOWN", "DAC_READ_SEARCH")


def claim_command(owner: str, targets: Sequence[str]) -> list[str]:
    """``find`` every file under ``targets`` that ``owner`` (``uid:gid``) does not own, and
    chown it (``-h``: a link itself, never where it points)."""
    uid, gid = owner.split(":")
    return [
        "find", *targets,
        "(", "!", "-user", uid, "-o", "!", "-group", gid, ")",
        "-exec", "chown", "-h", f"{uid}:{gid}", "{}", "+",
    ]  # fmt: skip


def locked_down(
    *,
    pids_limit: int,
    cap_add: Sequence[str] = (),
    read_only: bool = True,
    tmpfs: Sequence[TmpfsMount] = (),
) -> dict[str, Any]:
    """The lock-down every container kbinfra creates carries, as keywords of docker-py's
    ``create_host_config``: the one place these options are built (services, the backup
    and restore helpers, the lock, the image builder's containers)."""
    return {
        "cap_drop": list(DROPPED_CAPABILITIES),
        "cap_add": list(cap_add) or None,
        "security_opt": list(SECURITY_OPTIONS),
        "pids_limit": pids_limit,
        "read_only": read_only,
        "tmpfs": {t.target: t.docker_options() for t in tmpfs} or None,
    }


def config_folders(targets: Iterable[str]) -> list[str]:
    """The folders a container's rendered files are delivered in: each file's folder, less
    those inside another. Each is a volume of that container alone (its root file system is
    read-only), filled before it starts and removed with it: a recreated container never
    shares its files with the one it replaces, so a rollback keeps the old files."""
    folders: list[str] = []
    for folder in sorted({posixpath.dirname(target) for target in targets}):
        if folder == "/" or not folder.startswith("/"):
            raise ValueError(f"a file is delivered into a folder of its own, not {folder!r}")
        if not any(folder == top or folder.startswith(top + "/") for top in folders):
            folders.append(folder)
    return folders


@dataclass(frozen=True)
class MountedFile:
    """A rendered file and where it goes in a container."""

    mount: FileMount
    file: RenderedFile

    @property
    def data(self) -> bytes:
        return self.file.text.encode("utf-8")


@dataclass(frozen=True)
class DesiredService:
    """One service's container as it should be, with the hashes that identify it."""

    service: str
    container: str
    stage: str
    spec: ContainerSpec
    files: tuple[MountedFile, ...]
    parts: Mapping[str, str]  # part name -> sha256 of that part
    config_hash: str

    def labels(self, stack: str) -> dict[str, str]:
        labels = {
            LABEL_STACK: stack,
            LABEL_SERVICE: self.service,
            LABEL_CONFIG_HASH: self.config_hash,
        }
        labels.update({LABEL_HASH_PREFIX + part: digest for part, digest in self.parts.items()})
        return labels


@dataclass(frozen=True)
class ObservedContainer:
    """What the Docker Engine reports about one container (one list call gives them all)."""

    id: str
    name: str
    state: str  # created, running, restarting, exited, paused, dead
    status: str  # "Up 5 minutes (healthy)"
    image: str
    image_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()

    @property
    def service(self) -> str | None:
        return self.labels.get(LABEL_SERVICE)

    @property
    def health(self) -> str | None:
        """healthy, unhealthy, starting, or None when the container has no health check."""
        return health_of(self.status)

    @property
    def exit_code(self) -> int | None:
        """The exit code of an exited container (``Exited (0) 2 minutes ago``), else None."""
        return exit_code_of(self.status)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "status": self.status,
            "health": self.health,
            "image": self.image,
            "image_id": self.image_id,
            "ports": list(self.ports),
        }


@dataclass(frozen=True)
class Facts:
    """Everything observed on a target in one pass."""

    containers: tuple[ObservedContainer, ...] = ()
    images: Mapping[str, str] = field(default_factory=dict)  # image reference -> image id
    deployed_files: Mapping[str, str] = field(default_factory=dict)  # path -> sha256

    def container(self, name: str) -> ObservedContainer | None:
        return next((c for c in self.containers if c.name == name), None)
