"""``kbinfra backup``, ``kbinfra backup verify`` (the restore drill) and ``kbinfra restore``.

Each command parses options, calls one function of ``kbinfra.backup.run`` and prints.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kbinfra.commands.options import (
    DirOption,
    DirOrHereOption,
    IdentityOption,
    KnownHostsOption,
    OutputOption,
    TargetOption,
    confirm,
    console_progress,
    examples,
    only_option,
    open_stack_and_target,
)
from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.ui import Console, Output, format_bytes

if TYPE_CHECKING:
    from kbinfra.backup.run import BackupResult, RestoreResult
    from kbinfra.offsite.repository import SshSettings
    from kbinfra.offsite.run import Upload
    from kbinfra.stack import Stack

BackupDirArgument = Annotated[
    Path,
    typer.Argument(
        metavar="BACKUP_DIR",
        help="A backup directory, or `latest` (the newest in backup.root).",
        show_default=False,
    ),
]

AllowUnsignedOption = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned",
        help="Accept a backup without a signature (made before kbinfra signed backups): "
        "anyone who could write its folder could have forged it.",
    ),
]
AllowOtherStackOption = Annotated[
    bool,
    typer.Option("--allow-other-stack", help="Use a backup of another stack's name."),
]
RepoOption = Annotated[
    list[str] | None,
    typer.Option(
        "--repo",
        metavar="NAME",
        help="Only this offsite repository of backup.offsite (repeatable).",
    ),
]

backup_app = typer.Typer(
    help="Back up the stack's data and files; `backup verify DIR` runs the restore drill.",
    epilog=examples(
        "kbinfra backup",
        "kbinfra backup --include-secrets --dest /mnt/safe",
        "kbinfra backup verify latest",
    ),
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


class OffsiteFailedError(KbinfraError):
    """The local backup is written; sending it to a repository failed."""

    exit_code = 1


def _ssh(known_hosts: Path | None, identity: Path | None) -> "SshSettings":
    from kbinfra.offsite.run import ssh_settings  # noqa: PLC0415

    return ssh_settings(known_hosts, identity)


def print_uploads(console: Console, uploads: "Sequence[Upload]") -> None:
    rows = [
        (
            u.repository,
            u.backup,
            "already there" if u.skipped else (u.snapshot or "-"),
            format_bytes(u.bytes_added) if u.snapshot else "-",
            f"{u.seconds:.1f}s",
            ", ".join(u.removed) or "-",
            "FAILED" if u.error else "ok",
        )
        for u in uploads
    ]
    headers = ["offsite", "backup", "snapshot", "added", "time", "retention removed", "result"]
    console.table(None, headers, rows)


def _finish_offsite(
    console: Console,
    stack: "Stack",
    uploads: "Sequence[Upload]",
    document: dict[str, Any],
    local: Path | None,
) -> None:
    """Print the uploads and the safe copy's status; a failed upload fails the command."""
    from kbinfra.backup.run import backup_root  # noqa: PLC0415
    from kbinfra.offsite.records import safe_copy_status  # noqa: PLC0415
    from kbinfra.offsite.run import failed_uploads  # noqa: PLC0415

    safe_copy = None
    if stack.spec.backup.offsite:
        safe_copy = safe_copy_status(
            stack.dir,
            stack.spec.tls.key,
            [r.password_secret for r in stack.spec.backup.offsite],
            backup_root(stack),
            dt.datetime.now(dt.UTC).replace(microsecond=0),
        )
    document = {**document, "offsite": [u.as_json() for u in uploads]}
    document["safe_copy"] = safe_copy.as_json() if safe_copy else None
    if console.json_mode:
        console.emit_json(document)
    elif uploads:
        print_uploads(console, uploads)
    if safe_copy is not None:
        (console.warn if safe_copy.changed else console.note)(safe_copy.describe())
    failed = failed_uploads(uploads)
    if failed:
        stays = f"; the local backup stays at {local}" if local else ""
        raise OffsiteFailedError(
            f"offsite upload to {', '.join(u.repository for u in failed)} failed{stays}: "
            f"{failed[0].error}",
            fix="fix the repository, then run `kbinfra backup --offsite-only`",
        )


@backup_app.callback(invoke_without_command=True)
def backup(
    context: typer.Context,
    stack_dir: DirOption = Path(),
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            metavar="DIR",
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
    no_offsite: Annotated[
        bool, typer.Option("--no-offsite", help="Do not send this backup offsite.")
    ] = False,
    offsite_only: Annotated[
        bool,
        typer.Option(
            "--offsite-only",
            help="Take no new backup: send the newest local one to repositories lacking it.",
        ),
    ] = False,
    repo: RepoOption = None,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Back up every data service, the stack's files and extra volumes, apply retention,
    and send the backup to every offsite repository (backup.offsite)."""
    if context.invoked_subcommand is not None:
        return
    from kbinfra.backup.run import run_backup  # noqa: PLC0415

    if no_offsite and offsite_only:
        raise typer.BadParameter("--no-offsite and --offsite-only exclude each other")
    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    progress = console_progress(console)
    ssh = _ssh(known_hosts, identity)
    if offsite_only:
        from kbinfra.offsite.run import select_repositories, send_newest_missing  # noqa: PLC0415

        uploads = send_newest_missing(stack, select_repositories(stack, repo), ssh, progress)
        document: dict[str, Any] = {"offsite": [u.as_json() for u in uploads]}
        _finish_offsite(console, stack, uploads, document, local=None)
        return
    with where:
        result = run_backup(
            stack, where, progress=progress, dest=dest, include_secrets=include_secrets
        )
    if include_secrets:
        console.warn(f"{result.path} contains secrets: store and move it like them")
    uploads = []
    if stack.spec.backup.offsite and not no_offsite and dest is None:
        from kbinfra.offsite.run import select_repositories, send_backup  # noqa: PLC0415

        uploads = send_backup(stack, result.path, select_repositories(stack, repo), ssh, progress)
    if not console.json_mode:
        print_backup(console, result)
    _finish_offsite(console, stack, uploads, result.as_json(), local=result.path)


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


def _warn_unsigned(console: Console, allow_unsigned: bool) -> None:
    if allow_unsigned:
        console.warn(
            "--allow-unsigned: an unsigned backup is used as it is; anyone who could write "
            "its folder could have altered it"
        )


def _finish(
    console: Console, result: "RestoreResult", what: str, extra: dict[str, Any] | None = None
) -> None:
    from kbinfra.backup.run import DifferencesError  # noqa: PLC0415

    if not result.signed:
        console.warn(f"{result.backup} is not signed: it was used because of --allow-unsigned")
    for note in result.notes:
        console.note(note)
    if console.json_mode:
        console.emit_json({**result.as_json(), **(extra or {})})
    else:
        print_checks(console, result, what)
    differences = result.differences()
    if differences:
        raise DifferencesError(
            f"{what}: {len(differences)} difference(s); first: {differences[0].describe()}",
            where=str(result.backup),
            fix="see the table above; the backup's manifest is the reference",
        )


@backup_app.command("list", epilog=examples("kbinfra backup list", "kbinfra backup list --offsite"))
def list_command(
    stack_dir: DirOption = Path(),
    offsite: Annotated[
        bool, typer.Option("--offsite", help="Also list every offsite repository's backups.")
    ] = False,
    repo: RepoOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Local (and offsite) backups: date, size, complete, and when a drill last passed."""
    from kbinfra.backup.run import backup_root, list_backups  # noqa: PLC0415
    from kbinfra.backup.signing import backup_keys  # noqa: PLC0415
    from kbinfra.offsite.listing import backup_listing  # noqa: PLC0415
    from kbinfra.offsite.records import verified_backups  # noqa: PLC0415
    from kbinfra.offsite.run import (  # noqa: PLC0415
        list_offsite,
        local_sizes,
        select_repositories,
    )
    from kbinfra.stack import open_stack  # noqa: PLC0415

    console = Console(output)
    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    root = backup_root(stack)
    remote = []
    if offsite:
        repositories = select_repositories(stack, repo)
        remote = list_offsite(stack, repositories, _ssh(known_hosts, identity))
    listing = backup_listing(
        stack.spec.name,
        list_backups(root, backup_keys(stack.secrets)),
        local_sizes(stack),
        remote,
        verified_backups(root),
    )
    if console.json_mode:
        console.emit_json(listing.as_json())
        return
    columns = ["backup", "created", "size", "local", *(f"offsite {r.repository}" for r in remote)]
    console.table(None, columns, listing.rows())
    for listed in remote:
        if listed.error:
            console.warn(listed.error)
    if any(r.error for r in remote):
        raise KbinfraError(
            "an offsite repository could not be listed", fix="see the warnings above"
        )


@backup_app.command(
    "schedule",
    epilog=examples("kbinfra backup schedule --at 02:15", "kbinfra backup schedule --remove"),
)
def schedule(
    stack_dir: DirOption = Path(),
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="systemd|cron",
            help="systemd or cron (default: systemd when it runs here, else cron).",
            show_default=False,
        ),
    ] = None,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            metavar="DIR",
            help="Folder for the files (default /etc/systemd/system or /etc/cron.d).",
            show_default=False,
        ),
    ] = None,
    at: Annotated[
        str, typer.Option("--at", metavar="HH:MM", help="Nightly backup time.")
    ] = "03:30",
    drill_day: Annotated[
        str,
        typer.Option("--drill-day", metavar="DAY", help="Weekday of the drill, two hours later."),
    ] = "Sun",
    remove: Annotated[bool, typer.Option("--remove", help="Remove the files instead.")] = False,
    output: OutputOption = Output.text,
) -> None:
    """Nightly backup (+ offsite) and a weekly restore drill as a systemd timer or cron entry."""
    import getpass  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from kbinfra.offsite import schedule as plan  # noqa: PLC0415
    from kbinfra.spec.stack import load_stack  # noqa: PLC0415

    console = Console(output)
    spec, _ = load_stack(stack_dir)
    chosen = kind or ("systemd" if Path("/run/systemd/system").is_dir() else "cron")
    if chosen not in ("systemd", "cron"):
        raise typer.BadParameter("--kind is systemd or cron")
    folder = into or Path("/etc/systemd/system" if chosen == "systemd" else "/etc/cron.d")
    job_list = plan.jobs(
        [sys.executable, "-m", "kbinfra"], stack_dir.absolute(), offsite=bool(spec.backup.offsite)
    )
    hour_minute, day = plan.parse_time_of_day(at), plan.parse_day(drill_day)
    if chosen == "systemd":
        files = plan.systemd_files(spec.name, job_list, folder, hour_minute, day)
    else:
        user = getpass.getuser()
        files = [plan.cron_file(spec.name, job_list, folder, hour_minute, day, user=user)]
    for file in files:
        if remove:
            file.path.unlink(missing_ok=True)
        else:
            file.path.parent.mkdir(parents=True, exist_ok=True)
            file.path.write_text(file.text, encoding="utf-8")
    document = {
        "kind": chosen,
        "removed" if remove else "written": [str(f.path) for f in files],
        "jobs": {job.name: job.command for job in job_list},
    }
    if console.json_mode:
        console.emit_json(document)
        return
    for file in files:
        console.line(f"{'removed' if remove else 'wrote'} {file.path}")
    if not remove:
        for job in job_list:
            console.line(f"{job.name}: {job.command}")
        if chosen == "systemd":
            timers = " ".join(f.path.name for f in files if f.path.suffix == ".timer")
            console.note(f"enable them: systemctl daemon-reload && systemctl enable --now {timers}")


@backup_app.command(
    "verify",
    epilog=examples("kbinfra backup verify", "kbinfra backup verify --offsite --repo nas"),
)
def verify(
    backup_dir: BackupDirArgument = Path("latest"),
    stack_dir: DirOption = Path(),
    allow_unsigned: AllowUnsignedOption = False,
    allow_other_stack: AllowOtherStackOption = False,
    offsite: Annotated[
        bool,
        typer.Option(
            "--offsite",
            help="restic check of every offsite repository, then the drill on a fetched copy "
            "(BACKUP_DIR: latest or a backup name).",
        ),
    ] = False,
    read_data_subset: Annotated[
        str,
        typer.Option(
            metavar="SHARE",
            help="With --offsite: share of pack files restic check reads (5%, 1/10…).",
        ),
    ] = "10%",
    repo: RepoOption = None,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """The restore drill: restore into throwaway containers, compare, remove them.

    Exit 0: every count and sample matches the manifest; 1: a difference; 2: an error
    (with --offsite also: a repository that restic check finds damaged).
    """
    from kbinfra.backup.run import backup_root, run_drill  # noqa: PLC0415
    from kbinfra.offsite.records import LOCAL, record_verified  # noqa: PLC0415

    console = Console(output)
    _warn_unsigned(console, allow_unsigned)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    progress = console_progress(console)
    if not offsite:
        with where:
            result = run_drill(
                stack,
                where,
                backup_dir,
                progress=progress,
                allow_other_stack=allow_other_stack,
                allow_unsigned=allow_unsigned,
            )
        if result.ok:
            record_verified(backup_root(stack), LOCAL, result.backup.name, _now())
        _finish(console, result, "restore drill")
        return
    from kbinfra.offsite.run import (  # noqa: PLC0415
        check_repositories,
        fetch_backup,
        scratch_dir,
        select_repositories,
    )

    ssh = _ssh(known_hosts, identity)
    repositories = select_repositories(stack, repo)
    checks = check_repositories(stack, repositories, ssh, read_data_subset, progress)
    console.table(
        None,
        ["offsite", "restic check", "time"],
        [(c.repository, "ok" if c.ok else f"FAILED: {c.error}", f"{c.seconds:.1f}s")
         for c in checks],
    )  # fmt: skip
    damaged = [c for c in checks if not c.ok]
    if damaged:
        if console.json_mode:
            console.emit_json({"offsite_checks": [c.as_json() for c in checks], "ok": False})
        raise KbinfraError(
            f"restic check found {damaged[0].repository} damaged: {damaged[0].error}",
            where=f"offsite {damaged[0].repository}",
            fix="run `kbinfra backup` to write a new snapshot, and `restic check` by hand to "
            "see what is lost; restore from another repository meanwhile",
        )
    ok = [r.name for r in repositories]
    with scratch_dir(backup_root(stack)) as scratch, where:
        fetched, source = fetch_backup(
            stack, str(backup_dir), ok[0], ssh=ssh, scratch=scratch, progress=progress
        )
        result = run_drill(
            stack,
            where,
            fetched,
            progress=progress,
            allow_other_stack=allow_other_stack,
            allow_unsigned=allow_unsigned,
        )
    if result.ok:
        record_verified(backup_root(stack), source, fetched.name, _now())
    result.notes.append(f"drill on {fetched.name} fetched from offsite {source}")
    extra = {"offsite_checks": [c.as_json() for c in checks], "fetched_from": source}
    _finish(console, result, "offsite restore drill", extra)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@app.command(
    epilog=examples(
        "kbinfra restore latest",
        "kbinfra restore backups/kb-20261201T033000Z --only postgres",
        "kbinfra restore offsite:latest --repo sftp:backup@nas:/srv/kb   (onto a bare host)",
    )
)
def restore(
    backup_dir: BackupDirArgument,
    stack_dir: DirOrHereOption = Path(),
    only: Annotated[
        list[str] | None, only_option("Restore only these services; `volumes` too.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Restore without asking.")] = False,
    no_safety_backup: Annotated[
        bool,
        typer.Option("--no-safety-backup", help="Skip the backup of the current state first."),
    ] = False,
    allow_other_stack: AllowOtherStackOption = False,
    allow_unsigned: AllowUnsignedOption = False,
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            metavar="NAME|REPOSITORY",
            help="offsite:…: the repository to fetch from (its name in backup.offsite; in a "
            "folder without kbinfra.yaml the repository itself: rebuild the stack from it).",
        ),
    ] = None,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Verify a backup, back up the current state, restore, check health and content.

    BACKUP_DIR may be offsite:latest or offsite:NAME: fetched from the offsite repository,
    then verified and restored exactly like a local backup.

    Exit 0: restored and identical to the backup; 1: a difference; 2: an error (a corrupt
    or incompatible backup is refused before anything changes).
    """
    from kbinfra.backup.run import backup_root, run_restore  # noqa: PLC0415
    from kbinfra.offsite.run import fetch_backup, parse_offsite_ref, scratch_dir  # noqa: PLC0415
    from kbinfra.stack_folder import STACK_FILE  # noqa: PLC0415

    console = Console(output)
    _warn_unsigned(console, allow_unsigned)
    ref = parse_offsite_ref(str(backup_dir))

    def ask(question: str) -> bool:
        return yes or confirm(console, question)

    if ref is not None and not (stack_dir / STACK_FILE).exists():
        _restore_onto_bare_host(
            stack_dir, ref, repo, confirm=ask, target=target, known_hosts=known_hosts,
            identity=identity, console=console, allow_unsigned=allow_unsigned,
        )  # fmt: skip
        return
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    progress = console_progress(console)
    with ExitStack() as fetched:
        if ref is not None:
            scratch = fetched.enter_context(scratch_dir(backup_root(stack)))
            ssh = _ssh(known_hosts, identity)
            backup_dir, source = fetch_backup(
                stack, ref, repo, ssh=ssh, scratch=scratch, progress=progress
            )
            console.note(f"fetched {backup_dir.name} from offsite {source}")
        with where:
            result = run_restore(
                stack,
                where,
                backup_dir,
                progress=progress,
                confirm=ask,
                only=only,
                safety_backup=not no_safety_backup,
                allow_other_stack=allow_other_stack,
                allow_unsigned=allow_unsigned,
            )
    if result.safety_backup is not None:
        console.note(f"safety backup of the state before: {result.safety_backup}")
    _finish(console, result, "restore")


def _restore_onto_bare_host(
    stack_dir: Path,
    ref: str,
    repository: str | None,
    *,
    confirm: Callable[[str], bool],
    target: str | None,
    known_hosts: Path | None,
    identity: Path | None,
    console: Console,
    allow_unsigned: bool = False,
) -> None:
    """A folder with only the safe copy: rebuild it from the backup, apply, restore."""
    from kbinfra.apply import apply_stack  # noqa: PLC0415
    from kbinfra.backup.run import run_restore  # noqa: PLC0415
    from kbinfra.offsite.bare import rebuild_stack_folder  # noqa: PLC0415
    from kbinfra.offsite.run import scratch_dir  # noqa: PLC0415

    if not repository:
        raise KbinfraError(
            f"{stack_dir} has no kbinfra.yaml: say which repository to rebuild it from",
            fix="pass --repo REPOSITORY (sftp:user@host:/path, rest:https://…, a path)",
        )
    progress = console_progress(console)
    with scratch_dir(stack_dir) as scratch:
        rebuilt = rebuild_stack_folder(
            stack_dir,
            repository,
            ref,
            ssh=_ssh(known_hosts, identity),
            scratch=scratch,
            progress=progress,
            allow_unsigned=allow_unsigned,
        )
        for name in rebuilt.written:
            console.note(f"wrote {stack_dir / name} from {rebuilt.backup.name}")
        for note in rebuilt.notes:
            console.warn(note)
        stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
        question = (
            f"Create stack {stack.spec.name} on {where.name} and restore {rebuilt.backup.name} "
            "into it? Data of a running stack of that name is replaced."
        )
        if not confirm(question):
            raise KbinfraError("restore cancelled; nothing was deployed")
        with where:
            applied = apply_stack(stack, where, progress=console_progress(console))
            failed = [r for r in applied.services if r.outcome == "failed"]
            if failed:
                raise ApplyFailedError(
                    f"{failed[0].service} did not become healthy: {failed[0].error}",
                    where=where.name,
                    fix="fix the cause, then run the same restore again",
                )
            result = run_restore(
                stack, where, rebuilt.backup, progress=progress, confirm=lambda _: True,
                safety_backup=False, allow_unsigned=allow_unsigned,
            )  # fmt: skip
    result.notes.append(f"stack folder {stack_dir} rebuilt from offsite {rebuilt.repository}")
    _finish(console, result, "restore")
