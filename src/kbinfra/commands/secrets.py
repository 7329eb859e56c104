"""``kbinfra secrets``: what the stack's secrets are, how old, and what uses each; never a
value. ``kbinfra secrets rotate`` replaces them with no failed request."""

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from kbinfra.commands.options import (
    DirOption,
    ForceUnlockOption,
    HealthTimeoutOption,
    IdentityOption,
    KnownHostsOption,
    OutputOption,
    TargetOption,
    apply_progress,
    confirm,
    examples,
)
from kbinfra.ui import Console, Output


class StopAfter(StrEnum):
    """The phases a rotation may stop after: both values are accepted after each."""

    added = "added"
    moved = "moved"


app = typer.Typer()
secrets_app = typer.Typer(
    help="The stack's secrets: names, ages and where each is used (never values); rotation.",
    epilog=examples("kbinfra secrets list", "kbinfra secrets rotate --all --yes"),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command(
    "list", epilog=examples("kbinfra secrets list", "kbinfra secrets list -o json")
)
def list_command(stack_dir: DirOption = Path(), output: OutputOption = Output.text) -> None:
    """Each secret of secrets.yaml: when it was generated, its age, and what uses it.

    An age marked >= is a lower bound: the secret was generated before kbinfra recorded
    dates, so the secrets file's last change is the latest it can be from.
    """
    from kbinfra.rotation_run import describe_state  # noqa: PLC0415
    from kbinfra.secret_report import secret_report  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415

    console = Console(output)
    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    report = secret_report(stack, datetime.now(UTC))
    rotation = describe_state(stack.dir)
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "max_age_days": stack.spec.secrets.max_age_days,
                "secrets": [entry.as_json() for entry in report],
                "rotation": rotation,
            }
        )
        return
    console.table(
        f"secrets of stack {stack.spec.name}",
        ["secret", "generated", "age", "used by"],
        [entry.row() for entry in report],
    )
    too_old = [entry.name for entry in report if entry.too_old]
    if too_old:
        console.warn(
            f"older than max_age_days ({stack.spec.secrets.max_age_days}): {', '.join(too_old)}"
        )
    if rotation is not None:
        console.warn(
            f"a rotation of {', '.join(rotation['names'])} is unfinished (phase "
            f"{rotation['phase']}, started {rotation['started']}): run `kbinfra secrets "
            "rotate` to finish it"
        )
    unused = [entry.name for entry in report if not entry.used_by]
    if unused:
        console.note(
            f"used by nothing in this stack (left from a removed part): {', '.join(unused)}"
        )


@secrets_app.command(
    "rotate",
    epilog=examples(
        "kbinfra secrets rotate --all --yes",
        "kbinfra secrets rotate redis_app_password",
        "kbinfra secrets rotate          # finish a rotation that was interrupted",
        "kbinfra secrets rotate qdrant_api_key --stop-after moved   # then move your clients",
    ),
)
def rotate_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME",
            help="The secrets to rotate (`kbinfra secrets list`); none: finish an "
            "interrupted rotation.",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every secret kbinfra can rotate in this stack.")
    ] = False,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Rotate without asking.")] = False,
    stop_after: Annotated[
        StopAfter | None,
        typer.Option(
            "--stop-after",
            metavar="PHASE",
            help="Stop once PHASE is done, the old and the new values both accepted (added: "
            "every client still on the old ones; moved: kbinfra's clients on the new ones), "
            "to move clients kbinfra does not manage; run again without it to finish.",
            show_default=False,
        ),
    ] = None,
    timeout: HealthTimeoutOption = None,
    force_unlock: ForceUnlockOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Replace secrets with new values while the stack serves: no failed request.

    For each secret: a new value is generated, added beside the old one in the store that
    checks it (both accepted), every client is moved to it through apply's health-gated
    path, the old value is revoked, and only then is secrets.yaml replaced. The state of an
    unfinished rotation is .kbinfra/rotation.json (0600): run the command again to finish
    it; apply refuses until then. Secrets kbinfra cannot rotate yet are named and refused.
    An offsite repository's restic password goes through restic's keys instead (key add,
    the new one proved, key remove of the old one's key): no apply, no snapshot rewritten.
    On a Swarm, what no service reads rotates (the backup key, those passwords), and the
    keys of services whose tasks Swarm replaces start-first (the embedding service's).
    Clients of your own (scripts, other hosts) hold values too: --stop-after moved leaves
    both values accepted while you move them to the new ones, which .kbinfra/rotation.json
    (0600) holds until the rotation is finished.
    """
    from kbinfra.offsite.run import ssh_settings  # noqa: PLC0415
    from kbinfra.rotation_run import choose_secrets, on_a_swarm, rotate  # noqa: PLC0415
    from kbinfra.rotation_state import state_path  # noqa: PLC0415
    from kbinfra.secrets import known_secrets_redactor  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.stack_lock import stack_locked  # noqa: PLC0415
    from kbinfra.targets import open_target  # noqa: PLC0415

    console = Console(output)
    stack = open_stack(stack_dir)
    # the new values too, generated later: each line is redacted of every value known by then
    console.set_redactor(lambda text: known_secrets_redactor()(stack.redact(text)))
    # refused before any connection; on a Swarm, only what no pinned or published task reads
    choice = choose_secrets(stack, names or [], every=every)
    where = open_target(
        stack.spec, stack_dir, target=target, known_hosts=known_hosts, identity=identity,
        swarm=True,
    )  # fmt: skip
    if choice.not_rotatable:
        why = (
            "on a Swarm kbinfra rotates only what no pinned or host-port task reads"
            if on_a_swarm(stack)
            else "kbinfra cannot rotate them yet"
        )
        console.warn(f"not rotated ({why}): {', '.join(choice.not_rotatable)}")
    resuming = state_path(stack.dir).is_file()
    if not yes and not resuming:
        question = f"Rotate {', '.join(choice.names)} of stack {stack.spec.name} on {where.name}?"
        if not confirm(console, question):
            raise typer.Exit(1)
    with (
        where,
        stack_locked(where, stack.spec.name, force=force_unlock) as notes,
        apply_progress(console) as progress,
    ):
        for note in notes:
            console.note(note)
        result = rotate(
            stack,
            where,
            choice,
            now=datetime.now(UTC),
            say=lambda line: progress.note("rotate", line),
            progress=progress,
            ssh=ssh_settings(known_hosts, identity),
            timeout=timeout,
            stop_after=stop_after.value if stop_after is not None else None,
        )
    if console.json_mode:
        console.emit_json(result.as_json())
    elif result.stopped_after:
        console.line(
            f"stopped after phase {result.stopped_after} of rotating "
            f"{', '.join(result.rotated)} of stack {result.stack}: the old and the new values "
            "are both accepted"
        )
    else:
        console.line(f"rotated {', '.join(result.rotated)} of stack {result.stack}")
    if result.stopped_after:
        console.warn(
            f"the rotation is unfinished: move the clients kbinfra does not manage to the new "
            f"values (in {state_path(stack.dir)}, 0600), then run `kbinfra secrets rotate` "
            "to revoke the old ones and write secrets.yaml; apply refuses until then"
        )
    for line in result.safe_copy:
        console.warn(line)
