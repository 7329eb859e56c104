"""Plan files: ``kbinfra plan --out FILE`` saves a plan, ``kbinfra apply FILE`` applies
exactly it, or refuses when the stack or the target changed since.

What a plan does is decided by two things, each reduced to one digest here:
- what the stack wants: each service's config hash and each rendered file's hash (so any
  change of the stack file, profile, secrets or TLS files that changes an output shows);
- what the target has: each container of the stack (id, state, image, config hash), the
  images present and the deployed files' hashes (health is left out: a service going from
  starting to healthy does not change what apply does).
The same two digests of the same state always agree; any other change of either refuses
the plan file. A plan file holds no secret (its diffs are redacted as every plan's are) and
is read as untrusted input: validated by type, never executed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kbinfra.errors import KbinfraError, SpecError, unreadable
from kbinfra.plan import sha256_text

if TYPE_CHECKING:
    from kbinfra.containers import DesiredService, Facts
    from kbinfra.plan import Plan
    from kbinfra.service import RenderedFile

FORMAT = "kbinfra-plan/1"
#: A plan file is a few kilobytes of JSON; anything much larger is not one.
MAX_BYTES = 4 * 1024 * 1024

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]


class PlanOutdatedError(KbinfraError):
    """The stack or the target is no longer what the plan file was made against."""


def _digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def desired_digest(
    desired: Mapping[str, DesiredService], rendered: Collection[RenderedFile]
) -> str:
    return _digest(
        {
            "services": {name: service.config_hash for name, service in desired.items()},
            "files": {file.path: sha256_text(file.text) for file in rendered},
        }
    )


def observed_digest(facts: Facts) -> str:
    return _digest(
        {
            "containers": sorted(
                [c.name, c.id, c.state, c.image_id, dict(c.labels)] for c in facts.containers
            ),
            "images": dict(facts.images),
            "files": dict(facts.deployed_files),
        }
    )


class PlanFile(BaseModel):
    """A saved plan: what it was made against, and the plan itself for people to read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["kbinfra-plan/1"]
    kbinfra: Annotated[str, StringConstraints(max_length=64)]
    stack: ServiceName
    target: Annotated[str, StringConstraints(max_length=512)]
    only: list[ServiceName] = Field(default_factory=list, max_length=64)
    desired: Digest
    observed: Digest
    changes: bool
    plan: dict[str, Any]


def plan_document(
    plan: Plan,
    *,
    version: str,
    only: Collection[str],
    desired: Mapping[str, DesiredService],
    rendered: Collection[RenderedFile],
    facts: Facts,
) -> PlanFile:
    return PlanFile(
        format=FORMAT,
        kbinfra=version,
        stack=plan.stack,
        target=plan.target,
        only=sorted(only),
        desired=desired_digest(desired, rendered),
        observed=observed_digest(facts),
        changes=plan.has_changes,
        plan=plan.as_json(),
    )


def write_plan_file(path: Path, document: PlanFile) -> None:
    """Atomically, mode 0600 (diffs of configuration are nobody else's business)."""
    from kbinfra.private_file import write_private_file  # noqa: PLC0415

    text = json.dumps(document.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    try:
        write_private_file(path, text)
    except OSError as error:
        raise KbinfraError(
            f"cannot write the plan file: {unreadable(error)}",
            where=str(path),
            fix="give --out a path in a folder you can write",
        ) from None


def read_plan_file(path: Path) -> PlanFile:
    fix = "make a new one with `kbinfra plan --out FILE`"
    try:
        if path.is_dir():
            raise SpecError("is a directory, not a plan file", where=str(path), fix=fix)
        if path.stat().st_size > MAX_BYTES:
            raise SpecError("is too large to be a plan file", where=str(path), fix=fix)
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("plan file not found", where=str(path), fix=fix) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(
            f"cannot read the plan file: {unreadable(error)}", where=str(path)
        ) from None
    except json.JSONDecodeError as error:
        raise SpecError(
            f"not a plan file: not JSON ({error.msg} at line {error.lineno})",
            where=str(path),
            fix=fix,
        ) from None
    if isinstance(raw, dict) and raw.get("format") not in (None, FORMAT):
        raise SpecError(
            f"plan file format {str(raw.get('format'))[:40]!r} is not {FORMAT}",
            where=str(path),
            fix=fix + " with this kbinfra",
        )
    try:
        return PlanFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "the file"
        raise SpecError(
            f"not a usable plan file: {field}: {first['msg']}", where=str(path), fix=fix
        ) from None


def check_plan_file(
    document: PlanFile,
    *,
    stack: str,
    target: str,
    desired: Mapping[str, DesiredService],
    rendered: Collection[RenderedFile],
    facts: Facts,
    where: str,
) -> None:
    """Refuse (exit 2, before anything changes) a plan made for another stack or target, or
    against a stack or target state that is not the one seen now."""
    again = "run `kbinfra plan --out FILE` again, review it, then `kbinfra apply FILE`"
    if document.stack != stack:
        raise PlanOutdatedError(
            f"the plan file is for stack {document.stack!r}, not {stack!r}", where=where, fix=again
        )
    if document.target != target:
        raise PlanOutdatedError(
            f"the plan file is for target {document.target}, not {target}", where=where, fix=again
        )
    if document.desired != desired_digest(desired, rendered):
        raise PlanOutdatedError(
            "the stack changed since the plan was made (its stack file, profile, secrets or "
            "TLS files now render other configuration)",
            where=where,
            fix=again,
        )
    if document.observed != observed_digest(facts):
        raise PlanOutdatedError(
            f"the target {target} changed since the plan was made (containers, images or "
            "deployed files are not what the plan saw)",
            where=where,
            fix=again,
        )
