"""``kbinfra backup``, ``kbinfra backup verify`` (the restore drill) and ``kbinfra restore``.

Each command parses options, calls one function of ``kbinfra.backup.run`` and prints.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kbinfra.commands.options import (
    DirOption,
    IdentityOption,
    KnownHostsOption,
    OutputOption,
    TargetOption,
    confirm,
    console_progress,
    open_stack_and_target,
)
from kbinfra.ui import Console, Output, format_bytes

if TYPE_CHECKING:
    from kbinfra.backup.run import BackupResult, RestoreResult

BackupDirArgument = Annotated[
    Path,
    typer.Argument(
        help="A backup directory, or `latest` (the newest in backup.root).", show_default=False
    ),
]

backup_app = typer.Typer(
    help="Back up the stack's data and files; `backup verify DIR` runs the restore drill.",
    invoke_without_command=True,
    rich_markup_mode=None,
)
#: Mounted by :mod:`kbinfra.cli` at the top level: ``kbinfra backup``, ``kbinfra restore``.
app = typer.Typer()
app.add_typer(backup_app, name="backup")


def _artifact_rows(result: "BackupResult") -> Iterator[tuple[str, str, str]]:
    from kbinfra.backup.run import summarize  # noqa: PLC0415

    stack_files = [a for a in result.manifest.artifacts if a.service == "stack"]
    for artifact in result.manifest.artifacts:
        if artifact.service != "stack":
            yield (
                artifact.path,
                format_bytes(artifact.size),
                summarize(artifact.counts, artifact.kind),
            )
    secret = sum(1 for a in stack_files if a.secret)
    detail = f"kbinfra.yaml, profile, rendered configs{', SECRETS' if secret else ''}"
    yield (
        f"stack/ ({len(stack_files)} files)",
        format_bytes(sum(a.size for a in stack_files)),
        detail,
    )


def print_backup(console: Console, result: "BackupResult") -> None:
    rate = result.bytes / result.seconds if result.seconds else 0.0
    console.line(
        f"backup {result.manifest.name} written to {result.path} "
        f"({format_bytes(result.bytes)} in {result.seconds:.1f}s, {format_bytes(rate)}/s)"
    )
    console.table(None, ["artifact", "size", "content"], list(_artifact_rows(result)))
    if result.retention is not None:
        deleted = ", ".join(result.retention.delete) or "none"
        console.line(f"retention: {len(result.retention.keep)} kept, deleted: {deleted}")
    for note in result.manifest.notes:
        console.note(note)


@backup_app.callback(invoke_without_command=True)
def backup(
    context: typer.Context,
    stack_dir: DirOption = Path(),
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            help="Folder to write the backup into (default: backup.root).",
            show_default=False,
        ),
    ] = None,
    include_secrets: Annotated[
        bool,
        typer.Option(
            "--include-secrets",
            help="Also keep secrets.yaml, the TLS key and role passwords (files 0600).",
        ),
    ] = False,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Back up every data service, the stack's files and extra volumes, then apply retention."""
    if context.invoked_subcommand is not None:
        return
    from kbinfra.backup.run import run_backup  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    with where:
        result = run_backup(
            stack,
            where,
            progress=console_progress(console),
            dest=dest,
            include_secrets=include_secrets,
        )
    if include_secrets:
        console.warn(f"{result.path} contains secrets: store and move it like them")
    if console.json_mode:
        console.emit_json(result.as_json())
    else:
        print_backup(console, result)


def print_checks(console: Console, result: "RestoreResult", what: str) -> None:
    rows = [
        (
            check.service,
            check.path,
            check.expected,
            check.found,
            "ok" if check.ok else f"{len(check.differences)} difference(s)",
        )
        for check in result.checks
    ]
    console.table(None, ["service", "artifact", "backup", "now", "result"], rows)
    for check in result.checks:
        for difference in check.differences:
            console.line(f"  ✗ {difference.describe()}")
        for warning in check.warnings:
            console.line(f"  ! {warning.describe()}")
    verdict = "identical to the backup" if result.ok else "DIFFERENT from the backup"
    console.line(f"{what}: {verdict} ({result.seconds:.1f}s)")


def _finish(console: Console, result: "RestoreResult", what: str) -> None:
    from kbinfra.backup.run import DifferencesError  # noqa: PLC0415

    for note in result.notes:
        console.note(note)
    if console.json_mode:
        console.emit_json(result.as_json())
    else:
        print_checks(console, result, what)
    differences = result.differences()
    if differences:
        raise DifferencesError(
            f"{what}: {len(differences)} difference(s); first: {differences[0].describe()}",
            where=str(result.backup),
            fix="see the table above; the backup's manifest is the reference",
        )


@backup_app.command("verify")
def verify(
    backup_dir: BackupDirArgument,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """The restore drill: restore into throwaway containers, compare, remove them.

    Exit 0: every count and sample matches the manifest; 1: a difference; 2: an error.
    """
    from kbinfra.backup.run import run_drill  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    with where:
        result = run_drill(stack, where, backup_dir, progress=console_progress(console))
    _finish(console, result, "restore drill")


@app.command()
def restore(
    backup_dir: BackupDirArgument,
    stack_dir: DirOption = Path(),
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="SERVICE",
            help="Restore only this service (repeatable); `volumes` too.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Restore without asking.")] = False,
    no_safety_backup: Annotated[
        bool,
        typer.Option("--no-safety-backup", help="Skip the backup of the current state first."),
    ] = False,
    allow_other_stack: Annotated[
        bool,
        typer.Option("--allow-other-stack", help="Restore a backup of another stack's name."),
    ] = False,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Verify a backup, back up the current state, restore, check health and content.

    Exit 0: restored and identical to the backup; 1: a difference; 2: an error (a corrupt
    or incompatible backup is refused before anything changes).
    """
    from kbinfra.backup.run import run_restore  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)

    def ask(question: str) -> bool:
        return yes or confirm(console, question)

    with where:
        result = run_restore(
            stack,
            where,
            backup_dir,
            progress=console_progress(console),
            confirm=ask,
            only=only,
            safety_backup=not no_safety_backup,
            allow_other_stack=allow_other_stack,
        )
    if result.safety_backup is not None:
        console.note(f"safety backup of the state before: {result.safety_backup}")
    _finish(console, result, "restore")
