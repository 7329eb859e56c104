"""How a command that reaches a target opens: the stack, its console, the target; and asks.

Every such command takes ``--dir``, ``--target``, ``--known-hosts`` and ``--identity``
(:mod:`kbinfra.commands.options`) and starts with :func:`open_stack_and_target`, so each
option means the same everywhere; a command asks before it changes things with
:func:`confirm`. No command module imports another.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError
from kbinfra.ui import Console

if TYPE_CHECKING:
    from kbinfra.stack import Stack
    from kbinfra.targets import Target


def open_stack_and_target(
    stack_dir: Path,
    target: str | None,
    known_hosts: Path | None,
    identity: Path | None,
    console: Console,
) -> "tuple[Stack, Target]":
    """Load the stack (its secrets then redacted from everything the console prints), show
    the profile's warnings, and open the target the stack file or ``--target`` names."""
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.targets import open_target  # noqa: PLC0415

    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    for warning in stack.profile.warnings():
        console.warn(warning)
    return stack, open_target(
        stack.spec, stack_dir, target=target, known_hosts=known_hosts, identity=identity
    )


def confirm(console: Console, question: str) -> bool:
    """Ask on the terminal; without one, refuse (the command's ``--yes`` skips the question)."""
    if not sys.stdin.isatty():
        raise KbinfraError(
            "cannot ask for confirmation without a terminal", fix="pass --yes to proceed"
        )
    console.note(question + " [y/N] ")
    return sys.stdin.readline().strip().lower() in ("y", "yes")
