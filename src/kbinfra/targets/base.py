"""The one small interface every target offers: a Docker client and a file store."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

from kbinfra.capacity import EngineCapacity

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.probing.probe import ProbeContext
    from kbinfra.progress import Progress
    from kbinfra.service import Service
    from kbinfra.stack import Stack
    from kbinfra.targets.engine import EngineReads

TEMP_PREFIX = ".kbinfra-tmp-"
#: kbinfra's own records in the deployed folder (releases): not deployed files, so
#: ``FileStore.hashes()`` leaves them out and the plan never counts them as leftovers.
RECORDS_DIR = ".kbinfra"


class FileStore(ABC):
    """A folder on the target holding the deployed copy of the rendered stack."""

    #: Where the folder is, for messages: a local path or ``user@host:/path``.
    location: str

    @abstractmethod
    def hashes(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        """sha256 of files, in one call: ``paths`` (missing ones left out), or every
        deployed file (not those under :data:`RECORDS_DIR`)."""

    @abstractmethod
    def read(self, path: str) -> bytes | None:
        """A file's content, or None when it does not exist."""

    @abstractmethod
    def put(self, path: str, data: bytes, mode: int) -> None:
        """Write ``path`` atomically (temp file + rename) with ``mode`` from the first byte."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete ``path`` if it exists."""

    @abstractmethod
    def remove_folder_if_empty(self) -> None:
        """Delete the folder itself when nothing is left in it (``destroy --delete-data``)."""

    def modes(self, paths: Iterable[str]) -> dict[str, int]:
        """Permission bits (``0o600``…) of ``paths``; missing files are left out."""
        raise NotImplementedError(f"{type(self).__name__} cannot read file modes")


class Target(ABC):
    """Where a stack runs: the local Docker Engine or one reached over SSH."""

    #: ``local`` or ``ssh://user@host:port``, for messages.
    name: str
    #: ``engine`` (one Docker Engine: local or over SSH) or ``swarm``: what a command asks
    #: once to choose its path.
    kind: ClassVar[str] = "engine"

    @abstractmethod
    def docker_client(self) -> DockerClient:
        """A connected docker SDK client (made once, then reused)."""

    @abstractmethod
    def file_store(self, stack: str) -> FileStore:
        """The deployed stack folder of ``stack`` on this target."""

    def engine_reads(self) -> EngineReads:
        """The engine reads a no-op apply makes (info, containers, images, the lock), through
        the docker client unless the target has a cheaper way."""
        from kbinfra.targets.engine import DockerPyReads  # noqa: PLC0415

        return DockerPyReads(self.docker_client().api)

    def engine_capacity(self) -> EngineCapacity:
        """The engine's CPUs and memory, from one ``docker info``."""
        return EngineCapacity.from_info(self.engine_reads().info(), where=self.name)

    @contextmanager
    def tunnel(self, port: int, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        """A ``(host, port)`` on this machine that reaches ``host:port`` as the target sees it.

        Internal services publish on the target's loopback only; checks, benchmarks and
        backups connect to them through this. On the local target it is the address itself.
        """
        yield host, port

    def open_engine(self) -> None:
        """Connect before any work, so an unreachable target is one error line, not one
        failed row per check."""
        self.docker_client()

    def probe_context(
        self, stack: Stack, service: Service, *, progress: Progress | None = None
    ) -> ProbeContext:
        """What ``check`` and ``bench`` give a service's probes to reach it on this target:
        its published ports through :meth:`tunnel`, its container on this engine."""
        from kbinfra.probing.probe import ProbeContext  # noqa: PLC0415
        from kbinfra.progress import SILENT  # noqa: PLC0415

        return ProbeContext(stack, service, self, progress=progress or SILENT)

    def close(self) -> None:  # noqa: B027 (a default no-op: local targets hold nothing)
        """Release connections."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
