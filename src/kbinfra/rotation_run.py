"""``kbinfra secrets rotate`` at the edges: the state file, the applies, the checks, the
commit. The sequence itself is :mod:`kbinfra.rotation` (pure).

The state of an unfinished rotation (its phase, the old and the new values) is one 0600 file,
``.kbinfra/rotation.json`` in the stack folder, written atomically before and after every
step; its values are never printed. secrets.yaml is replaced only once the old values are
revoked and the new ones accepted by every store that checks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.offsite.restic import OffsiteError
from kbinfra.offsite.rotate import RepositoryKeys, offsite_passwords, offsite_refusals
from kbinfra.private_file import write_private_file
from kbinfra.registry import service_part
from kbinfra.rotation import (
    COMMIT_ONLY,
    PHASE_WORDS,
    PHASES,
    Choice,
    Phase,
    RotationState,
    choose,
    committed_secrets,
    needs_apply,
    new_state,
    next_phase,
    view,
)
from kbinfra.rotation_state import read_state, state_path
from kbinfra.secrets import (
    dump_secrets,
    generate_secret,
    record_secret_dates,
    remember_secret_values,
    secrets_path,
)
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    from kbinfra.apply import ApplyResult
    from kbinfra.offsite.repository import SshSettings
    from kbinfra.plan import Plan
    from kbinfra.progress import Progress
    from kbinfra.stack import Stack
    from kbinfra.swarm.run import SwarmApplyResult, SwarmPlan
    from kbinfra.targets.base import Target


class RotationFailedError(KbinfraError):
    """A step of the rotation failed: the state file keeps where it stopped (exit 1)."""

    exit_code = 1


def write_state(stack_dir: Path, state: RotationState) -> None:
    write_private_file(state_path(stack_dir), state.model_dump_json(indent=2) + "\n")


def rotate_parts(stack: Stack) -> Iterator[tuple[str, ModuleType]]:
    """Each service of the stack whose folder has a ``rotate`` Part, with that Part."""
    for name in stack.families:
        part = service_part(name, "rotate")
        if part is not None:
            yield name, part


def stack_refusals(stack: Stack, part: ModuleType) -> Mapping[str, str]:
    """Why this stack cannot rotate secrets the Part otherwise takes (``refused``)."""
    refused: Mapping[str, str] = getattr(part, "refused", lambda _: {})(stack)
    return refused


def taken_secrets(stack: Stack, name: str, part: ModuleType) -> set[str]:
    """The secrets the store ``name`` checks and takes two values of at once."""
    return set(part.ROTATES) & checked_secrets(stack, name, part)


def checked_secrets(stack: Stack, name: str, part: ModuleType) -> set[str]:
    """The secrets the store ``name`` checks: its own, and those its rotate Part says it
    checks for other services (``checked``: PostgreSQL, the app tier's role password)."""
    service = stack.families[name]
    return set(service.secrets) | set(getattr(part, "checked", lambda _: ())(stack))


def on_a_swarm(stack: Stack) -> bool:
    return stack.spec.target == SWARM_TARGET


def swarm_gaps(stack: Stack) -> dict[str, str]:
    """On a Swarm, why each secret read by a service whose tasks cannot be replaced with no
    failed request cannot rotate: a Swarm service reads a secret from a Docker secret or
    config, which no running task re-reads, so a new value means new tasks."""
    from kbinfra.stack import secret_uses  # noqa: PLC0415

    gaps = {name: gap for name, gap in replacement_gaps(stack).items() if gap is not None}
    readers = {name: set(used) for name, used in secret_uses(stack.spec, stack.secrets).items()}
    for name, part in rotate_parts(stack):
        for secret in checked_secrets(stack, name, part):
            readers.setdefault(secret, set()).add(name)
    reasons = {}
    for secret, services in sorted(readers.items()):
        gapped = sorted(services & set(gaps))
        if gapped:
            reasons[secret] = (
                "on a Swarm a new value replaces the tasks that read it (no running task "
                f"re-reads a Docker secret), and {gaps[gapped[0]]}: requests fail meanwhile"
            )
    return reasons


def replacement_gaps(stack: Stack) -> dict[str, str | None]:
    """Each service of a Swarm stack, with why its tasks cannot be replaced with no failed
    request, or None (:func:`~kbinfra.swarm.placement.replacement_gap`)."""
    from kbinfra.swarm.placement import replacement_gap, stack_placements  # noqa: PLC0415

    return {
        name: replacement_gap(stack, name, placement)
        for name, placement in stack_placements(stack).items()
    }


def rotatable_secrets(stack: Stack) -> set[str]:
    """The stack's secrets that every service checking them takes two values of at once:
    each service folder's ``rotate`` Part says which of its secrets (``ROTATES``), less
    those this stack cannot (``refused``); and the restic password of each offsite
    repository (restic holds several keys at once). On a Swarm, less those a service reads
    whose tasks cannot be replaced with no failed request (:func:`swarm_gaps`)."""
    found: set[str] = set(offsite_passwords(stack.spec))
    for name, part in rotate_parts(stack):
        found |= taken_secrets(stack, name, part) - set(stack_refusals(stack, part))
    if on_a_swarm(stack):
        found -= set(swarm_gaps(stack))
    return found


def fresh_values(stack: Stack, names: Collection[str]) -> dict[str, str]:
    """A new value per secret: a store's rotate Part may draw it (``fresh_value``: PostgreSQL
    wants one that opens its idle login role)."""
    drawers: dict[str, Callable[[str, Callable[[], str]], str]] = {}
    for name, part in rotate_parts(stack):
        drawer = getattr(part, "fresh_value", None)
        if drawer is not None:
            drawers |= dict.fromkeys(taken_secrets(stack, name, part), drawer)
    return {
        name: drawers[name](stack.secrets[name], generate_secret)
        if name in drawers
        else generate_secret()
        for name in names
    }


@dataclass
class RotationResult:
    stack: str
    rotated: tuple[str, ...]
    not_rotatable: tuple[str, ...]
    resumed_from: str | None
    started: datetime
    applies: list[dict[str, Any]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    safe_copy: list[str] = field(default_factory=list)
    #: The phase ``--stop-after`` stopped at (secrets.yaml unchanged), or None: committed.
    stopped_after: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "rotated": list(self.rotated),
            "not_rotatable": list(self.not_rotatable),
            "resumed_from": self.resumed_from,
            "started": self.started.isoformat(timespec="seconds"),
            "applies": self.applies,
            "checks": self.checks,
            "safe_copy": self.safe_copy,
            "stopped_after": self.stopped_after,
        }


def refusal_reasons(stack: Stack) -> dict[str, str]:
    """Why a service cannot rotate a secret of its own, where its rotate Part says
    (``REFUSED``); and why an offsite repository's S3 keys are not kbinfra's to rotate."""
    reasons = offsite_refusals(stack.spec)
    for _, part in rotate_parts(stack):
        reasons.update(getattr(part, "REFUSED", {}))
        reasons.update(stack_refusals(stack, part))
    if on_a_swarm(stack):  # a service's own reason, where it gives one, says more
        for secret, gap in swarm_gaps(stack).items():
            reasons.setdefault(secret, gap)
    return reasons


def choose_secrets(stack: Stack, asked: list[str], *, every: bool) -> Choice:
    from kbinfra.stack import secret_uses  # noqa: PLC0415

    uses = secret_uses(stack.spec, stack.secrets)
    return choose(
        asked,
        every=every,
        existing=stack.secrets,
        in_use=[name for name, used in uses.items() if used],
        rotatable=rotatable_secrets(stack),
        pending=read_state(stack.dir),
        reasons=refusal_reasons(stack),
    )


def rotate(
    stack: Stack,
    target: Target,
    choice: Choice,
    *,
    now: datetime,
    say: Callable[[str], None],
    progress: Progress,
    ssh: SshSettings,
    timeout: float | None = None,
    stop_after: Phase | None = None,
) -> RotationResult:
    """Run (or finish) the rotation of ``choice.names``; the caller holds the stack's lock.
    ``ssh``: how restic reaches an SFTP offsite repository. ``stop_after``: stop once that
    phase is done (both values accepted), the state kept for a later run to finish."""
    state = read_state(stack.dir)
    if state is not None and state.stack != stack.spec.name:
        raise KbinfraError(
            f"the unfinished rotation in this folder is of stack {state.stack}, not "
            f"{stack.spec.name}; nothing was changed",
            where=str(state_path(stack.dir)),
            fix=f"put back `name: {state.stack}` in kbinfra.yaml and finish the rotation",
        )
    resumed = state.phase if state is not None else None
    refuse_stopping_where_it_is_past(state, stop_after, stack.dir)
    repositories = offsite_passwords(stack.spec)
    if state is None and (set(choice.names) - COMMIT_ONLY - set(repositories)):
        # each phase applies the whole stack: other pending changes would ride along
        moving = pending_changes(stack, target)
        if moving is not None:
            raise KbinfraError(
                "the stack has changes not applied yet"
                + (f" ({', '.join(moving)})" if moving else "")
                + ": a rotation would apply them too; nothing was changed",
                fix="`kbinfra plan` to see them, `kbinfra apply` them, then rotate",
            )
    if state is None:
        fresh = fresh_values(stack, choice.names)
        remember_secret_values(fresh.values())
        state = new_state(stack.spec.name, choice.names, stack.secrets, fresh, now)
        write_state(stack.dir, state)
        say(f"rotating {', '.join(state.names)}: {PHASE_WORDS['generated']}")
    else:
        say(f"finishing the rotation of {', '.join(state.names)} (it stopped at {state.phase})")
    result = RotationResult(
        stack.spec.name, state.names, choice.not_rotatable, resumed, state.started
    )
    outside = set(repositories) & set(state.names)
    refuse_applying_on_a_swarm(stack, state, outside)
    keys = [
        RepositoryKeys(repositories[name], stack.secrets, state.old[name], state.new[name], ssh)
        for name in sorted(outside)
    ]
    while (phase := next_phase(state.phase)) is not None:
        if needs_apply(state, outside) or keys:
            say(f"phase {phase}: {PHASE_WORDS[phase]} ...")
        for repository in keys:
            say(step_on_repository(repository, phase, state, stack.dir))
        if needs_apply(state, outside):
            shown = view(state, phase, stack.secrets, outside)
            phase_stack = dataclasses.replace(stack, secrets=shown.secrets, overlap=shown.overlap)
            if on_a_swarm(stack):
                refuse_a_gap_on_the_swarm(phase_stack, target, phase, state)
            applied = apply_phase(phase_stack, target, timeout=timeout, progress=progress)
            result.applies.append({"phase": phase, **applied.as_json()})
            if not applied.ok:
                raise phase_failed(applied, phase, state, stack.dir)
        state = state.advanced(phase)
        write_state(stack.dir, state)
        say(f"phase {phase} done")
        if phase == stop_after:
            result.stopped_after = phase
            say(f"stopped after phase {phase}: {STOPPED}")
            return result
    if needs_apply(state, outside):
        final = view(state, "revoked", stack.secrets, outside)
        result.checks = check_revoked(
            dataclasses.replace(stack, secrets=final.secrets), target, state
        )
    result.checks += [check_repository(repository, stack.dir) for repository in keys]
    for line in result.checks:
        say(line)
    commit(stack, state, now, say)
    result.safe_copy = safe_copy_lines(stack, state)
    return result


def commit(stack: Stack, state: RotationState, now: datetime, say: Callable[[str], None]) -> None:
    """secrets.yaml (0600) gets the new values, the dates record them, and the state file
    goes: the rotation is done."""
    values = committed_secrets(state, stack.secrets)
    write_private_file(secrets_path(stack.dir), dump_secrets(values))
    record_secret_dates(stack.dir, state.names, now)
    state_path(stack.dir).unlink(missing_ok=True)
    say(f"committed: secrets.yaml holds the new values of {', '.join(state.names)}")


#: What a rotation stopped by ``--stop-after`` leaves.
STOPPED = (
    "the old and the new values are both accepted; `kbinfra secrets rotate` finishes the "
    "rotation (apply refuses until then)"
)


def refuse_stopping_where_it_is_past(
    state: RotationState | None, stop_after: Phase | None, stack_dir: Path
) -> None:
    """``--stop-after`` on an unfinished rotation that has done that phase already."""
    if stop_after is None or state is None:
        return
    if PHASES.index(state.phase) >= PHASES.index(stop_after):
        raise KbinfraError(
            f"the unfinished rotation of {', '.join(state.names)} is at phase {state.phase} "
            f"already, not before {stop_after}; nothing was changed",
            where=str(state_path(stack_dir)),
            fix="run `kbinfra secrets rotate` without --stop-after to finish it",
        )


def phase_failed(
    applied: ApplyResult | SwarmApplyResult, phase: Phase, state: RotationState, stack_dir: Path
) -> RotationFailedError:
    """A phase's apply that failed: the state stays at the phase before, where every
    client's value is accepted."""
    failed = next((r for r in applied.services if r.outcome in ("failed", "skipped")), None)
    why = (
        f"{failed.service}: {failed.error}"
        if failed is not None
        else str(getattr(applied, "failure", None) or "the apply failed")
    )
    return RotationFailedError(
        f"phase {phase} of the rotation failed: {why}; the stack stays at phase "
        f"{state.phase}, where every client's value is accepted",
        where=str(state_path(stack_dir)),
        fix="fix the cause, then run `kbinfra secrets rotate` again to finish",
    )


def refuse_applying_on_a_swarm(stack: Stack, state: RotationState, outside: set[str]) -> None:
    """choose() refuses what a Swarm stack cannot rotate; an unfinished rotation started
    with another target (its state file) is not finished on a Swarm either."""
    if not on_a_swarm(stack):
        return
    cannot = sorted(set(state.names) - outside - COMMIT_ONLY - rotatable_secrets(stack))
    if cannot:
        raise KbinfraError(
            f"the unfinished rotation of {', '.join(state.names)} needs an apply that would "
            f"fail requests on a Swarm ({', '.join(cannot)}); nothing was changed",
            where=str(state_path(stack.dir)),
            fix="finish it with the target it was started on (`--target`)",
        )


def pending_changes(stack: Stack, target: Target) -> list[str] | None:
    """The services a plain apply would change now (an empty list: something else, a
    network or a secret), or None: the target is as the stack says."""
    if on_a_swarm(stack):
        from kbinfra.swarm.run import swarm_plan  # noqa: PLC0415
        from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

        assert isinstance(target, SwarmTarget)
        planned: Plan | SwarmPlan = swarm_plan(stack, target)
    else:
        from kbinfra.apply import plan_stack  # noqa: PLC0415

        planned = plan_stack(stack, target, with_diffs=False)
    if not planned.has_changes:
        return None
    return [a.service for a in planned.services if a.action != "nothing"]


def apply_phase(
    stack: Stack, target: Target, *, timeout: float | None, progress: Progress
) -> ApplyResult | SwarmApplyResult:
    """One phase's apply under the lock the caller holds: apply's health-gated path on one
    host, Swarm's rolling update (start-first, health-gated) on a Swarm."""
    if on_a_swarm(stack):
        from kbinfra.swarm.run import swarm_apply_held  # noqa: PLC0415
        from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

        assert isinstance(target, SwarmTarget)
        return swarm_apply_held(stack, target, timeout_s=timeout, progress=progress)
    from kbinfra.apply import apply_stack  # noqa: PLC0415

    return apply_stack(stack, target, timeout=timeout, progress=progress, lock_held=True)


def first_gap(stack: Stack, services: Collection[str]) -> tuple[str, str] | None:
    """The first of ``services`` (Swarm services by kbinfra's names) whose tasks cannot be
    replaced with no failed request, and why."""
    gaps = replacement_gaps(stack)
    for name in services:
        if name not in gaps:  # a store's streaming replica or one of its peers
            return name, f"{name} is pinned to its node as its store is"
        gap = gaps[name]
        if gap is not None:
            return name, gap
    return None


def refuse_a_gap_on_the_swarm(
    stack: Stack, target: Target, phase: Phase, state: RotationState
) -> None:
    """Before a phase's apply on a Swarm: every service it would replace must start its new
    task beside the old one. choose() saw to it from what each service reads; this asks the
    Swarm itself, so a rendered file that changes elsewhere stops the rotation first."""
    found = first_gap(stack, pending_changes(stack, target) or [])
    if found is None:
        return
    name, gap = found
    unchanged = state.phase == "generated"
    if unchanged:
        state_path(stack.dir).unlink(missing_ok=True)
    raise RotationFailedError(
        f"phase {phase} of the rotation would replace {name}'s tasks, and {gap}: requests "
        "would fail; "
        + ("nothing was changed" if unchanged else f"the stack stays at phase {state.phase}"),
        where=str(state_path(stack.dir)),
        fix="rotate it on one host, or with the service out of the Swarm stack",
    )


def step_on_repository(
    repository: RepositoryKeys, phase: Phase, state: RotationState, stack_dir: Path
) -> str:
    """One phase on an offsite repository's keys; a restic failure keeps the state."""
    try:
        return repository.advance(phase)
    except OffsiteError as error:
        raise RotationFailedError(
            f"phase {phase} of the rotation failed: {repository.name}: {error.what}; the "
            f"rotation stays at phase {state.phase}, and a password kbinfra holds opens the "
            "repository",
            where=str(state_path(stack_dir)),
            fix="fix the cause, then run `kbinfra secrets rotate` again to finish",
        ) from None


def check_repository(repository: RepositoryKeys, stack_dir: Path) -> str:
    try:
        return repository.check()
    except OffsiteError as error:
        raise RotationFailedError(
            f"{repository.name}: {error.what} after the rotation",
            where=str(state_path(stack_dir)),
            fix="run `kbinfra secrets rotate` again (it redoes the last phase)",
        ) from None


def check_revoked(stack: Stack, target: Target, state: RotationState) -> list[str]:
    """Ask each store of a rotated secret that the new value opens it and the old one no
    longer does; a store that still takes the old value stops the commit."""
    lines = []
    for name, part in rotate_parts(stack):
        mine = sorted(taken_secrets(stack, name, part) & set(state.names))
        if not mine:
            continue
        with target.probe_context(stack, stack.services[name]) as probe:
            for secret in mine:
                if not part.accepts(probe, secret, state.new[secret]):
                    raise RotationFailedError(
                        f"{name} refuses the new value of {secret} after the rotation",
                        where=str(state_path(stack.dir)),
                        fix="run `kbinfra secrets rotate` again (it reapplies the last phase)",
                    )
                if part.accepts(probe, secret, state.old[secret]):
                    raise RotationFailedError(
                        f"{name} still accepts the old value of {secret}",
                        where=str(state_path(stack.dir)),
                        fix="run `kbinfra secrets rotate` again (it reapplies the last phase)",
                    )
        lines.append(f"{name}: the new values open it, the old ones are refused: {', '.join(mine)}")
    return lines


def safe_copy_lines(stack: Stack, state: RotationState) -> list[str]:
    """What the user must do with the safe copy of secrets.yaml, and which backups need which
    copy, said plainly."""
    when = state.started.isoformat(timespec="seconds")
    served = [name for name in state.names if name not in COMMIT_ONLY]
    lines = [
        "secrets.yaml changed: refresh your safe copy of it NOW (the copy you keep off this "
        "host)"
        + (f"; the old copy's {', '.join(served)} no longer open anything" if served else ""),
    ]
    in_backups = []
    for name, part in rotate_parts(stack):
        rotated = checked_secrets(stack, name, part) & set(state.names)
        if rotated and getattr(part, "IN_BACKUPS", True):
            in_backups.append(name)
    if in_backups:
        lines.append(
            f"backups taken before {when} hold the old values of {', '.join(in_backups)}: keep "
            "the old safe copy with them until they expire"
        )
    else:
        lines.append(
            f"backups taken before {when} restore with the new copy: no backup holds these "
            "values"
            + (
                "; older backups verify with the previous backup key, which the new copy keeps "
                "verify-only"
                if set(state.names) & COMMIT_ONLY
                else ""
            )
        )
    return lines


def describe_state(stack_dir: Path) -> Mapping[str, Any] | None:
    """The unfinished rotation, without its values (for ``secrets list``)."""
    state = read_state(stack_dir)
    if state is None:
        return None
    return {
        "names": list(state.names),
        "phase": state.phase,
        "started": state.started.isoformat(timespec="seconds"),
    }
