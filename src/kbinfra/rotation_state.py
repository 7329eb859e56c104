"""Where an unfinished ``kbinfra secrets rotate`` is recorded, and the refusal of the commands
that deploy (apply, rollback, upgrade) while one is: light, since a no-op apply imports it
(the rotation itself is :mod:`kbinfra.rotation_run`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from kbinfra.errors import KbinfraError, SpecError
from kbinfra.rotation import RotationState
from kbinfra.secrets import refuse_readable_by_others, remember_secret_values
from kbinfra.stack_folder import ROTATION_FILE as STATE_FILE


def state_path(stack_dir: Path) -> Path:
    return stack_dir / STATE_FILE


def read_state(stack_dir: Path) -> RotationState | None:
    """The unfinished rotation of the stack in ``stack_dir``, or None; a file others can read
    or that is not a rotation state is refused (it holds secret values)."""
    path = state_path(stack_dir)
    if not path.is_file():
        return None
    refuse_readable_by_others(
        path, "the rotation state file", ", then `kbinfra secrets rotate` to finish the rotation"
    )
    try:
        state = RotationState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        raise SpecError(
            "the rotation state file is not one kbinfra wrote",
            where=str(path),
            fix="put back the file kbinfra wrote; without it the rotation cannot be finished "
            "(docs/operations.md, Secrets rotation)",
        ) from None
    remember_secret_values([*state.old.values(), *state.new.values()])
    return state


def refuse_while_rotating(stack_dir: Path, command: str) -> None:
    """Stop ``command`` (apply, rollback, upgrade) while a rotation is unfinished: it would
    deploy secrets.yaml's old values over the rotation's. The stack keeps serving meanwhile:
    every client holds a value its store accepts."""
    state = read_state(stack_dir)
    if state is not None:
        raise KbinfraError(
            f"{command}: a rotation of {', '.join(state.names)} is unfinished (phase "
            f"{state.phase}); nothing was changed",
            where=str(state_path(stack_dir)),
            fix="run `kbinfra secrets rotate` to finish it first",
        )
