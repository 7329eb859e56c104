"""Back up, restore and drill a whole stack: the sequence around the per-service handlers.

* ``run_backup`` writes ``<root>/<name>.partial``, and renames it to ``<name>`` only once
  every artifact was re-read from disk and matched its hash and the manifest is written.
  A crash leaves a ``.partial``, which nothing treats as a backup.
* ``run_restore`` verifies every checksum and every service version before it changes
  anything, takes a safety backup, restores, waits for the health checks and compares the
  content with the manifest.
* ``run_drill`` restores into throwaway containers (own network and volumes, no published
  ports), compares, and removes them: what a nightly cron runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra import __version__
from kbinfra.backup import handler_for
from kbinfra.backup.handler import (
    BackupError,
    BackupHandler,
    BackupOutput,
    Instance,
    Observed,
)
from kbinfra.backup.manifest import (
    MANIFEST_FILE,
    MANIFEST_SIGNATURE_FILE,
    MANIFEST_SUM_FILE,
    OWNER_FILE,
    PARTIAL_SUFFIX,
    Artifact,
    Difference,
    Manifest,
    ManifestError,
    backup_name,
    compare_counts,
    compare_samples,
    hash_problems,
    is_partial,
    manifest_sum_line,
    parse_manifest,
    plan_verification,
)
from kbinfra.backup.retention import Found, RetentionPlan, retention_plan
from kbinfra.backup.signing import (
    BackupKeys,
    UnauthenticatedBackupError,
    backup_keys,
    check_signature,
    signature_line,
)
from kbinfra.backup.stackfiles import backup_stack_files
from kbinfra.backup.streams import fsync_dir, sha256_file
from kbinfra.backup.volumes import NODE_META as VOLUME_NODE_META
from kbinfra.backup.volumes import SERVICE as VOLUMES_SERVICE
from kbinfra.backup.volumes import VOLUMES, check_tar, volumes_to_restore
from kbinfra.errors import KbinfraError
from kbinfra.progress import Progress
from kbinfra.secrets import BACKUP_KEY_SECRET, ensure_secrets
from kbinfra.service import ContainerSpec, VolumeMount

if TYPE_CHECKING:
    from kbinfra.containers import DesiredService, ObservedContainer
    from kbinfra.stack import Stack
    from kbinfra.targets.base import Target
    from kbinfra.targets.engine import Engine
    from kbinfra.targets.swarm import SwarmTarget


LATEST = "latest"


class DifferencesError(KbinfraError):
    """Restored content does not match the backup: exit 1, like a failed health check."""

    exit_code = 1


# ---------------------------------------------------------------- pure helpers
def backup_root(stack: Stack) -> Path:
    root = Path(stack.spec.backup.root).expanduser()
    return root if root.is_absolute() else stack.dir / root


def drill_spec(spec: ContainerSpec, stack: str, drill: str) -> ContainerSpec:
    """The same container in the drill's own world: no published ports, its own volumes."""
    volumes = [
        VolumeMount(
            volume=drill + v.volume.removeprefix(stack) if v.volume.startswith(stack) else
            f"{drill}-{v.volume}",
            target=v.target,
            data=v.data,
        )
        for v in spec.volumes
    ]  # fmt: skip
    return spec._replace(ports=(), volumes=volumes, depends_on=())


def drill_volume(drill: str, volume: str) -> str:
    return f"{drill}-volume-{volume}"


def select_services(available: Sequence[str], only: Sequence[str] | None) -> list[str]:
    """The services to restore, in the backup's order; unknown names are an error."""
    if not only:
        return list(available)
    unknown = sorted(set(only) - set(available))
    if unknown:
        raise BackupError(
            f"the backup holds no {', '.join(unknown)}",
            fix=f"choose among: {', '.join(available) or 'nothing'}",
        )
    return [s for s in available if s in only]


def summarize(counts: Mapping[str, int], kind: str) -> str:
    """``12 tables, 5000 rows`` / ``5000 points`` / ``3 dbs, 1234 keys`` / ``42 files``."""
    total = sum(counts.values())
    if kind == "pg_dump":
        return f"{len(counts)} tables, {total} rows"
    if kind == "redis_rdb":
        return f"{len(counts)} dbs, {total} keys"
    if kind == "qdrant_snapshot":
        return f"{counts.get('points', 0)} points"
    if kind == "volume_tar":
        return f"{counts.get('files', 0)} files, {counts.get('bytes', 0)} bytes"
    return ""


@dataclass
class ArtifactCheck:
    """One artifact after a restore or drill: expected vs found, and what differs."""

    service: str
    path: str
    expected: str
    found: str
    differences: list[Difference] = field(default_factory=list)
    warnings: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "path": self.path,
            "expected": self.expected,
            "found": self.found,
            "ok": self.ok,
            "differences": [d.as_json() for d in self.differences],
            "warnings": [d.as_json() for d in self.warnings],
        }


def check_artifact(
    artifact: Artifact,
    observed: Observed,
    *,
    strict: bool,
    with_samples: bool,
) -> ArtifactCheck:
    """Compare one artifact's manifest entry with what is there now.

    ``strict`` (a drill into empty containers): anything not in the backup is a failure.
    Otherwise (a restore into the live store) it is a warning: ``pg_restore --clean`` keeps
    tables the backup did not have, Qdrant keeps other collections, a volume keeps files.
    """
    differences = compare_counts(artifact, observed.counts)
    if artifact.kind == "volume_tar" and not strict:
        # Restore extracts over the volume: more files than the backup had are not a loss.
        kept = [d for d in differences if d.kind == "different" and int(d.actual) > int(d.expected)]
        differences = [d for d in differences if d not in kept]
        warnings = kept
    else:
        warnings = []
    if not strict:
        warnings += [d for d in differences if d.kind == "extra"]
        differences = [d for d in differences if d.kind != "extra"]
    if with_samples:
        differences += compare_samples(artifact, observed.samples)
    return ArtifactCheck(
        artifact.service,
        artifact.path,
        summarize(artifact.counts, artifact.kind),
        summarize(observed.counts, artifact.kind),
        differences,
        warnings,
    )


# ---------------------------------------------------------------- results
@dataclass
class BackupResult:
    path: Path
    manifest: Manifest
    seconds: float
    retention: RetentionPlan | None = None

    @property
    def bytes(self) -> int:
        return sum(a.size for a in self.manifest.artifacts)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.manifest.name,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "mb_per_s": round(self.bytes / 1e6 / self.seconds, 2) if self.seconds else None,
            "manifest": self.manifest.model_dump(mode="json"),
            "retention": self.retention.as_json() if self.retention else None,
        }


@dataclass
class RestoreResult:
    """What a restore or drill found, artifact by artifact."""

    backup: Path
    stack: str
    target: str
    checks: list[ArtifactCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    safety_backup: Path | None = None
    seconds: float = 0.0
    #: False: an unsigned backup, used because the user passed ``--allow-unsigned``.
    signed: bool = True

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def differences(self) -> list[Difference]:
        return [d for c in self.checks for d in c.differences]

    def as_json(self) -> dict[str, Any]:
        return {
            "backup": str(self.backup),
            "stack": self.stack,
            "target": self.target,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "safety_backup": str(self.safety_backup) if self.safety_backup else None,
            "signed": self.signed,
            "checks": [c.as_json() for c in self.checks],
            "notes": self.notes,
        }


# ---------------------------------------------------------------- reading backups
def _read_backup(backup_dir: Path) -> tuple[bytes, str | None, str]:
    """The manifest's bytes, its signature (None: absent) and its recorded sum."""
    if is_partial(backup_dir.name) or (backup_dir / OWNER_FILE).exists():
        raise BackupError(
            "this backup is unfinished (.partial): it was interrupted or is still being written",
            where=str(backup_dir),
            fix="use a complete backup (a directory without .partial)",
        )
    manifest_file = backup_dir / MANIFEST_FILE
    if not manifest_file.is_file():
        raise BackupError(
            f"not a kbinfra backup: no {MANIFEST_FILE}",
            where=str(backup_dir),
            fix="pass a directory written by `kbinfra backup`",
        )
    signature_file = backup_dir / MANIFEST_SIGNATURE_FILE
    sum_file = backup_dir / MANIFEST_SUM_FILE
    try:
        data = manifest_file.read_bytes()
        signature = (
            signature_file.read_text(encoding="ascii", errors="replace")
            if signature_file.is_file()
            else None
        )
        recorded = (
            sum_file.read_text(encoding="ascii", errors="replace") if sum_file.exists() else ""
        )
    except OSError as error:
        raise BackupError(
            f"cannot read the backup's manifest: {error.strerror or error}",
            where=str(error.filename or backup_dir),
            fix="check the backup folder's permissions (run as the user who made it)",
        ) from None
    return data, signature, recorded


def _parse(backup_dir: Path, data: bytes, recorded: str) -> Manifest:
    try:
        return parse_manifest(data, recorded)
    except ManifestError as error:
        raise BackupError(
            str(error), where=str(backup_dir), fix="this backup cannot be trusted; use another"
        ) from None


def load_backup(
    backup_dir: Path, keys: BackupKeys, *, allow_unsigned: bool = False
) -> tuple[Manifest, bool]:
    """The manifest of a complete backup, authenticated by ``keys``, and whether it is signed.

    A ``.partial``, a folder without a manifest, a manifest that does not match its sum, and
    one signed by no key of ``keys`` are refused; an unsigned one only without
    ``allow_unsigned``. Nothing else of the backup is read before this.
    """
    data, signature, recorded = _read_backup(backup_dir)
    signed = check_signature(
        data, signature, keys, allow_unsigned=allow_unsigned, where=str(backup_dir)
    )
    return _parse(backup_dir, data, recorded), signed


def read_unauthenticated_manifest(backup_dir: Path) -> Manifest:
    """The manifest as written, checked against its sum only: for a size or a name to show,
    or a folder to upload as it is. Never for anything restore or the drill use: they read
    backups through :func:`load_backup`."""
    data, _, recorded = _read_backup(backup_dir)
    return _parse(backup_dir, data, recorded)


def _size(backup_dir: Path, path: str) -> int | None:
    file = backup_dir / path
    try:
        if not file.resolve().is_relative_to(backup_dir.resolve()) or not file.is_file():
            return None
        return file.stat().st_size
    except OSError:
        return None


def verify_backup(backup_dir: Path, manifest: Manifest, progress: Progress) -> None:
    """Every artifact present, of its size and sha256; else an error naming the file."""
    sizes = {a.path: _size(backup_dir, a.path) for a in manifest.artifacts}
    plan = plan_verification(manifest.artifacts, sizes)
    total = sum(a.size for a in plan.to_hash)
    hashes: dict[str, str] = {}
    with progress.transfer("verifying checksums", total) as advance:
        for artifact in plan.to_hash:
            hashes[artifact.path] = sha256_file(backup_dir / artifact.path, advance)
    problems = [*plan.problems, *hash_problems(plan.to_hash, hashes)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupError(
            f"{problems[0].describe()}{more}",
            where=str(backup_dir),
            fix="nothing was changed; use another backup",
        )


def list_backups(root: Path, keys: BackupKeys) -> list[Found]:
    """The folders of ``root``; only backups signed by ``keys`` count as backups (retention
    and ``latest`` never act on one that anyone with write access to ``root`` could forge)."""
    found: list[Found] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if is_partial(entry.name):
            found.append(Found(entry.name, None, None, partial=True))
            continue
        try:
            manifest, _ = load_backup(entry, keys)
        except (BackupError, UnauthenticatedBackupError):
            found.append(Found(entry.name, None, None))
            continue
        found.append(Found(entry.name, manifest.stack, manifest.created_at))
    return found


def resolve_backup(stack: Stack, backup_dir: Path) -> Path:
    """``latest`` (when no such folder exists) is the newest complete backup of the stack in
    its backup root, by manifest date; any other path is itself."""
    if str(backup_dir) != LATEST or backup_dir.exists():
        return backup_dir
    root = backup_root(stack)
    complete = [
        f
        for f in list_backups(root, backup_keys(stack.secrets))
        if f.stack == stack.spec.name and f.created_at is not None
    ]
    if not complete:
        raise BackupError(
            f"no complete backup of stack {stack.spec.name} in {root} (only signed ones count)",
            fix="run `kbinfra backup` first, or pass the backup's folder",
        )
    newest = max(complete, key=lambda f: (f.created_at, f.name))
    return root / newest.name


def apply_retention(
    stack: Stack, root: Path, now: dt.datetime, signing: str | None = None
) -> RetentionPlan:
    """Delete what retention does not keep; only backups signed by the stack's keys (or by
    ``signing``, a key generated just now) count."""
    settings = stack.spec.backup
    keys = backup_keys(stack.secrets)
    if signing is not None and signing not in keys.verifying:
        keys = BackupKeys(signing, keys.verifying)
    plan = retention_plan(
        list_backups(root, keys),
        stack=stack.spec.name,
        keep_last=settings.keep_last,
        keep_days=settings.keep_days,
        now=now,
    )
    for name in plan.delete:
        shutil.rmtree(root / name)
    return plan


# ---------------------------------------------------------------- instances
def data_handlers(stack: Stack) -> dict[str, BackupHandler]:
    """Enabled services that hold data, each with its backup module, in deployment order."""
    found = {}
    for name in stack.services:
        handler = handler_for(name)
        if handler is not None:
            found[name] = handler
    return found


def _stack_instances(
    stack: Stack, target: Target, engine: Engine, services: Iterable[str]
) -> dict[str, Instance]:
    from kbinfra.plan import desired_services  # noqa: PLC0415

    desired = desired_services(stack, stack.rendered)
    facts = engine.observe()
    instances = {}
    for service in services:
        container = facts.container(desired[service].container)
        if container is None or container.state != "running":
            state = container.state if container is not None else "missing"
            raise BackupError(
                f"{service} is not running (container {desired[service].container}: {state})",
                where=target.name,
                fix="run `kbinfra apply` first",
            )
        instances[service] = Instance(
            service, stack, target, engine, container.id, desired[service]
        )
    return instances


def writers_to_pause(
    stack: Stack, containers: Iterable[ObservedContainer]
) -> list[ObservedContainer]:
    """The running containers of the services that write to the stores on their own
    (``Service.paused_during_restore``: the app's API and workers), in the engine's order."""
    writers = {name for name, service in stack.services.items() if service.paused_during_restore}
    return [c for c in containers if c.service in writers and c.state == "running"]


#: How long an unpaused container may take to pass its health check again: Docker keeps
#: running the check while a container is paused, so a long restore leaves it "unhealthy"
#: until its next check passes.
UNPAUSED_HEALTHY_TIMEOUT_S = 120.0


def wait_healthy_again(engine: Engine, container_id: str, timeout: float) -> str | None:
    """None once an unpaused container runs and passes its health check (if it has one);
    else how it was. Not ``Engine.wait_healthy``: that gives up at once on "unhealthy", the
    state a long pause leaves until the next check passes."""
    deadline = time.monotonic() + timeout
    while True:
        state = engine.inspect(container_id)["State"]
        health = (state.get("Health") or {}).get("Status")
        if state.get("Status") == "running" and health in (None, "healthy"):
            return None
        if time.monotonic() >= deadline:
            return (
                f"not healthy {timeout:.0f} s after it was unpaused "
                f"(state {state.get('Status')}, health {health})"
            )
        time.sleep(1.0)


@contextmanager
def _writers_paused(
    stack: Stack, place: _HostData | _SwarmData, progress: Progress, result: RestoreResult
) -> Iterator[None]:
    """Pause the writers for the restore and its check; unpause them after, also when the
    restore fails, and wait until they are healthy again. A container that cannot be
    unpaused, or is not healthy again, is named in the result's notes."""
    if not isinstance(place, _HostData):  # no writer of its own runs on a Swarm yet
        yield
        return
    with writers_paused(stack, place.engine, progress, result.notes, doing="restore"):
        yield


@contextmanager
def writers_paused(
    stack: Stack, engine: Engine, progress: Progress, notes: list[str], *, doing: str
) -> Iterator[None]:
    """The app's writers (:func:`writers_to_pause`) paused for the block; unpaused after it,
    also on an error, and waited for until healthy again. A container that cannot be
    unpaused, or is not healthy again, is named in ``notes``."""
    paused: list[ObservedContainer] = []
    try:
        for container in writers_to_pause(stack, engine.stack_containers()):
            engine.pause(container.id)
            paused.append(container)
        if paused:
            progress.note(doing, f"paused {len(paused)} app container(s) during the {doing}")
        yield
    finally:
        unpaused: list[ObservedContainer] = []
        for container in paused:
            try:
                engine.unpause(container.id)
                unpaused.append(container)
            except Exception as error:  # the others must be unpaused all the same
                notes.append(
                    f"{container.name} stayed paused ({error}): `docker unpause {container.name}`"
                )
        if unpaused:
            progress.note(doing, "waiting until the app's containers are healthy again")
        for container in unpaused:
            problem = wait_healthy_again(engine, container.id, UNPAUSED_HEALTHY_TIMEOUT_S)
            if problem is not None:
                notes.append(f"{container.name} unpaused but {problem}: `kbinfra status`")


class _HostData:
    """Where one host's stack data is: its engine's containers, under the engine's lock."""

    def __init__(self, stack: Stack, target: Target) -> None:
        self.stack, self.target = stack, target
        self.engine = _engine(target, stack.spec.name)

    def locked(self) -> AbstractContextManager[list[str]]:
        return self.engine.locked()

    def instances(self, services: Iterable[str]) -> dict[str, Instance]:
        return _stack_instances(self.stack, self.target, self.engine, services)

    def volume_node(self, volume: str) -> str | None:
        """One host has no nodes: None."""
        return None

    def volume_engine(self, volume: str) -> Engine:
        return self.engine

    def restore_volume_engine(self, volume: str, artifact: Artifact) -> Engine:
        return self.engine


class _SwarmData:
    """Where a Swarm stack's data is: each store's task on its node, each extra volume on
    the node that holds it (volumes are node-local), under the Swarm lock."""

    def __init__(self, stack: Stack, target: SwarmTarget) -> None:
        self.stack, self.target = stack, target
        self._volume_nodes: dict[str, str] = {}

    def locked(self) -> AbstractContextManager[list[str]]:
        from kbinfra.stack_lock import stack_locked  # noqa: PLC0415

        return stack_locked(self.target, self.stack.spec.name)

    def instances(self, services: Iterable[str]) -> dict[str, Instance]:
        from kbinfra.swarm.backup import swarm_instances  # noqa: PLC0415

        return swarm_instances(self.stack, self.target, services)

    def volume_node(self, volume: str, recorded: str | None = None) -> str:
        """The node that holds ``volume`` (asked of every node once); for a restore into a
        volume no node holds any more, the node the backup ``recorded`` it on."""
        node = self._volume_nodes.get(volume)
        if node is None:
            from kbinfra.swarm.backup import volume_node  # noqa: PLC0415

            node = volume_node(self.target, volume, recorded)
            self._volume_nodes[volume] = node
        return node

    def volume_engine(self, volume: str, recorded: str | None = None) -> Engine:
        node = self.volume_node(volume, recorded)
        return _engine_of_node(self.target, node, self.stack.spec.name)

    def restore_volume_engine(self, volume: str, artifact: Artifact) -> Engine:
        return self.volume_engine(volume, artifact.meta.get(VOLUME_NODE_META))


def _engine_of_node(target: SwarmTarget, node: str, stack_name: str) -> Engine:
    from kbinfra.targets.engine import Engine  # noqa: PLC0415

    return Engine(target.node_client(node), stack_name)


def _data_place(stack: Stack, target: Target) -> _HostData | _SwarmData:
    if target.kind != "swarm":
        return _HostData(stack, target)
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(target, SwarmTarget)
    return _SwarmData(stack, target)


def _engine(target: Target, stack_name: str) -> Engine:
    from kbinfra.targets.engine import Engine  # noqa: PLC0415

    return Engine(target.docker_client(), stack_name)


# ---------------------------------------------------------------- backup
def _owner() -> str:
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "since": _now().isoformat()}
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _reverify(root: Path, artifacts: Sequence[Artifact], progress: Progress) -> None:
    """Read every written file back: the hash taken while streaming must be what's on disk."""
    plan = plan_verification(artifacts, {a.path: _size(root, a.path) for a in artifacts})
    problems = list(plan.problems)
    with progress.transfer("verifying the written files", sum(a.size for a in artifacts)) as adv:
        hashes = {a.path: sha256_file(root / a.path, adv) for a in plan.to_hash}
    problems += hash_problems(plan.to_hash, hashes)
    if problems:
        raise BackupError(
            f"a written file does not read back as written: {problems[0].describe()}",
            where=str(root),
            fix="check the disk of the backup folder, then run the backup again",
        )


def _seal(partial: Path, final: Path, manifest: Manifest, key: str) -> None:
    """Write the manifest, its sum and its signature, then rename ``.partial`` to its final
    name: the one step after which the folder is a backup."""
    data = manifest.to_json().encode()
    for file_name, content in (
        (MANIFEST_FILE, data),
        (MANIFEST_SUM_FILE, manifest_sum_line(data).encode()),
        (MANIFEST_SIGNATURE_FILE, signature_line(data, key).encode()),
    ):
        fd = os.open(partial / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    (partial / OWNER_FILE).unlink()
    fsync_dir(partial)
    os.rename(partial, final)
    fsync_dir(final.parent)


def signing_key(stack: Stack) -> tuple[str, list[str]]:
    """The key that signs the stack's backups; generated into secrets.yaml (0600) when a
    stack made before kbinfra signed backups has none, with a note saying so."""
    key = backup_keys(stack.secrets).current
    if key is not None:
        return key, []
    values, _ = ensure_secrets(stack.dir, [BACKUP_KEY_SECRET])
    return values[BACKUP_KEY_SECRET], [
        f"generated {BACKUP_KEY_SECRET} in secrets.yaml to sign backups: add it to your safe "
        "copy of the stack's secrets (restore and backup verify need it)"
    ]


def run_backup(
    stack: Stack,
    target: Target,
    *,
    progress: Progress,
    dest: Path | None = None,
    include_secrets: bool = False,
    services: Sequence[str] | None = None,
    reason: str = "manual",
    hold_lock: bool = True,
) -> BackupResult:
    """Back up the stack's data services (or ``services``), its files and extra volumes."""
    started = time.monotonic()
    root = (dest or backup_root(stack)).absolute()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = _now()
    while True:
        name = backup_name(stack.spec.name, created, os.listdir(root))
        partial = root / (name + PARTIAL_SUFFIX)
        try:
            partial.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    handlers = data_handlers(stack)
    wanted = [*handlers, VOLUMES_SERVICE] if services is None else list(services)
    key, key_note = signing_key(stack)
    try:
        (partial / OWNER_FILE).write_text(_owner())
        place = _data_place(stack, target)
        lock = place.locked() if hold_lock else nullcontext([])
        with lock as lock_notes:
            for note in lock_notes:
                progress.note("lock", note)
            out = BackupOutput(partial, progress, include_secrets)
            extra_volumes = stack.spec.backup.volumes if VOLUMES_SERVICE in wanted else []
            for volume in extra_volumes:
                place.volume_node(volume)  # on a Swarm: refused before any store is dumped
            artifacts, notes = backup_stack_files(stack, out)
            notes += key_note
            records = {}
            chosen = [s for s in handlers if s in wanted]
            instances = place.instances(chosen)
            for service in chosen:
                progress.note(service, "backing up")
                written = handlers[service].backup(instances[service], out)
                records[service] = written.record
                artifacts += written.artifacts
                notes += written.notes
            for volume in extra_volumes:
                engine, node = place.volume_engine(volume), place.volume_node(volume)
                artifacts.append(VOLUMES.backup(engine.api, volume, out, node=node))
        _reverify(partial, artifacts, progress)
        manifest = Manifest(
            kbinfra_version=__version__,
            name=name,
            stack=stack.spec.name,
            profile=stack.spec.profile,
            target=target.name,
            created_at=created,
            finished_at=_now(),
            reason="safety" if reason == "safety" else "manual",
            includes_secrets=include_secrets,
            services=records,
            artifacts=artifacts,
            notes=notes,
        )
        _seal(partial, root / name, manifest, key)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result = BackupResult(root / name, manifest, time.monotonic() - started)
    if dest is None:
        result.retention = apply_retention(stack, root, _now(), key)
    return result


# ---------------------------------------------------------------- restore
def _versions(
    handlers: Mapping[str, BackupHandler],
    instances: Mapping[str, Instance],
    manifest: Manifest,
) -> dict[str, str]:
    """Each instance's version; refuses (before any change) when one cannot take the backup."""
    current: dict[str, str] = {}
    refusals: list[str] = []
    for service, instance in instances.items():
        current[service] = handlers[service].version(instance)
        record = manifest.services.get(service)
        backup_version = record.version if record else ""
        why = handlers[service].incompatibility(backup_version, current[service])
        if why:
            refusals.append(f"{service}: {why}")
    if refusals:
        raise BackupError(
            "; ".join(refusals),
            fix="run the version the backup was taken with (set its image in kbinfra.yaml, "
            "apply), restore, then upgrade",
        )
    return current


def _restore_and_check(
    *,
    manifest: Manifest,
    backup_dir: Path,
    selection: RestoreSelection,
    handlers: Mapping[str, BackupHandler],
    instances: Mapping[str, Instance],
    versions: Mapping[str, str],
    volume_engine: Callable[[str, Artifact], Engine],
    volume_name: Callable[[str], str],
    strict: bool,
    progress: Progress,
    result: RestoreResult,
) -> None:
    from kbinfra.apply import health_timeout  # noqa: PLC0415

    result.notes += selection.notes
    order = sorted(instances, key=lambda s: not handlers[s].restarts_container)
    for service in order:
        instance = instances[service]
        progress.note(service, "restoring")
        record = manifest.services[service]
        result.notes += handlers[service].restore(
            instance, record, selection.artifacts[service], backup_dir, progress
        )
    volume_artifacts = [a for a in manifest.artifacts if a.path in selection.volumes]
    for artifact in volume_artifacts:
        volume = volume_name(selection.volumes[artifact.path])
        engine = volume_engine(selection.volumes[artifact.path], artifact)
        engine.ensure_volume(volume)
        VOLUMES.restore(engine.api, volume, artifact, backup_dir, progress)
    for service, instance in instances.items():
        progress.note(service, "waiting until healthy")
        timeout = health_timeout(instance.desired, None)
        error = instance.engine.wait_healthy(instance.container_id, timeout)
        if error is not None:
            raise BackupError(
                f"{service} did not become healthy after the restore: {error}",
                where=instance.name,
                fix=f"see `docker logs {instance.name}`",
            )
    for service, instance in instances.items():
        record = manifest.services[service]
        artifacts = selection.artifacts[service]
        observed = handlers[service].observe(instance, record, artifacts)
        with_samples = handlers[service].samples_comparable(record.version, versions[service])
        if not with_samples:
            result.notes.append(f"{service}: samples not compared (another major version)")
        for artifact in artifacts:
            if artifact.kind in handlers[service].unchecked_kinds:
                continue
            result.checks.append(
                check_artifact(
                    artifact,
                    observed.get(artifact.path, Observed()),
                    strict=strict,
                    with_samples=with_samples,
                )
            )
    for artifact in volume_artifacts:
        configured = selection.volumes[artifact.path]
        observed_volume = VOLUMES.observe(
            volume_engine(configured, artifact).api, volume_name(configured)
        )
        result.checks.append(
            check_artifact(artifact, observed_volume, strict=strict, with_samples=False)
        )


def open_verified_backup(
    stack: Stack,
    backup_dir: Path,
    *,
    progress: Progress,
    allow_other_stack: bool,
    allow_unsigned: bool,
) -> tuple[Path, Manifest, bool]:
    """The backup restore and the drill read, checked before either touches a service: its
    signature, its stack's name and every file's sha256.

    Returns the backup's absolute path, its manifest and whether it is signed.
    """
    backup_dir = resolve_backup(stack, backup_dir).absolute()
    manifest, signed = load_backup(
        backup_dir, backup_keys(stack.secrets), allow_unsigned=allow_unsigned
    )
    if manifest.stack != stack.spec.name and not allow_other_stack:
        raise BackupError(
            f"this is a backup of stack {manifest.stack!r}, not {stack.spec.name!r}",
            where=str(backup_dir),
            fix="pass --allow-other-stack to use it with this stack anyway",
        )
    verify_backup(backup_dir, manifest, progress)
    return backup_dir, manifest, signed


@dataclass(frozen=True)
class RestoreSelection:
    """What of a backup a restore or drill puts back, decided before anything is touched."""

    artifacts: dict[str, list[Artifact]]  # per data service
    volumes: dict[str, str]  # volume tar → the stack's own volume it restores into
    notes: list[str]


def select_restorable(
    stack: Stack,
    manifest: Manifest,
    selected: Sequence[str],
    handlers: Mapping[str, BackupHandler],
    backup_dir: Path,
) -> RestoreSelection:
    """Refuse a manifest that lacks what restore needs, a volume the stack does not list and
    a tar member that would leave its volume; else what each service and volume gets back."""
    artifacts: dict[str, list[Artifact]] = {}
    notes: list[str] = []
    for service in selected:
        if service == VOLUMES_SERVICE:
            continue
        listed = manifest.for_service(service)
        problem = handlers[service].manifest_problem(manifest.services.get(service), listed)
        if problem is not None:
            raise BackupError(
                f"{MANIFEST_FILE}: {problem}",
                where=str(backup_dir),
                fix="nothing was changed; this backup cannot be restored, use another",
            )
        artifacts[service], service_notes = handlers[service].restorable(
            stack.contexts[service], listed, backup_dir
        )
        notes += service_notes
    volumes: dict[str, str] = {}
    if VOLUMES_SERVICE in selected:
        volume_artifacts = manifest.for_service(VOLUMES_SERVICE)
        volumes = volumes_to_restore(volume_artifacts, stack.spec.backup.volumes)
        for artifact in volume_artifacts:
            check_tar(backup_dir / artifact.path, artifact.path)
    return RestoreSelection(artifacts, volumes, notes)


def run_restore(
    stack: Stack,
    target: Target,
    backup_dir: Path,
    *,
    progress: Progress,
    confirm: Callable[[str], bool],
    only: Sequence[str] | None = None,
    safety_backup: bool = True,
    allow_other_stack: bool = False,
    allow_unsigned: bool = False,
) -> RestoreResult:
    started = time.monotonic()
    backup_dir, manifest, signed = open_verified_backup(
        stack,
        backup_dir,
        progress=progress,
        allow_other_stack=allow_other_stack,
        allow_unsigned=allow_unsigned,
    )
    selected = select_services(manifest.data_services(), only)
    enabled = data_handlers(stack)
    missing = [s for s in selected if s != VOLUMES_SERVICE and s not in enabled]
    if missing:
        raise BackupError(
            f"the backup holds {', '.join(missing)}, which this stack does not run",
            fix="enable it in kbinfra.yaml and apply, or leave it out with --only",
        )
    selection = select_restorable(stack, manifest, selected, enabled, backup_dir)
    result = RestoreResult(backup_dir, stack.spec.name, target.name, signed=signed)
    place = _data_place(stack, target)
    with place.locked():
        services = [s for s in selected if s != VOLUMES_SERVICE]
        instances = place.instances(services)
        versions = _versions(enabled, instances, manifest)
        summary = (
            f"Restore {', '.join(selected)} of stack {stack.spec.name} on {target.name} from "
            f"{manifest.name} ({manifest.created_at.isoformat()})? Their current data is replaced."
        )
        if not confirm(summary):
            raise BackupError("restore cancelled; nothing was changed")
        if safety_backup:
            progress.note("restore", "taking a safety backup of the current state first")
            safety = run_backup(
                stack, target, progress=progress, services=selected, reason="safety",
                hold_lock=False,
            )  # fmt: skip
            result.safety_backup = safety.path
        with _writers_paused(stack, place, progress, result):
            _restore_and_check(
                manifest=manifest,
                backup_dir=backup_dir,
                selection=selection,
                handlers=enabled,
                instances=instances,
                versions=versions,
                volume_engine=place.restore_volume_engine,
                volume_name=lambda volume: volume,
                strict=False,
                progress=progress,
                result=result,
            )
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------- the drill
def drill_name(stack: str) -> str:
    return f"{stack}-drill"


def remove_drill(engine: Engine) -> list[str]:
    """Everything a drill created (or an interrupted one left): containers, network, volumes."""
    removed = []
    for container in engine.observe().containers:
        engine.remove(container.id)
        removed.append(container.name)
    engine.remove_network()
    for volume in engine.stack_volumes():
        engine.ensure_volume_absent(volume)
    return removed


def _start_drill_instance(
    stack: Stack,
    target: Target,
    engine: Engine,
    service: str,
    rendered: Mapping[str, Any],
) -> Instance:
    """Create and start the service's throwaway container (healthy or not: see below).

    On a Swarm the service's files are rendered for its tasks, which read some secrets from
    files (``POSTGRES_PASSWORD_FILE``): the throwaway container gets those as files too."""
    from kbinfra.plan import desired_service  # noqa: PLC0415

    definition = stack.services[service]
    spec = drill_spec(definition.container(stack.contexts[service]), stack.spec.name, engine.stack)
    if stack.spec.swarm is not None:
        from kbinfra.swarm.build import secrets_as_files  # noqa: PLC0415

        spec, secret_files = secrets_as_files(stack, definition, spec)
        rendered = {**rendered, **{f.path: f for f in secret_files}}
    desired: DesiredService = desired_service(
        engine.stack, spec, definition.stage, rendered, stack.secrets
    )
    for volume in spec.volumes:
        engine.ensure_volume(volume.volume)
    container_id = engine.create_with_files(desired, stack.secrets)
    engine.start(container_id)
    return Instance(service, stack, target, engine, container_id, desired, drill=True)


def _wait_drill_healthy(instances: Mapping[str, Instance]) -> None:
    """All throwaway containers start at once; then each must become healthy."""
    from kbinfra.apply import health_timeout  # noqa: PLC0415

    for service, instance in instances.items():
        error = instance.engine.wait_healthy(
            instance.container_id, health_timeout(instance.desired, None)
        )
        if error is not None:
            raise BackupError(
                f"the drill's {service} container did not become healthy: {error}",
                where=instance.name,
            )


@dataclass
class _DrillSite:
    """Where a drill's throwaway containers and volumes go: the target's engine on one
    host; on a Swarm, the engine of each store's node and of each extra volume's node
    (volumes are node-local), each reached over that node's own SSH connection."""

    drill: str
    #: node ("" on one host) -> the drill's engine there, and the target that reaches it
    engines: dict[str, Engine]
    targets: dict[str, Target]
    service_nodes: dict[str, str] = field(default_factory=dict)
    volume_nodes: dict[str, str] = field(default_factory=dict)

    def node_of(self, service: str) -> str:
        return self.service_nodes.get(service, "")

    def volume_engine(self, volume: str, artifact: Artifact) -> Engine:
        return self.engines[self.volume_nodes.get(volume, "")]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Every engine's drill lock: two drills of one stack never share containers."""
        from contextlib import ExitStack  # noqa: PLC0415

        with ExitStack() as held:
            for engine in self.engines.values():
                held.enter_context(engine.locked())
            yield


def _drill_site(
    stack: Stack, target: Target, services: Sequence[str], volumes: Mapping[str, Artifact]
) -> _DrillSite:
    """One engine on one host; on a Swarm, one on each node that holds a store (where the
    stack file pins it) or an extra volume (asked of the nodes)."""
    drill = drill_name(stack.spec.name)
    if target.kind != "swarm":
        return _DrillSite(drill, {"": _engine(target, drill)}, {"": target})
    from kbinfra.swarm.backup import store_nodes, volume_node  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(target, SwarmTarget)
    service_nodes = store_nodes(stack, services)
    volume_nodes = {
        volume: volume_node(target, volume, artifact.meta.get(VOLUME_NODE_META))
        for volume, artifact in volumes.items()
    }
    nodes = sorted({*service_nodes.values(), *volume_nodes.values()})
    return _DrillSite(
        drill,
        {node: _engine_of_node(target, node, drill) for node in nodes},
        {node: target.node_target(node) for node in nodes},
        service_nodes,
        volume_nodes,
    )


def run_drill(
    stack: Stack,
    target: Target,
    backup_dir: Path,
    *,
    progress: Progress,
    allow_other_stack: bool = False,
    allow_unsigned: bool = False,
) -> RestoreResult:
    """Restore the backup into throwaway containers, compare with the manifest, clean up.

    On a Swarm each store's throwaway container runs on that store's node (and each extra
    volume is restored into a scratch volume on the node that holds it): nothing of what
    the stack runs is touched, and nothing is published."""
    started = time.monotonic()
    backup_dir, manifest, signed = open_verified_backup(
        stack,
        backup_dir,
        progress=progress,
        allow_other_stack=allow_other_stack,
        allow_unsigned=allow_unsigned,
    )
    selected = manifest.data_services()
    enabled = data_handlers(stack)
    missing = [s for s in selected if s != VOLUMES_SERVICE and s not in enabled]
    if missing:
        raise BackupError(
            f"the backup holds {', '.join(missing)}, which this stack does not run: the drill "
            "needs its configuration",
            fix="enable it in kbinfra.yaml",
        )
    selection = select_restorable(stack, manifest, selected, enabled, backup_dir)
    result = RestoreResult(backup_dir, stack.spec.name, target.name, signed=signed)
    stores = [s for s in selected if s != VOLUMES_SERVICE]
    by_path = {a.path: a for a in manifest.artifacts}
    site = _drill_site(
        stack, target, stores, {v: by_path[path] for path, v in selection.volumes.items()}
    )
    rendered = {f.path: f for f in stack.rendered}
    with site.locked():
        leftovers = [name for engine in site.engines.values() for name in remove_drill(engine)]
        if leftovers:
            result.notes.append(f"removed {len(leftovers)} container(s) of an interrupted drill")
        try:
            for engine in site.engines.values():
                engine.ensure_network()
            instances: dict[str, Instance] = {}
            for service in stores:
                node = site.node_of(service)
                where = f" on {node}" if node else ""
                progress.note(service, f"starting a throwaway container{where}")
                instances[service] = _start_drill_instance(
                    stack, site.targets[node], site.engines[node], service, rendered
                )
            progress.note("drill", "waiting until the throwaway containers are healthy")
            _wait_drill_healthy(instances)
            versions = _versions(enabled, instances, manifest)
            _restore_and_check(
                manifest=manifest,
                backup_dir=backup_dir,
                selection=selection,
                handlers=enabled,
                instances=instances,
                versions=versions,
                volume_engine=site.volume_engine,
                volume_name=lambda volume: drill_volume(site.drill, volume),
                strict=True,
                progress=progress,
                result=result,
            )
        finally:
            progress.note("drill", "removing the throwaway containers and volumes")
            for engine in site.engines.values():
                remove_drill(engine)
    result.seconds = time.monotonic() - started
    return result
