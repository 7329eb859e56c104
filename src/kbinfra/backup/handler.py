"""What a service's backup module implements, and what it is given to do it.

Each data service has one module in this package, named after the service
(``postgres.py`` for ``postgres``), defining ``HANDLER``: a :class:`BackupHandler`. It
backs up from, restores into and counts the content of an :class:`Instance` — the stack's
own container, or a drill's throwaway one; the handler cannot tell them apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kbinfra.backup.manifest import Artifact, ArtifactKind, ServiceRecord
from kbinfra.backup.streams import HashingFile, reach
from kbinfra.errors import KbinfraError
from kbinfra.progress import Progress

if TYPE_CHECKING:
    from docker import APIClient

    from kbinfra.containers import DesiredService
    from kbinfra.service import ServiceContext
    from kbinfra.stack import Stack
    from kbinfra.targets.base import Target
    from kbinfra.targets.engine import Engine


class BackupError(KbinfraError):
    """A backup, restore or drill step that failed; nothing half-done is left looking good."""


@dataclass
class Instance:
    """One running container of a data service, as the stack deploys it."""

    service: str
    stack: Stack
    target: Target
    engine: Engine
    container_id: str
    desired: DesiredService  # its image, volumes (as mounted) and rendered files
    drill: bool = False

    @property
    def api(self) -> APIClient:
        return self.engine.api

    @property
    def name(self) -> str:
        return self.desired.container

    @property
    def ctx(self) -> ServiceContext:
        return self.stack.contexts[self.service]

    @property
    def settings(self) -> Any:
        return self.ctx.settings

    @property
    def secrets(self) -> Mapping[str, str]:
        return self.stack.secrets

    def reach(self, port: int) -> AbstractContextManager[tuple[str, int]]:
        """A local address of the container's ``port`` (published loopback or network IP)."""
        return reach(self.target, self.api, self.container_id, port)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The service's container stopped for the block (a restore replaces the data on its
        volumes), started again after it, also on an error."""
        self.engine.stop(self.container_id, self.desired.spec.stop_timeout_s)
        try:
            yield
        finally:
            self.engine.start(self.container_id)

    def file_text(self, path: str) -> str | None:
        """A rendered file the container mounts, by its path in ``rendered/``."""
        for mounted in self.desired.files:
            if mounted.file.path == path:
                return mounted.file.text
        return None

    def record(self, version: str, meta: Mapping[str, Any] | None = None) -> ServiceRecord:
        info = self.engine.inspect(self.container_id)
        return ServiceRecord(
            image=self.desired.spec.image,
            image_id=str(info.get("Image", "")),
            version=version,
            meta=dict(meta or {}),
        )


@dataclass
class BackupOutput:
    """The ``.partial`` directory a backup writes into."""

    root: Path
    progress: Progress
    include_secrets: bool = False

    @contextmanager
    def file(
        self, path: str, total: int | None = None, *, quiet: bool = False
    ) -> Iterator[HashingFile]:
        """A new artifact file, hashed while written, with a progress bar unless ``quiet``."""
        if quiet:
            with HashingFile(self.root / path) as handle:
                yield handle
            return
        with (
            self.progress.transfer(path, total) as advance,
            HashingFile(self.root / path, advance) as handle,
        ):
            yield handle


def artifact_of(
    handle: HashingFile,
    path: str,
    service: str,
    kind: ArtifactKind,
    **fields: Any,
) -> Artifact:
    return Artifact(
        path=path, service=service, kind=kind, size=handle.size, sha256=handle.sha256, **fields
    )


@dataclass
class ServiceBackup:
    record: ServiceRecord
    artifacts: list[Artifact]
    notes: list[str] = field(default_factory=list)


@dataclass
class Observed:
    """What a restored artifact's content is now: counts and sample digests."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)


class BackupHandler(ABC):
    """Backup, restore and counting for one service."""

    service: ClassVar[str]
    #: The restore stops and starts the container: it goes first, so that its start-up
    #: overlaps with the other services' restores.
    restarts_container: ClassVar[bool] = False
    #: What restore reads of each kind of artifact's ``meta``, and the kinds it needs one of:
    #: a manifest without them is refused before any service is touched.
    required_meta: ClassVar[Mapping[ArtifactKind, tuple[str, ...]]] = {}
    required_kinds: ClassVar[tuple[ArtifactKind, ...]] = ()
    #: Kinds of artifact whose content is not counted after a restore (roles, say).
    unchecked_kinds: ClassVar[frozenset[ArtifactKind]] = frozenset()

    def manifest_problem(
        self, record: ServiceRecord | None, artifacts: list[Artifact]
    ) -> str | None:
        """What the manifest lacks that this handler's restore needs, or None."""
        if record is None:
            return f"{self.service} has no entry in the manifest's services"
        for kind in self.required_kinds:
            if not any(a.kind == kind for a in artifacts):
                return f"{self.service} has no {kind} artifact"
        for artifact in artifacts:
            for name in self.required_meta.get(artifact.kind, ()):
                if name not in artifact.meta:
                    return f"{artifact.path} lacks meta.{name}"
        return None

    def restorable(
        self, ctx: ServiceContext, artifacts: list[Artifact], backup_dir: Path
    ) -> tuple[list[Artifact], list[str]]:
        """The artifacts a restore into the stack's service puts back, and notes on the others;
        a :class:`BackupError` when the backup cannot be restored into it. Decided before any
        service is touched."""
        return artifacts, []

    @abstractmethod
    def version(self, instance: Instance) -> str:
        """The version of the server running in the instance."""

    @abstractmethod
    def incompatibility(self, backup_version: str, current_version: str) -> str | None:
        """Why a backup of ``backup_version`` cannot be restored onto ``current_version``."""

    def samples_comparable(self, backup_version: str, current_version: str) -> bool:
        """Whether sample digests taken on ``backup_version`` can match ``current_version``."""
        return True

    @abstractmethod
    def backup(self, instance: Instance, out: BackupOutput) -> ServiceBackup:
        """Write the service's artifacts under ``out.root/<service>/``."""

    @abstractmethod
    def restore(
        self,
        instance: Instance,
        record: ServiceRecord,
        artifacts: list[Artifact],
        backup_dir: Path,
        progress: Progress,
    ) -> list[str]:
        """Put the artifacts back (already verified); notes for the user."""

    @abstractmethod
    def observe(
        self, instance: Instance, record: ServiceRecord, artifacts: list[Artifact]
    ) -> dict[str, Observed]:
        """The content now, per artifact path, to compare with the manifest."""
