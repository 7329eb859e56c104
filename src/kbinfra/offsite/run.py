"""Send finished backups to every offsite repository, list them, fetch one back, check them.

A fetched backup is an ordinary backup folder in a scratch directory: restore and the drill
take it through exactly the checks a local one goes through (manifest, sha256 of every
artifact) before anything of it is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.backup.handler import BackupError
from kbinfra.backup.run import backup_root, list_backups, read_unauthenticated_manifest
from kbinfra.backup.signing import backup_keys
from kbinfra.errors import SpecError
from kbinfra.offsite.repository import SshSettings, backup_tags
from kbinfra.offsite.restic import OffsiteError, Restic, Snapshot
from kbinfra.progress import Progress
from kbinfra.spec.stack import OffsiteRepository

if TYPE_CHECKING:
    from kbinfra.stack import Stack

OFFSITE_PREFIX = "offsite:"
LATEST = "latest"
FETCH_PREFIX = ".offsite-fetch-"


def ssh_settings(known_hosts: Path | None, identity: Path | None) -> SshSettings:
    """kbinfra's SSH rules: --known-hosts, $KBINFRA_KNOWN_HOSTS, ~/.ssh/known_hosts."""
    hosts = (
        known_hosts
        or Path(os.environ.get("KBINFRA_KNOWN_HOSTS") or "~/.ssh/known_hosts").expanduser()
    )
    identity_env = os.environ.get("KBINFRA_SSH_IDENTITY")
    return SshSettings(hosts, identity or (Path(identity_env) if identity_env else None))


def select_repositories(stack: Stack, names: Sequence[str] | None) -> list[OffsiteRepository]:
    """The configured repositories (``--repo NAME`` narrows them); none is an error."""
    configured = list(stack.spec.backup.offsite)
    if not configured:
        raise SpecError(
            "no offsite repository configured",
            where=str(stack.dir / "kbinfra.yaml"),
            fix="add backup.offsite: [{name: ..., repository: ...}] and run `kbinfra init`",
        )
    if not names:
        return configured
    known = {r.name: r for r in configured}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SpecError(
            f"no offsite repository named {unknown[0]!r}",
            fix=f"use one of {', '.join(known)}",
        )
    return [known[n] for n in dict.fromkeys(names)]


def parse_offsite_ref(text: str) -> str | None:
    """``offsite:latest`` / ``offsite:NAME`` → ``latest`` / ``NAME``; anything else None."""
    if not text.startswith(OFFSITE_PREFIX):
        return None
    ref = text.removeprefix(OFFSITE_PREFIX)
    if not ref or "/" in ref or ref.startswith("."):
        raise SpecError(
            f"{text!r} names no offsite backup", fix="use offsite:latest or offsite:BACKUP_NAME"
        )
    return ref


# ---------------------------------------------------------------- upload
@dataclass
class Upload:
    repository: str
    backup: str
    snapshot: str | None = None
    bytes_added: int = 0
    bytes: int = 0
    seconds: float = 0.0
    created_repository: bool = False
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    skipped: bool = False
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "backup": self.backup,
            "snapshot": self.snapshot,
            "bytes": self.bytes,
            "bytes_added": self.bytes_added,
            "seconds": round(self.seconds, 2),
            "created_repository": self.created_repository,
            "retention_removed": self.removed,
            "kept": self.kept,
            "skipped": self.skipped,
            "error": self.error,
        }


def send_backup(
    stack: Stack,
    backup_dir: Path,
    repositories: Sequence[OffsiteRepository],
    ssh: SshSettings,
    progress: Progress,
) -> list[Upload]:
    """Upload one complete backup to each repository, then apply that repository's
    retention. A failing repository is recorded and the others still get the backup."""
    manifest = read_unauthenticated_manifest(backup_dir)  # uploaded as it is
    size = sum(a.size for a in manifest.artifacts)
    uploads = []
    for repository in repositories:
        upload = Upload(repository.name, manifest.name)
        uploads.append(upload)
        started = time.monotonic()
        try:
            restic = Restic(repository, stack.secrets, ssh)
            upload.created_repository = restic.ensure_initialized()
            progress.note("offsite", f"{repository.name}: uploading {manifest.name}")
            with progress.transfer(f"offsite {repository.name}", size) as advance:
                summary = restic.backup(
                    backup_dir,
                    tags=backup_tags(stack.spec.name, manifest.name, size),
                    host=stack.spec.name,
                    advance=advance,
                )
            upload.snapshot = summary.snapshot_id
            upload.bytes_added = summary.data_added
            upload.bytes = summary.bytes_processed
            progress.note("offsite", f"{repository.name}: applying retention")
            upload.removed = restic.forget(stack.spec.name)
            upload.kept = len(restic.snapshots(stack.spec.name))
        except OffsiteError as error:
            upload.error = error.one_line()
        upload.seconds = time.monotonic() - started
    return uploads


def local_backups_newest_first(stack: Stack) -> list[str]:
    complete = [
        f
        for f in list_backups(backup_root(stack), backup_keys(stack.secrets))
        if f.stack == stack.spec.name and f.created_at is not None
    ]
    return [f.name for f in sorted(complete, key=lambda f: (f.created_at, f.name), reverse=True)]


def send_newest_missing(
    stack: Stack,
    repositories: Sequence[OffsiteRepository],
    ssh: SshSettings,
    progress: Progress,
) -> list[Upload]:
    """``--offsite-only``: the newest local backup, to each repository that lacks it."""
    names = local_backups_newest_first(stack)
    if not names:
        raise BackupError(
            f"no complete local backup of stack {stack.spec.name} in {backup_root(stack)}",
            fix="run `kbinfra backup` first",
        )
    newest = names[0]
    uploads: list[Upload] = []
    for repository in repositories:
        try:
            restic = Restic(repository, stack.secrets, ssh)
            restic.ensure_initialized()
            present = {s.backup for s in restic.snapshots(stack.spec.name)}
        except OffsiteError as error:
            uploads.append(Upload(repository.name, newest, error=error.one_line()))
            continue
        if newest in present:
            uploads.append(Upload(repository.name, newest, skipped=True))
        else:
            uploads += send_backup(stack, backup_root(stack) / newest, [repository], ssh, progress)
    return uploads


def failed_uploads(uploads: Sequence[Upload]) -> list[Upload]:
    return [u for u in uploads if u.error is not None]


# ---------------------------------------------------------------- fetch
def pick_snapshot(snapshots: Sequence[Snapshot], ref: str, where: str) -> Snapshot:
    """``latest`` (newest by time) or the snapshot of backup ``ref``."""
    usable = [s for s in snapshots if s.backup]
    chosen = usable if ref == LATEST else [s for s in usable if s.backup == ref]
    if not chosen:
        what = "no kbinfra backup" if ref == LATEST else f"no backup named {ref}"
        raise BackupError(
            f"{what} in this repository",
            where=where,
            fix="see `kbinfra backup list --offsite`",
        )
    return max(chosen, key=lambda s: (s.time, s.id))


@contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A private folder next to the backups (same disk), removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix=FETCH_PREFIX, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                continue
    return total


@contextmanager
def growth_reported(
    folder: Path, advance: Callable[[int], None], interval_s: float = 0.5
) -> Iterator[None]:
    """restic 0.14's restore reports no progress: the bytes landing in ``folder`` are it."""
    stop = threading.Event()
    reported = 0

    def report() -> None:
        nonlocal reported
        now = folder_bytes(folder)
        if now > reported:
            advance(now - reported)
            reported = now

    def watch() -> None:
        while not stop.wait(interval_s):
            report()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        report()


def fetch_snapshot(restic: Restic, snapshot: Snapshot, scratch: Path, progress: Progress) -> Path:
    """Restore one snapshot into ``scratch`` and return its backup folder there."""
    if len(snapshot.paths) != 1 or not snapshot.backup:
        raise BackupError(
            f"snapshot {snapshot.short_id} was not written by kbinfra (one backup folder)",
            where=restic.where,
        )
    progress.note("offsite", f"{restic.repository.name}: fetching {snapshot.backup}")
    landing = scratch / "restic"
    with (
        progress.transfer(f"fetching {snapshot.backup}", snapshot.size) as advance,
        growth_reported(landing, advance),
    ):
        restic.restore(snapshot, landing)
    name = Path(snapshot.paths[0]).name
    # Uploaded from its parent folder as a relative path, the tree holds the folder alone.
    restored = landing / name
    if name != snapshot.backup or not restored.is_dir() or restored.is_symlink():
        raise BackupError(
            f"snapshot {snapshot.short_id} does not hold backup folder {snapshot.backup}",
            where=restic.where,
        )
    folder = scratch / name
    os.rename(restored, folder)
    shutil.rmtree(landing)
    return folder


def fetch_backup(
    stack: Stack,
    ref: str,
    repository_name: str | None,
    *,
    ssh: SshSettings,
    scratch: Path,
    progress: Progress,
) -> tuple[Path, str]:
    """Fetch ``offsite:REF`` of this stack (from ``--repo`` or the first repository that has
    it) into ``scratch``; returns the folder and the repository's name."""
    repositories = select_repositories(stack, [repository_name] if repository_name else None)
    errors: list[str] = []
    for repository in repositories:
        restic = Restic(repository, stack.secrets, ssh)
        try:
            snapshot = pick_snapshot(restic.snapshots(stack.spec.name), ref, restic.where)
        except (OffsiteError, BackupError) as error:
            errors.append(error.one_line())
            continue
        return fetch_snapshot(restic, snapshot, scratch, progress), repository.name
    raise BackupError(f"cannot fetch offsite:{ref}: {'; '.join(errors)}")


# ---------------------------------------------------------------- listing and checking
@dataclass
class RepositoryListing:
    repository: str
    snapshots: list[Snapshot] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "snapshots": [s.as_json() for s in self.snapshots],
            "error": self.error,
        }


def list_offsite(
    stack: Stack, repositories: Sequence[OffsiteRepository], ssh: SshSettings
) -> list[RepositoryListing]:
    listings = []
    for repository in repositories:
        listing = RepositoryListing(repository.name)
        try:
            listing.snapshots = Restic(repository, stack.secrets, ssh).snapshots(stack.spec.name)
        except OffsiteError as error:
            listing.error = error.one_line()
        listings.append(listing)
    return listings


@dataclass
class RepositoryCheck:
    repository: str
    ok: bool
    seconds: float
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


def check_repositories(
    stack: Stack,
    repositories: Sequence[OffsiteRepository],
    ssh: SshSettings,
    read_data_subset: str,
    progress: Progress,
) -> list[RepositoryCheck]:
    """``restic check --read-data-subset``: the repository's structure and that share of
    its pack files read back and decrypted."""
    checks = []
    for repository in repositories:
        started = time.monotonic()
        progress.note("offsite", f"{repository.name}: restic check --read-data-subset "
                      f"{read_data_subset}")  # fmt: skip
        try:
            Restic(repository, stack.secrets, ssh).check(read_data_subset)
        except OffsiteError as error:
            checks.append(
                RepositoryCheck(repository.name, False, time.monotonic() - started, error.what)
            )
            continue
        checks.append(RepositoryCheck(repository.name, True, time.monotonic() - started))
    return checks


def local_sizes(stack: Stack) -> dict[str, int]:
    """Each complete local backup of the stack and its size by manifest."""
    root = backup_root(stack)
    sizes = {}
    for name in local_backups_newest_first(stack):
        try:
            manifest = read_unauthenticated_manifest(root / name)
        except BackupError:
            continue
        sizes[name] = sum(a.size for a in manifest.artifacts)
    return sizes
