"""The sequence of ``kbinfra secrets rotate``, pure: which secrets, which phase, what each
phase deploys. The I/O (the state file, apply, the checks) is :mod:`kbinfra.rotation_run`.

A rotation moves every chosen secret through the same phases together, each one an apply
of the stack through its health-gated path with a *view* of the secrets: the value clients
use (``Stack.secrets``) and the other value their store accepts beside it (``Stack.overlap``):

=========  ===================================  =================================
phase      clients use                          the store accepts
=========  ===================================  =================================
added      the old value                        old and new (the overlap)
moved      the new value                        new and old
revoked    the new value                        the new value only
=========  ===================================  =================================

Then ``secrets.yaml`` is replaced (atomically, 0600) by the new values and the state file is
removed: ``committed``. The state file records the last phase that *completed*; each step is
an apply, which converges whatever an interrupted one left, so a rerun redoes the step after
it. A kill -9 anywhere leaves the stack in a phase's view or between two neighbouring ones,
and every client holds a value its store accepts in both.

A secret no service reads at all (the backup signing key) needs no apply: its commit keeps
the old value verify-only (:mod:`kbinfra.backup.signing`). A secret whose store is outside
the stack (an offsite repository's restic password, ``outside`` below) needs no apply either:
each phase is a step on that store itself (:mod:`kbinfra.offsite.rotate`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kbinfra.errors import KbinfraError
from kbinfra.secrets import BACKUP_KEY_SECRET, PREVIOUS_BACKUP_KEYS_SECRET

Phase = Literal["generated", "added", "moved", "revoked"]
#: In order; after the last one comes the commit.
PHASES: tuple[Phase, ...] = ("generated", "added", "moved", "revoked")
#: What each phase's apply does, for the progress lines.
PHASE_WORDS: dict[Phase, str] = {
    "generated": "new values generated",
    "added": "the new values added beside the old ones (both accepted)",
    "moved": "every client moved to the new values (the old ones still accepted)",
    "revoked": "the old values revoked",
}
#: Rotated by its commit alone: kbinfra itself is its only user, and keeps the old value.
COMMIT_ONLY = frozenset({BACKUP_KEY_SECRET})
#: Why a secret no service's rotate Part takes cannot be rotated, when its service says nothing.
NOT_BUILT = "no service of this stack takes two values of it at once"


class RotationState(BaseModel):
    """An unfinished rotation, as its 0600 state file holds it (values included)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stack: str = Field(min_length=1)
    names: tuple[str, ...] = Field(min_length=1)
    old: dict[str, str]
    new: dict[str, str]
    phase: Phase
    started: datetime

    def advanced(self, phase: Phase) -> RotationState:
        return self.model_copy(update={"phase": phase})


@dataclass(frozen=True)
class SecretsView:
    """What one phase deploys: the values clients use, and the others their stores accept."""

    secrets: dict[str, str]
    overlap: dict[str, str]


def next_phase(phase: Phase) -> Phase | None:
    """The phase after ``phase``, or None when the next step is the commit."""
    index = PHASES.index(phase)
    return PHASES[index + 1] if index + 1 < len(PHASES) else None


def applied_names(state: RotationState, outside: Collection[str] = ()) -> list[str]:
    """The rotating secrets a service reads: not kbinfra's own (``COMMIT_ONLY``), not those
    whose store is outside the stack (``outside``: the offsite repositories' passwords)."""
    return [n for n in state.names if n not in COMMIT_ONLY and n not in outside]


def view(
    state: RotationState,
    phase: Phase,
    current: Mapping[str, str],
    outside: Collection[str] = (),
) -> SecretsView:
    """The secrets ``phase`` deploys: ``current`` (secrets.yaml, still the old values) with
    the rotating ones as the phase has them. ``generated`` deploys what runs already."""
    names = applied_names(state, outside)
    secrets = dict(current)
    overlap: dict[str, str] = {}
    for name in names:
        old, new = state.old[name], state.new[name]
        if phase in ("generated", "added"):
            secrets[name] = old
            if phase == "added":
                overlap[name] = new
        else:
            secrets[name] = new
            if phase == "moved":
                overlap[name] = old
    return SecretsView(secrets, overlap)


def committed_secrets(state: RotationState, current: Mapping[str, str]) -> dict[str, str]:
    """secrets.yaml once the rotation is done: the new values; the backup key's old value
    kept first among the verify-only keys (so every older backup still verifies)."""
    values = {**current, **{name: state.new[name] for name in state.names}}
    if BACKUP_KEY_SECRET in state.names:
        previous = current.get(PREVIOUS_BACKUP_KEYS_SECRET, "").split()
        old = state.old[BACKUP_KEY_SECRET]
        values[PREVIOUS_BACKUP_KEYS_SECRET] = " ".join(
            [old, *(key for key in previous if key != old)]
        )
    return values


def needs_apply(state: RotationState, outside: Collection[str] = ()) -> bool:
    """Whether any rotating secret is read by a service (else no phase applies the stack)."""
    return bool(applied_names(state, outside))


@dataclass(frozen=True)
class Choice:
    """The secrets a rotation takes, and the ones of ``--all`` it cannot rotate yet."""

    names: tuple[str, ...]
    not_rotatable: tuple[str, ...]


def choose(
    asked: Collection[str],
    *,
    every: bool,
    existing: Collection[str],
    in_use: Collection[str],
    rotatable: Collection[str],
    pending: RotationState | None,
    reasons: Mapping[str, str] | None = None,
) -> Choice:
    """Which secrets to rotate: the pending rotation's (to finish it), the named ones, or with
    ``every`` each one kbinfra can rotate. A named secret kbinfra cannot rotate, or another
    rotation than the unfinished one, is refused before anything changes. ``existing``: the
    names secrets.yaml holds; ``in_use``: those the stack uses (what ``--all`` covers);
    ``reasons``: why a service cannot rotate one of its secrets, where it says."""
    reasons = reasons or {}
    can = set(rotatable) | (COMMIT_ONLY & set(existing))
    if pending is not None:
        # A rerun of the same command (the same names, or --all, or none) finishes it.
        if asked and set(asked) != set(pending.names):
            raise KbinfraError(
                f"a rotation of {', '.join(pending.names)} is unfinished (phase "
                f"{pending.phase}): it is finished first; nothing was changed",
                fix="run `kbinfra secrets rotate` with no names to finish it, then "
                "start the next one",
            )
        return Choice(pending.names, ())
    if every and asked:
        raise KbinfraError(
            "name the secrets to rotate or pass --all, not both",
            fix="`kbinfra secrets rotate --all`, or `kbinfra secrets rotate NAME...`",
        )
    if not every and not asked:
        raise KbinfraError(
            "no secret named and no rotation to finish",
            fix="name the secrets (`kbinfra secrets list`), or pass --all",
        )
    if every:
        used = set(existing) & set(in_use)
        names = tuple(sorted(can & used))
        rest = tuple(sorted(used - can - {PREVIOUS_BACKUP_KEYS_SECRET}))
        if not names:
            raise KbinfraError(
                "kbinfra can rotate none of this stack's secrets yet",
                fix="change them by hand (docs/operations.md, Secrets rotation): "
                + ", ".join(rest),
            )
        return Choice(names, rest)
    unknown = sorted(set(asked) - set(existing))
    if unknown:
        raise KbinfraError(
            f"secrets.yaml has no secret {', '.join(unknown)}",
            fix="name one that `kbinfra secrets list` shows",
        )
    refused = sorted(set(asked) - can)
    if refused:
        why = "; ".join(f"{name}: {reasons.get(name, NOT_BUILT)}" for name in refused)
        raise KbinfraError(
            f"kbinfra cannot rotate {', '.join(refused)} yet ({why}); nothing was changed",
            fix="rotate the others, and change these by hand (docs/operations.md, "
            "Secrets rotation)",
        )
    return Choice(tuple(sorted(set(asked))), ())


def new_state(
    stack: str,
    names: Collection[str],
    current: Mapping[str, str],
    generate: Mapping[str, str],
    started: datetime,
) -> RotationState:
    """The state of a rotation about to start: ``generate`` holds a fresh value per name."""
    return RotationState(
        stack=stack,
        names=tuple(sorted(names)),
        old={name: current[name] for name in names},
        new={name: generate[name] for name in names},
        phase="generated",
        started=started,
    )
