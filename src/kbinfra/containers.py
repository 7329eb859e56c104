"""What is desired of and observed about a stack's containers. Shared by the planner
(``plan``) and the engine (``targets.engine``); pure data, no I/O. Their names and labels
are in :mod:`kbinfra.names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kbinfra.names import LABEL_CONFIG_HASH, LABEL_HASH_PREFIX, LABEL_SERVICE, LABEL_STACK
from kbinfra.service import ContainerSpec, FileMount, RenderedFile

#: Every container kbinfra creates: all capabilities dropped (a service adds back the few
#: its entrypoint needs, ``ContainerSpec.cap_add``), and no privilege gained by exec (setuid
#: binaries, file capabilities).
DROPPED_CAPABILITIES = ("ALL",)
SECURITY_OPTIONS = ("no-new-privileges:true",)


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
        if "(healthy)" in self.status:
            return "healthy"
        if "(unhealthy)" in self.status:
            return "unhealthy"
        if "(health: starting)" in self.status:
            return "starting"
        return None

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
