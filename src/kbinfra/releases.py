"""Releases: what each apply that changed something left on the target, to list and return to.

A release is recorded on the target itself, in the deployed stack folder, as
``.kbinfra/releases.json`` (0600; the folder the plan never counts as deployed files): the
stack file's text, the profile's values, each rendered file's sha256, each service's config
hash and image (reference and id), the services that changed, the time and kbinfra's version.
No secret is in it: the stack file holds none (they are in ``secrets.yaml``), and a rendered
file is kept only as its hash.

``kbinfra rollback N`` re-renders release N's stack file with release N's profile and the
*current* secrets and TLS files (a secret is never rolled back: an old one may be revoked),
puts each image reference back on release N's image id, and applies that through the same
health-gated path as ``apply``. Data is never rolled back: restore is for data. So a release
whose service kept its data on another volume than today's (before ``kbinfra upgrade`` moved
PostgreSQL to a new major version's volume) is refused: returning to it would serve the data
as it was on the old volume, not today's (:func:`refuse_data_volume_moves`).

The record is untrusted input when read (anyone who can write the target's stack folder can
write it): it is validated by type, bounded in size, and its stack file is validated like
``kbinfra.yaml`` before anything uses it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kbinfra.errors import KbinfraError
from kbinfra.targets.base import RECORDS_DIR

if TYPE_CHECKING:
    from pathlib import Path

    from kbinfra.apply import ApplyResult
    from kbinfra.containers import DesiredService, ObservedContainer
    from kbinfra.service import RenderedFile
    from kbinfra.spec.profile import Profile
    from kbinfra.stack import Stack
    from kbinfra.targets import FileStore

#: Where the record is, in the deployed stack folder (see ``FileStore.hashes``).
RELEASES_FILE = f"{RECORDS_DIR}/releases.json"
#: Where rollback keeps the stack file it replaced, in the stack folder.
BEFORE_ROLLBACK = "kbinfra.yaml.before-rollback"
#: Releases kept: the oldest is dropped when a new one would make more.
KEEP_RELEASES = 50
#: A record file larger than this is refused unread (50 stack files are far below it).
MAX_RECORD_BYTES = 8 * 1024 * 1024

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ImageId = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(max_length=300)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseImage(_Strict):
    ref: ShortText
    id: ImageId


class Release(_Strict):
    """One apply that changed something, as recorded on the target."""

    number: int = Field(ge=1)
    time: datetime.datetime
    kbinfra_version: ShortText
    stack_sha256: Sha256
    stack_file: str = Field(max_length=1024 * 1024)
    profile: dict[str, Any]
    files: dict[ShortText, Sha256]
    services: dict[ShortText, Sha256]
    images: dict[ShortText, ReleaseImage]
    changed: list[ShortText]
    failed: list[ShortText] = []
    #: ``apply --only``'s services: the others kept what they had (the stack file is whole)
    only: list[ShortText] = []
    rollback_of: int | None = Field(default=None, ge=1)

    @property
    def complete(self) -> bool:
        """Every service converged (a failed one kept its previous container)."""
        return not self.failed

    def summary(self) -> dict[str, Any]:
        """What ``kbinfra history -o json`` shows: everything but the stack file's text."""
        return {
            "release": self.number,
            "time": self.time.isoformat(timespec="seconds"),
            "kbinfra_version": self.kbinfra_version,
            "stack_sha256": self.stack_sha256,
            "changed": list(self.changed),
            "failed": list(self.failed),
            "only": list(self.only),
            "rollback_of": self.rollback_of,
            "images": {name: image.model_dump() for name, image in self.images.items()},
        }


class ReleaseLog(_Strict):
    format: Literal[1] = 1
    releases: list[Release] = []


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- reading and writing
def read_releases(store: FileStore) -> list[Release]:
    """The target's releases, oldest first; none when it has no record yet."""
    data = store.read(RELEASES_FILE)
    if data is None:
        return []
    where = f"{store.location}/{RELEASES_FILE}"
    if len(data) > MAX_RECORD_BYTES:
        raise KbinfraError(
            f"the release record is {len(data)} bytes, more than {MAX_RECORD_BYTES}",
            where=where,
            fix="it was not written by kbinfra: move it away (history starts anew)",
        )
    try:
        log = ReleaseLog.model_validate(json.loads(data))
    except (ValueError, ValidationError) as error:
        first = str(error).strip().splitlines()
        detail = f" ({first[1].strip() if len(first) > 1 else first[0]})" if first else ""
        raise KbinfraError(
            f"the release record is not valid{detail}"[:300],
            where=where,
            fix="it was changed by hand or by another tool: move it away (history starts anew)",
        ) from None
    numbers = [release.number for release in log.releases]
    if numbers != sorted(set(numbers)):
        raise KbinfraError(
            "the release record's numbers are not increasing",
            where=where,
            fix="it was changed by hand: move it away (history starts anew)",
        )
    return list(log.releases)


def write_releases(store: FileStore, releases: Sequence[Release]) -> None:
    kept = list(releases)[-KEEP_RELEASES:]
    text = ReleaseLog(releases=kept).model_dump_json(indent=1)
    store.put(RELEASES_FILE, text.encode("utf-8"), 0o600)


# ---------------------------------------------------------------- what a release holds
def changed_services(result: ApplyResult) -> list[str]:
    """The services an apply changed (created, recreated, started or removed)."""
    return [r.service for r in result.services if r.action != "nothing" and r.outcome != "failed"]


def new_release(
    *,
    number: int,
    stack_file: str,
    profile: Profile,
    rendered: Iterable[RenderedFile],
    desired: Mapping[str, DesiredService],
    containers: Iterable[ObservedContainer],
    result: ApplyResult,
    version: str,
    rollback_of: int | None = None,
    only: Iterable[str] = (),
    now: datetime.datetime | None = None,
) -> Release:
    """The release an apply leaves: ``containers`` as listed after it (their image ids)."""
    running = {c.service: c for c in containers if c.service}
    images = {
        name: ReleaseImage(ref=d.spec.image, id=running[name].image_id)
        for name, d in desired.items()
        if name in running and running[name].image_id.startswith("sha256:")
    }
    return Release(
        number=number,
        time=now or datetime.datetime.now(datetime.UTC),
        kbinfra_version=version,
        stack_sha256=sha256_text(stack_file),
        stack_file=stack_file,
        profile=profile.model_dump(mode="json"),
        files={f.path: sha256_text(f.text) for f in rendered},
        services={name: d.config_hash for name, d in desired.items()},
        images=images,
        changed=changed_services(result),
        failed=[r.service for r in result.services if r.outcome in ("failed", "skipped")],
        only=sorted(only),
        rollback_of=rollback_of,
    )


def worth_recording(result: ApplyResult) -> bool:
    """An apply that changed a container or a deployed file."""
    return bool(changed_services(result) or result.files_uploaded or result.files_removed)


# ---------------------------------------------------------------- choosing one
def choose_release(releases: Sequence[Release], wanted: int | None) -> Release:
    """Release ``wanted``, or (None) the newest complete one before the current one: each
    rollback without a number undoes the last change, as ``helm rollback`` does."""
    if not releases:
        raise KbinfraError(
            "this target has no recorded release yet",
            fix="releases are recorded by each `kbinfra apply` that changes something",
        )
    if wanted is not None:
        for release in releases:
            if release.number == wanted:
                return release
        known = ", ".join(str(r.number) for r in releases)
        raise KbinfraError(
            f"release {wanted} is not recorded on this target",
            where="RELEASE",
            fix=f"choose one of {known} (`kbinfra history`)",
        )
    current = releases[-1]
    for release in reversed(releases[:-1]):
        if release.complete:
            return release
    raise KbinfraError(
        f"there is no complete release before release {current.number}",
        where="RELEASE",
        fix="name the release to return to (`kbinfra history`)",
    )


def image_moves(release: Release, present: Mapping[str, str]) -> dict[str, str]:
    """Image reference -> release's image id, for each reference that points elsewhere now
    (``present``: reference -> id on the target, as the engine lists them)."""
    moves: dict[str, str] = {}
    for image in release.images.values():
        ref = normalize(image.ref)
        if present.get(ref) != image.id:
            moves[ref] = image.id
    return moves


def normalize(ref: str) -> str:
    from kbinfra.names import normalize_ref  # noqa: PLC0415

    return normalize_ref(ref)


def history_rows(releases: Sequence[Release]) -> list[tuple[str, ...]]:
    """``kbinfra history``'s table, newest first."""
    rows: list[tuple[str, ...]] = []
    current = releases[-1].number if releases else None
    for release in reversed(releases):
        note = []
        if release.number == current:
            note.append("current")
        if release.rollback_of is not None:
            note.append(f"rollback to {release.rollback_of}")
        if release.failed:
            note.append(f"partial: {', '.join(release.failed)} failed")
        if release.only:
            note.append(f"--only {','.join(release.only)}")
        rows.append(
            (
                str(release.number),
                release.time.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                release.kbinfra_version,
                ", ".join(release.changed) or "files only",
                "; ".join(note),
            )
        )
    return rows


# ---------------------------------------------------------------- rolling back
def release_stack(stack: Stack, release: Release) -> Stack:
    """The stack of ``release``: its stack file and profile, with ``stack``'s secrets and TLS."""
    from kbinfra.spec.profile import Profile as ProfileModel  # noqa: PLC0415
    from kbinfra.spec.stack import parse_stack  # noqa: PLC0415
    from kbinfra.stack import stack_of  # noqa: PLC0415
    from kbinfra.stack_folder import STACK_FILE  # noqa: PLC0415

    where = stack.dir / f"{STACK_FILE} (release {release.number})"
    spec, doc = parse_stack(release.stack_file, where)
    if spec.name != stack.spec.name:
        raise KbinfraError(
            f"release {release.number} is of stack {spec.name}, not {stack.spec.name}",
            where=str(where),
            fix="the target's record belongs to another stack: check --dir and the target",
        )
    if spec.swarm is not None:
        raise KbinfraError(
            f"release {release.number} is a Swarm stack's", where=str(where), fix="apply instead"
        )
    try:
        profile = ProfileModel.model_validate(release.profile)
    except ValueError:
        raise KbinfraError(
            f"release {release.number}'s profile is not valid",
            where=str(where),
            fix="the record was changed by hand: apply instead",
        ) from None
    return stack_of(stack.dir, spec, doc, profile)


def data_volume_moves(then: Stack, now: Stack) -> dict[str, tuple[str, str]]:
    """Service -> (its data volumes in ``then``, in ``now``), for each service whose data
    volumes differ between the two stacks."""
    moved: dict[str, tuple[str, str]] = {}
    for name, spec in now.containers.items():
        before = then.containers.get(name)
        if before is None:
            continue
        old = sorted(v.volume for v in before.volumes if v.data)
        new = sorted(v.volume for v in spec.volumes if v.data)
        if old != new:
            moved[name] = (", ".join(old) or "none", ", ".join(new) or "none")
    return moved


def refuse_data_volume_moves(release: Release, moves: Mapping[str, tuple[str, str]]) -> None:
    """Stop a rollback to ``release`` before anything changes when a service's data moved
    to another volume since (an upgrade across a PostgreSQL major version)."""
    if not moves:
        return
    service, (then, now) = next(iter(sorted(moves.items())))
    raise KbinfraError(
        f"release {release.number} ran {service} on volume {then}, today it runs on {now} "
        "(an upgrade moved its data): a rollback never moves data, so it does not go back "
        "across that; nothing was changed",
        fix=f"to go back to the data as it was at the upgrade (kept on {then}): put release "
        f"{release.number}'s services.{service} image and volume back in kbinfra.yaml and "
        f"`kbinfra apply`; what was written since is only on {now} "
        "(docs/operations.md, Upgrades)",
    )


def restore_stack_file(stack_dir: Path, text: str) -> bool:
    """Write ``text`` as kbinfra.yaml (atomically, same mode), keeping the old one; whether
    the file changed."""
    from kbinfra.stack_folder import STACK_FILE  # noqa: PLC0415

    path = stack_dir / STACK_FILE
    current = path.read_text(encoding="utf-8")
    if current == text:
        return False
    mode = path.stat().st_mode & 0o777
    keep = stack_dir / BEFORE_ROLLBACK
    temp = stack_dir / f".{STACK_FILE}.rollback-{os.getpid()}"
    for destination, content in ((keep, current), (path, text)):
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(temp, destination)
    return True
