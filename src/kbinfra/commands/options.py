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
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from kbinfra.errors import KbinfraError
from kbinfra.stack_folder import found_stack_dir
from kbinfra.ui import Console, Output

if TYPE_CHECKING:
    from kbinfra.progress import Progress
    from kbinfra.stack import Stack
    from kbinfra.targets import Target

#: Every option a user may want to set once for a shell session has a ``KBINFRA_*``
#: variable; ``--help`` shows it next to the option.
ENV_DIR = "KBINFRA_DIR"


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Option ``name`` came from the command line or its environment variable, not its
    default. (Compared by name: typer carries its own copy of click, whose enum this is.)"""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _given(ctx: typer.Context, param: typer.CallbackParam) -> bool:
    return param.name is not None and given_on_command_line(ctx, param.name)


def _found_stack_dir(ctx: typer.Context, param: typer.CallbackParam) -> Path | None:
    """The stack folder when ``--dir`` and ``KBINFRA_DIR`` are absent: the current one
    (kept relative, as messages show it) or the nearest above it."""
    return found_stack_dir(Path.cwd())


def _stack_dir_required(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    if _given(ctx, param) or ctx.resilient_parsing:
        return value
    found = _found_stack_dir(ctx, param)
    if found is None and isinstance(ctx.command, typer.core.TyperGroup):
        return value  # ``kbinfra backup verify --dir X``: the subcommand's --dir decides
    if found is None:
        raise KbinfraError(
            f"no kbinfra.yaml in {Path.cwd()} or any folder above it",
            fix="cd into the stack folder, pass --dir DIR (or set KBINFRA_DIR), "
            "or create one with `kbinfra init`",
        )
    return found


def _stack_dir_or_cwd(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    if _given(ctx, param) or ctx.resilient_parsing:
        return value
    return _found_stack_dir(ctx, param) or value


def _stack_dir_if_any(
    ctx: typer.Context, param: typer.CallbackParam, value: Path | None
) -> Path | None:
    if _given(ctx, param) or ctx.resilient_parsing:
        return value
    return _found_stack_dir(ctx, param)


_DIR_HELP = "Stack folder (holds kbinfra.yaml; default: the nearest above the current one)."


def _dir_option(help: str, callback: Any = None) -> Any:
    return typer.Option(
        "--dir",
        "-d",
        help=help,
        envvar=ENV_DIR,
        metavar="DIR",
        show_default=False,
        callback=callback,
    )


#: The stack folder of a command that needs one: ``--dir``, ``KBINFRA_DIR``, or found by
#: walking up from the current folder.
DirOption = Annotated[Path, _dir_option(_DIR_HELP, _stack_dir_required)]
#: The same, for a command that can also start from a folder without a stack file
#: (``restore`` onto a bare host): the current folder when none is found above.
DirOrHereOption = Annotated[Path, _dir_option(_DIR_HELP, _stack_dir_or_cwd)]
#: The stack folder of a command that works without a stack too (``ssh trust``,
#: ``profiles show``): None when there is none.
OptionalDirOption = Annotated[
    Path | None,
    _dir_option(
        "Stack folder whose settings to use (default: the nearest above the current one).",
        _stack_dir_if_any,
    ),
]
#: The folder ``init`` creates: never searched for.
NewDirOption = Annotated[
    Path, _dir_option("Stack folder to create or complete (default: the current one).")
]
OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", help="text or json.", envvar="KBINFRA_OUTPUT"),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="local or ssh://user@host[:port] (default: the stack file's).",
        envvar="KBINFRA_TARGET",
        metavar="TARGET",
        show_default=False,
    ),
]
KnownHostsOption = Annotated[
    Path | None,
    typer.Option(
        "--known-hosts",
        help="known_hosts file (default: ~/.ssh/known_hosts).",
        envvar="KBINFRA_KNOWN_HOSTS",
        metavar="FILE",
        show_default=False,
    ),
]
HealthTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Seconds each new container has to become healthy.",
        min=1,
        show_default=False,
    ),
]
ForceUnlockOption = Annotated[
    bool, typer.Option("--force-unlock", help="Break the stack's lock even if its holder runs.")
]
IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        help="SSH private key (default: ssh config, agent). The connection is shared "
        "with later runs for KBINFRA_SSH_PERSIST seconds (60; 0: closed at exit).",
        envvar="KBINFRA_SSH_IDENTITY",
        metavar="FILE",
        show_default=False,
    ),
]


def split_names(values: list[str] | None) -> list[str]:
    """``--only a,b --only c`` → ``[a, b, c]``: the one reading of a service selection."""
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def _split_names_callback(value: list[str] | None) -> list[str]:
    return split_names(value)


def only_option(help: str) -> Any:
    """``--only SERVICE``: repeated or comma-separated, read by :func:`split_names` alike in
    every command that takes a service selection."""
    return typer.Option(
        "--only",
        metavar="SERVICE[,SERVICE]",
        help=f"{help} Repeat it or separate names with commas.",
        callback=_split_names_callback,
        show_default=False,
    )


def open_stack_and_target(
    stack_dir: Path,
    target: str | None,
    known_hosts: Path | None,
    identity: Path | None,
    console: Console,
    *,
    swarm: bool = False,
) -> "tuple[Stack, Target]":
    """Load the stack (its secrets then redacted from everything the console prints) and
    open the target the stack file or ``--target`` names.

    The profile's own warnings (headroom, CPU overcommit) are not repeated here: ``init``,
    ``profiles show``, ``render`` and ``plan`` show them (:func:`warn_about_profile`), where
    one looks at the sizing, not every command of the day. ``swarm``: the command handles
    a Swarm stack (``target.kind == "swarm"``); the others refuse one in one line."""
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.targets import open_target  # noqa: PLC0415

    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    return stack, open_target(
        stack.spec,
        stack_dir,
        target=target,
        known_hosts=known_hosts,
        identity=identity,
        swarm=swarm,
    )


def warn_about_profile(console: Console, stack: "Stack") -> None:
    for warning in stack.profile.warnings():
        console.warn(warning)


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


def examples(*commands: str) -> str:
    """A command's ``--help`` epilog: its examples, kept as written (click's ``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {command}" for command in commands)
