"""``kbinfra upgrade``: a new image for a service, refused when its data cannot follow.

Each service that keeps data in a format its version owns says what it runs now and whether
a new image can take that data over, in ``kbinfra/services/<folder>/upgrade.py``:

- ``running_version(probe: ProbeContext) -> str``: the version of what runs (or of its data
  on disk: PostgreSQL's ``PG_VERSION``), asked of the service itself;
- ``upgrade_refusal(running: str, new_image: str, settings) -> Refusal | None``: why the new
  image cannot take over, and the way to do it instead; None when it can.

A service without that module (nginx, the exporters, the embedding service) keeps no data
that a version owns: any image is fine. Nothing here knows a service's name.

A service whose new image can take its data over only by moving it (PostgreSQL across a major
version) also offers ``data_migration(running, new_image, settings) -> DataMigration | None``,
``migration_container(spec) -> ContainerSpec`` (its throwaway server on the new volume),
``copy_data(source, copy, progress)`` and ``compare_data(source, copy) -> list[str]``;
:func:`migrate_and_switch` runs them (see there for what a failure leaves).

The steps of an upgrade (:func:`plan_upgrade` decides, the command carries out): every
refusal is reported before anything changes; then a backup of the affected stores, verified
as it is written; then the new images are applied, health-gated, for those services only;
then kbinfra.yaml names the new images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.names import normalize_ref

if TYPE_CHECKING:
    from pathlib import Path

    from kbinfra.apply import ApplyResult
    from kbinfra.backup.handler import Instance
    from kbinfra.containers import ObservedContainer
    from kbinfra.probing.probe import ProbeContext
    from kbinfra.progress import Progress
    from kbinfra.service import ContainerSpec
    from kbinfra.stack import Stack
    from kbinfra.targets import Target
    from kbinfra.targets.engine import Engine

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def image_version(image: str) -> tuple[int, ...] | None:
    """The version an image's tag starts with: ``qdrant/qdrant:v1.17.2`` → (1, 17, 2),
    ``postgres:16-bookworm`` → (16,); None when the tag says none (a digest, ``latest``)."""
    name, _, digest = image.partition("@")
    if digest:
        return None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    return version_tuple(last.rsplit(":", 1)[1])


def version_tuple(text: str) -> tuple[int, ...] | None:
    """``1.16.3`` → (1, 16, 3); ``v7.0`` → (7, 0); None when it does not start with one."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def shown(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class Refusal:
    """Why an image cannot take over a service's data, and what to do instead."""

    reason: str
    how: str


class UpgradePart(Protocol):
    """What ``kbinfra/services/<folder>/upgrade.py`` offers."""

    def running_version(self, probe: ProbeContext) -> str: ...

    def upgrade_refusal(self, running: str, new_image: str, settings: Any) -> Refusal | None: ...


@dataclass(frozen=True)
class DataMigration:
    """How a service's data moves to a new image that cannot open it where it is: into a
    throwaway container of the new image on a new volume, checked, then switched to."""

    summary: str
    #: ``services.<name>.<key>`` values the stack file gets with the new image.
    settings: Mapping[str, str]
    #: The new data volume's purpose (``<stack>-<service>-<purpose>``), and the old one's.
    volume_purpose: str
    old_volume_purpose: str
    steps: tuple[str, ...]  # what ``--check`` shows


class UpgradeMigrationPart(UpgradePart, Protocol):
    """The upgrade module of a service whose data moves on some upgrades."""

    def data_migration(
        self, running: str, new_image: str, settings: Any
    ) -> DataMigration | None: ...

    def migration_container(self, spec: ContainerSpec) -> ContainerSpec: ...

    def copy_data(self, source: Instance, copy: Instance, progress: Progress) -> None: ...

    def compare_data(self, source: Instance, copy: Instance) -> list[str]: ...


@dataclass(frozen=True)
class UpgradeStep:
    """One service's upgrade: from which image to which, and whether its data can follow."""

    service: str
    old_image: str
    new_image: str
    running_version: str | None
    refusal: Refusal | None
    backed_up: bool  # a store: backed up before the new image starts
    migration: DataMigration | None = None  # its data moves to a new volume first

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "from": self.old_image,
            "to": self.new_image,
            "running_version": self.running_version,
            "allowed": self.refusal is None,
            "reason": self.refusal.reason if self.refusal else None,
            "how": self.refusal.how if self.refusal else None,
            "backed_up": self.backed_up,
            "migration": (
                {"summary": self.migration.summary, "steps": list(self.migration.steps)}
                if self.migration
                else None
            ),
        }

    def row(self) -> tuple[str, ...]:
        verdict = "ok" if self.refusal is None else f"refused: {self.refusal.reason}"
        if self.refusal is None and self.migration is not None:
            verdict = f"ok: {self.migration.summary}"
        return (
            self.service,
            self.old_image,
            self.new_image,
            self.running_version or "-",
            "yes" if self.backed_up else "no (keeps no data)",
            verdict,
        )


# ---------------------------------------------------------------- the new stack file
def with_images(stack_text: str, images: Mapping[str, str], *, where: str) -> str:
    """``stack_text`` (kbinfra.yaml) with ``services.<name>.image`` set for each of
    ``images``; every other value, comment and key order kept (a ruamel.yaml round trip)."""
    return with_settings(
        stack_text, {name: {"image": image} for name, image in images.items()}, where=where
    )


def with_settings(stack_text: str, settings: Mapping[str, Mapping[str, str]], *, where: str) -> str:
    """``stack_text`` with ``services.<name>.<key>`` set for each of ``settings``; every
    other value, comment and key order kept (a ruamel.yaml round trip)."""
    import io  # noqa: PLC0415

    from ruamel.yaml import YAML  # noqa: PLC0415
    from ruamel.yaml.error import YAMLError  # noqa: PLC0415

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.indent(mapping=2, sequence=4, offset=2)
    round_trip.width = 4096
    try:
        document = round_trip.load(stack_text)
    except YAMLError:
        raise KbinfraError(
            "kbinfra.yaml is not valid YAML", where=where, fix="fix it, then upgrade"
        ) from None
    services = document.get("services") if isinstance(document, dict) else None
    for name, values in settings.items():
        entry = services.get(name) if isinstance(services, dict) else None
        if entry is None:
            services[name] = dict(values)  # type: ignore[index]
        elif isinstance(entry, dict):
            entry.update(values)
        else:
            raise KbinfraError(
                f"services.{name} in kbinfra.yaml is not a mapping",
                where=where,
                fix=f"write it as `{name}: {{image: ...}}`",
            )
    out = io.StringIO()
    round_trip.dump(document, out)
    return out.getvalue()


def new_image_for(current: str, to: str) -> str:
    """``--to``: a whole image reference (has ``/`` or ``:``), or a tag for ``current``'s
    repository."""
    if "/" in to or ":" in to or "@" in to:
        return to
    name = current.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    repository = name.rsplit(":", 1)[0] if ":" in last else name
    return f"{repository}:{to}"


# ---------------------------------------------------------------- deciding
def upgrade_part(stack: Stack, service: str) -> UpgradePart | None:
    from kbinfra.registry import service_part  # noqa: PLC0415

    module = service_part(stack.services[service].folder_service, "upgrade")
    return cast("UpgradePart | None", module)


def migration_part(stack: Stack, service: str) -> UpgradeMigrationPart | None:
    """The service's upgrade module when it can move its data (``data_migration``)."""
    part = upgrade_part(stack, service)
    if part is None or not hasattr(part, "data_migration"):
        return None
    return cast("UpgradeMigrationPart", part)


def plan_upgrade(
    current: Stack,
    new: Stack,
    target: Target,
    *,
    services: Sequence[str],
    containers: Mapping[str, ObservedContainer],
    stores: Sequence[str],
) -> list[UpgradeStep]:
    """Each of ``services``' step from its running container to ``new``'s image; the
    version it runs is asked of the running service (through ``current``'s credentials)."""
    from kbinfra.probing.probe import ProbeContext  # noqa: PLC0415

    steps = []
    for name in services:
        container = containers.get(name)
        if container is None or container.state != "running":
            raise KbinfraError(
                f"{name} is not running, so its version cannot be asked",
                fix="`kbinfra apply` first (or `kbinfra status` to see why it is down)",
            )
        new_image = new.contexts[name].image
        part = upgrade_part(current, name)
        running: str | None = None
        refusal: Refusal | None = None
        migration: DataMigration | None = None
        if part is not None:
            with ProbeContext(current, current.services[name], target) as probe:
                running = part.running_version(probe)
            settings = new.contexts[name].settings
            refusal = part.upgrade_refusal(running, new_image, settings)
            moving = migration_part(current, name)
            if refusal is None and moving is not None:
                migration = moving.data_migration(running, new_image, settings)
        steps.append(
            UpgradeStep(
                name, container.image, new_image, running, refusal, name in stores, migration
            )
        )
    if any(step.migration for step in steps) and len(steps) > 1:
        moved = next(step.service for step in steps if step.migration)
        raise KbinfraError(
            f"{moved}'s data moves to a new volume in this upgrade: it is upgraded alone; "
            "nothing was changed",
            fix=f"`kbinfra upgrade {moved} --to ...` first, then the others",
        )
    return steps


def refuse(steps: Sequence[UpgradeStep]) -> None:
    """Stop before any change when a step is refused: the first one's reason and way."""
    refused = [step for step in steps if step.refusal is not None]
    if refused:
        first = refused[0]
        assert first.refusal is not None
        others = f" (and {len(refused) - 1} more: see the table)" if len(refused) > 1 else ""
        raise KbinfraError(
            f"{first.service}: {first.refusal.reason}{others}; nothing was changed",
            where=f"{first.old_image} → {first.new_image}",
            fix=first.refusal.how,
        )


def changed_images(new: Stack, containers: Mapping[str, ObservedContainer]) -> list[str]:
    """Enabled services whose image in ``new`` is not what their container runs."""
    return [
        name
        for name in new.services
        if name in containers
        and normalize_ref(containers[name].image) != normalize_ref(new.contexts[name].image)
    ]


def stack_file_path(stack: Stack) -> Path:
    from kbinfra.stack_folder import STACK_FILE  # noqa: PLC0415

    return stack.dir / STACK_FILE


def kept_volume_note(current: Stack, step: UpgradeStep, target_name: str) -> str | None:
    """After a data migration: the old volume is kept, and how to remove it."""
    if step.migration is None:
        return None
    old = current.contexts[step.service].volume(step.migration.old_volume_purpose)
    return (
        f"the old volume {old} is kept, as it was at the copy: `docker volume rm {old}` on "
        f"{target_name} once you no longer need the way back (docs/operations.md, Upgrades); "
        "`kbinfra rollback` does not go back across it"
    )


# ---------------------------------------------------------------- moving the data
#: The throwaway container of a data migration: ``<stack>-<service>-upgrade``.
MIGRATION_SUFFIX = "upgrade"


def migrate_and_switch(
    current: Stack,
    new: Stack,
    target: Target,
    step: UpgradeStep,
    *,
    stack_file: str,
    timeout: float | None,
    progress: Progress,
) -> ApplyResult:
    """Move ``step``'s data to its new volume with the new image, then switch to it.

    The app's writers are paused from before the copy until the switch is done, so nothing
    written is left behind on the old volume. Under the stack's lock: a throwaway container
    of the new image on the new volume (which must not exist yet), the service's copy, the
    service's comparison of both sides. Then ``apply`` of ``new`` for this service alone:
    health-gated, and a failure puts the old container back on its old volume; once the
    writers run again, a full apply brings the stack-wide files along. Any failure
    before the switch, or of the switch, removes the throwaway container and the new volume
    (a copy made by this run: the old server keeps serving, its volume untouched); the old
    volume is never removed here.
    """
    from kbinfra.apply import apply_stack, target_engine  # noqa: PLC0415
    from kbinfra.backup.run import writers_paused  # noqa: PLC0415

    migration = step.migration
    part = migration_part(current, step.service)
    assert migration is not None and part is not None
    engine = target_engine(target, current.spec.name)
    new_volume = new.contexts[step.service].volume(migration.volume_purpose)
    notes: list[str] = []
    with writers_paused(current, engine, progress, notes, doing="upgrade"):
        with engine.locked() as lock_notes:
            notes.extend(lock_notes)
            _copy_into_new_volume(
                current,
                new,
                target,
                engine=engine,
                step=step,
                part=part,
                new_volume=new_volume,
                progress=progress,
            )
        try:
            result = apply_stack(
                new,
                target,
                timeout=timeout,
                only=[step.service],
                progress=progress,
                stack_file=stack_file,
            )
        except BaseException:
            _remove_copy(engine, new_volume, notes)
            raise
        if not result.ok:
            removed = _remove_copy(engine, new_volume, result.notes)
            result.notes.append(
                f"{step.service} was put back on {step.old_image} and its volume"
                + (f"; the copy on {new_volume} was removed" if removed else "")
            )
    result.notes.extend(notes)
    if result.ok:
        # `only` leaves the stack-wide files (the compose export) for a full apply, and the
        # writers could not wait for one while paused: now the rest converges.
        rest = apply_stack(new, target, timeout=timeout, progress=progress, stack_file=stack_file)
        result.services.extend(r for r in rest.services if r.action != "nothing")
        result.files_uploaded.extend(rest.files_uploaded)
        result.notes.extend(rest.notes)
        result.release = rest.release or result.release
    return result


def _remove_copy(engine: Engine, volume: str, notes: list[str]) -> bool:
    """Remove the copy's volume after a failed switch; never one a container still uses
    (the engine refuses that): then it is named in ``notes`` and kept."""
    import docker.errors  # noqa: PLC0415

    try:
        engine.ensure_volume_absent(volume)
    except docker.errors.APIError as error:
        notes.append(f"the copy's volume {volume} was kept: {error.explanation or error}")
        return False
    return True


def _copy_into_new_volume(
    current: Stack,
    new: Stack,
    target: Target,
    *,
    engine: Engine,
    step: UpgradeStep,
    part: UpgradeMigrationPart,
    new_volume: str,
    progress: Progress,
) -> None:
    """The throwaway container of the new image on ``new_volume``, filled and checked."""
    from kbinfra.apply import health_timeout  # noqa: PLC0415
    from kbinfra.backup.handler import Instance  # noqa: PLC0415
    from kbinfra.plan import desired_service  # noqa: PLC0415

    service = step.service
    name = current.spec.name
    serving = next(
        (c for c in engine.stack_containers() if c.service == service and c.state == "running"),
        None,
    )
    if serving is None:
        raise KbinfraError(f"{service} is not running; nothing was changed", fix="`kbinfra apply`")
    stage = current.services[service].stage
    source_desired = desired_service(
        name, current.containers[service], stage, {f.path: f for f in current.rendered},
        current.secrets,
    )  # fmt: skip
    source = Instance(service, current, target, engine, serving.id, source_desired)
    spec = part.migration_container(new.containers[service])._replace(
        service=f"{service}-{MIGRATION_SUFFIX}", ports=(), depends_on=()
    )
    desired = desired_service(name, spec, stage, {f.path: f for f in new.rendered}, new.secrets)
    leftover = engine.reads.container_or_none(desired.container)
    if leftover is not None:  # an interrupted upgrade's: it never served
        engine.remove(str(leftover["Id"]))
    if not engine.ensure_volume(new_volume):
        raise KbinfraError(
            f"volume {new_volume} exists already (an interrupted upgrade's copy?); "
            "nothing was changed",
            where=new_volume,
            fix=f"see what it holds; `docker volume rm {new_volume}` if it is not needed, "
            "then upgrade again",
        )
    container_id: str | None = None
    try:
        progress.note(service, f"starting {step.new_image} on the new volume {new_volume}")
        container_id = engine.create_with_files(desired, new.secrets)
        engine.start(container_id)
        problem = engine.wait_healthy(container_id, health_timeout(desired, None))
        if problem is not None:
            logs = " / ".join(engine.logs_tail(container_id, 3))[-300:]
            raise KbinfraError(
                f"{step.new_image} did not become healthy on the new volume: {problem}"
                + (f" (its last log lines: {logs})" if logs else ""),
                where=desired.container,
                fix="make the new image start with the stack's configuration (its log lines "
                "say why it did not), then upgrade again",
            )
        copy = Instance(service, new, target, engine, container_id, desired, drill=True)
        part.copy_data(source, copy, progress)
        progress.note(service, "counting both sides")
        differences = part.compare_data(source, copy)
        if differences:
            raise KbinfraError(
                f"the copy differs from the serving data: {'; '.join(differences[:5])}",
                where=new_volume,
                fix="something wrote during the copy, or the new version changed it: "
                "upgrade again; if it repeats, see docs/operations.md (Upgrades)",
            )
    except BaseException as failure:
        if container_id is not None:
            engine.remove(container_id)
        engine.ensure_volume_absent(new_volume)
        if not isinstance(failure, KbinfraError):
            raise
        assert step.migration is not None
        old = current.contexts[service].volume(step.migration.old_volume_purpose)
        raise ApplyFailedError(
            f"{failure.what}; {service} still serves {step.old_image} on volume {old}, "
            f"and the copy on {new_volume} was removed",
            where=failure.where,
            fix=failure.fix,
        ) from None
    engine.stop(container_id, spec.stop_timeout_s)
    engine.remove(container_id)
