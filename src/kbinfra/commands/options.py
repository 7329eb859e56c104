"""What the commands share: their options, so that each means the same everywhere, and how a
command that reaches a target opens.

Every such command takes ``--dir``, ``--target``, ``--known-hosts`` and ``--identity`` and
starts with :func:`open_stack_and_target`; it asks before it changes things with
:func:`confirm`, and reports long work through :func:`console_progress` (apply through
:func:`apply_progress`). No command module imports another.
"""

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kbinfra.errors import KbinfraError
from kbinfra.ui import Console, Output

if TYPE_CHECKING:
    from kbinfra.progress import Progress
    from kbinfra.stack import Stack
    from kbinfra.targets import Target

DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="Stack folder (holds kbinfra.yaml).", show_default=False)
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text or json.")]
TargetOption = Annotated[
    str | None,
    typer.Option("--target", help="local or ssh://user@host[:port] (default: the stack file's)."),
]
KnownHostsOption = Annotated[
    Path | None,
    typer.Option(
        "--known-hosts",
        help="known_hosts file (default: $KBINFRA_KNOWN_HOSTS or ~/.ssh/known_hosts).",
        show_default=False,
    ),
]
ForceUnlockOption = Annotated[
    bool, typer.Option("--force-unlock", help="Break the stack's lock even if its holder runs.")
]
IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity", help="SSH private key (default: $KBINFRA_SSH_IDENTITY, ssh config, agent)."
    ),
]


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


def console_progress(console: Console) -> "Progress":
    """Timed notes and transfer bars through ``console`` (kbinfra.progress loads only here)."""
    from kbinfra.progress import ConsoleProgress  # noqa: PLC0415 (not at every start)

    return ConsoleProgress(console)


def apply_progress(console: Console) -> "AbstractContextManager[Progress]":
    """Apply's display: a live line per service on a terminal; timed lines on stderr off a
    terminal or under ``--output json`` (stdout keeps the JSON alone)."""
    if console.json_mode or not sys.stderr.isatty():
        return nullcontext(console_progress(console))
    from kbinfra.live_progress import LiveApplyProgress  # noqa: PLC0415 (rich: only here)

    return LiveApplyProgress(console)
