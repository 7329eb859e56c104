"""``kbinfra logs`` and ``kbinfra exec``: the stack's containers as an operator reaches them,
locally or over SSH, through the same target every other command uses.

docker is imported only inside the commands (by :mod:`kbinfra.targets.streams`), so
``kbinfra --help`` stays fast.
"""

import datetime as dt
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from kbinfra.commands.options import (
    DirOption,
    IdentityOption,
    KnownHostsOption,
    TargetOption,
    examples,
    open_stack_and_target,
)
from kbinfra.errors import KbinfraError
from kbinfra.ui import Console, colour_wanted

#: Mounted by :mod:`kbinfra.cli` at the top level: ``kbinfra logs``, ``kbinfra exec``.
app = typer.Typer()

EXIT_INTERRUPTED = 130


class _TerminatedError(Exception):
    """SIGTERM while following: a normal end of ``logs -f``."""


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError


def _quiet_broken_pipe() -> None:
    """``kbinfra logs | head`` closed our stdout: end quietly, as ``cat`` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@app.command(
    epilog=examples(
        "kbinfra logs",
        "kbinfra logs postgres redis --tail 50 -f",
        "kbinfra logs qdrant --since 10m",
        "kbinfra logs --since 2026-12-01T14:00:00Z --timestamps",
    )
)
def logs(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SERVICE",
            help="Services whose logs to show (default: every enabled one).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="Only lines since then: 10m, 2h, 1h30m, an RFC 3339 time or a Unix time.",
            show_default=False,
        ),
    ] = None,
    tail: Annotated[
        int | None,
        typer.Option(
            metavar="N", min=0, help="Only the last N lines of each service.", show_default=False
        ),
    ] = None,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", "-t", help="Show Docker's time of each line.")
    ] = False,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
) -> None:
    """The stack's container logs, interleaved by time, each line prefixed with its service.

    Secret values of the stack are replaced by *** in every line. Colour on a terminal
    (not with --no-color or NO_COLOR).
    """
    from kbinfra.log_lines import LinePrefixer, LogLine, LogTime, parse_since  # noqa: PLC0415
    from kbinfra.targets.streams import (  # noqa: PLC0415
        LogFollower,
        LogRequest,
        read_logs,
        stack_containers,
    )

    console = Console()
    window = parse_since(since, dt.datetime.now(dt.UTC)) if since else None
    request = LogRequest(since=window, tail=tail)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    chosen = stack.select(services or [], asked_as="logs") or list(stack.services)
    with where:
        api = where.docker_client().api
        apis: dict[str, Any] = {}
        if where.kind == "swarm":  # each task's container, through its own node's engine
            from kbinfra.swarm.operate import task_log_sources  # noqa: PLC0415
            from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

            assert isinstance(where, SwarmTarget)
            sources = task_log_sources(stack, where, chosen)
            containers, apis, missing = sources.containers, sources.apis, sources.missing
        else:
            existing = stack_containers(api, stack.spec.name)
            containers = {s: existing[s] for s in chosen if s in existing}
            missing = [s for s in chosen if s not in existing]
        if not containers:
            raise KbinfraError(
                f"stack {stack.spec.name} has no container of {', '.join(chosen)} on {where.name}",
                fix="run `kbinfra apply` first",
            )
        if missing:
            console.warn(f"no container of {', '.join(missing)} on {where.name} yet")
        prefixed = LinePrefixer(
            list(containers), colour=colour_wanted(sys.stdout), timestamps=timestamps
        )

        def show(line: LogLine) -> None:
            console.line(prefixed(line))

        if follow:  # before the first line: a stop asked for once lines flow is clean
            signal.signal(signal.SIGTERM, _stop_on_term)
        follower = LogFollower(api, apis)
        try:
            history = read_logs(api, containers, request, apis)
            for line in history:
                show(line)
            if not follow:
                return
            sys.stdout.flush()
            last: dict[str, LogTime] = {
                line.service: line.time for line in history if line.time is not None
            }
            follower.start(containers, request, last)
            for line in follower.lines():
                show(line)
                sys.stdout.flush()
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except _TerminatedError:
            return
        except BrokenPipeError:
            _quiet_broken_pipe()
        finally:
            follower.stop()


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
    epilog=examples(
        "kbinfra exec postgres -- psql -U kb -c 'select 1'",
        "kbinfra exec -it redis -- sh",
        "kbinfra exec -i postgres -- psql -U kb < query.sql",
    ),
)
def exec_command(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service to run it in.")],
    command: Annotated[
        list[str],
        typer.Argument(metavar="CMD", help="The command and its arguments.", show_default=False),
    ],
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="Forward this terminal's input.")
    ] = False,
    tty: Annotated[
        bool, typer.Option("--tty", "-t", help="Give the command a terminal (-it: a shell).")
    ] = False,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", metavar="USER", help="Run as this user.", show_default=False),
    ] = None,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            "-w",
            metavar="DIR",
            help="Working folder in the container.",
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="NAME=VALUE",
            help="Set a variable (repeatable).",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            metavar="NODE",
            help="On a Swarm: the task on this node (default: the first running one).",
            show_default=False,
        ),
    ] = None,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
) -> None:
    """Run a command in a service's running container; its exit code is kbinfra's.

    Options go before SERVICE (as with docker exec); everything after it, or after --, is
    the command. Output is streamed as it comes, stdout and stderr kept apart (one stream
    with -t).
    """
    from kbinfra.names import container_name  # noqa: PLC0415
    from kbinfra.targets.streams import ExecRequest, run_exec, running_container  # noqa: PLC0415

    argv = command[1:] if command[:1] == ["--"] else command
    if not argv:
        raise KbinfraError(
            "exec needs a command to run", fix=f"e.g. `kbinfra exec {service} -- sh -c 'id'`"
        )
    variables = {}
    for item in env or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise KbinfraError(f"--env {item!r} is not NAME=VALUE", where="--env")
        variables[name] = value
    if tty and not sys.stdin.isatty():
        raise KbinfraError(
            "exec -t needs a terminal on stdin", fix="drop -t (keep -i to pipe input in)"
        )
    console = Console()
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    stack.select([service], asked_as="exec")
    request = ExecRequest(
        argv, interactive=interactive, tty=tty, user=user, workdir=workdir, env=variables
    )
    if node is not None and where.kind != "swarm":
        raise KbinfraError("--node is for a Swarm stack only", where="--node")
    sys.stdout.flush()
    with where:
        if where.kind == "swarm":  # a running task's container, over its node's SSH
            from kbinfra.swarm.operate import task_for_exec  # noqa: PLC0415
            from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

            assert isinstance(where, SwarmTarget)
            api, container, on = task_for_exec(stack, where, service, node)
            console.note(f"exec in {service}'s task on {on}")
        else:
            api = where.docker_client().api
            container = running_container(
                api, container_name(stack.spec.name, service), service, where.name
            )
        code = run_exec(api, container, request)
    raise typer.Exit(code)
