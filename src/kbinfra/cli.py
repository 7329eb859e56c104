"""The ``kbinfra`` command line: parse options, call one function, print. No logic here.

No ``from __future__ import annotations`` here or in ``kbinfra.commands``: Typer reads every
command's annotations on each start, and evaluating them from strings doubles that (~10 ms).
"""

import copy
import gc
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from kbinfra import __version__
from kbinfra.commands import backup as backup_commands
from kbinfra.commands import check as check_commands
from kbinfra.commands import deploy as deploy_commands
from kbinfra.commands import operate as operate_commands
from kbinfra.commands import secrets as secrets_commands
from kbinfra.commands.images import app as images_app
from kbinfra.commands.options import (
    DirOption,
    NewDirOption,
    OptionalDirOption,
    OutputOption,
    examples,
    given_on_command_line,
)
from kbinfra.errors import KbinfraError
from kbinfra.ui import Console, Output, disable_colour

#: ``-h`` as well as ``--help``, inherited by every command's context.
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def _name_arguments_by_their_metavar() -> None:
    """Typer prints an argument as ``SERVICE <str>`` even when its metavar names it; the
    name alone says more (``SERVICE``, ``FILE``), as it does for options."""
    from typer.core import TyperArgument  # noqa: PLC0415

    typed = TyperArgument.display_type_rich

    def display(self: TyperArgument, ctx: typer.Context) -> str | None:
        return None if self.metavar is not None else typed(self, ctx)

    TyperArgument.display_type_rich = display  # type: ignore[method-assign,assignment]


_name_arguments_by_their_metavar()

app = typer.Typer(
    name="kbinfra",
    help="Stand up, prove, back up and restore a self-hosted RAG knowledge-base stack.",
    context_settings=HELP_OPTIONS,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion: measured at ~0.4% of `kbinfra --help`'s
    # instructions (1.4 M of 340 M), well under a millisecond.
    add_completion=True,
    rich_markup_mode=None,  # rich's markdown help costs ~0.3 s of imports on every --help
)
profiles_app = typer.Typer(
    help="Hardware profiles: list them, show one.",
    epilog=examples("kbinfra profiles list", "kbinfra profiles show minimum"),
    no_args_is_help=True,
    rich_markup_mode=None,
)
# Each command module is a Typer app of its own, mounted here without a name: its commands
# are top-level commands (``kbinfra plan``), and no command module imports this one.
for command_module in (
    deploy_commands,
    operate_commands,
    backup_commands,
    check_commands,
    secrets_commands,
):
    app.add_typer(command_module.app)
app.add_typer(profiles_app, name="profiles")
app.add_typer(images_app, name="images")


_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kbinfra {__version__}")
        raise typer.Exit()


#: Commands that finish in well under a second keep the cyclic garbage collector off, as
#: kbinfra.entry starts them. Every other command runs long enough to need it.
SHORT_COMMANDS = frozenset({"render", "init", "profiles"})


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors.", envvar="KBINFRA_DEBUG")
    ] = False,
    no_color: Annotated[
        bool,
        typer.Option("--no-color", help="No colour, even on a terminal (as NO_COLOR=1 does)."),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if no_color:
        disable_colour()
    if ctx.invoked_subcommand not in SHORT_COMMANDS:
        gc.enable()


@profiles_app.command(
    "list", epilog=examples("kbinfra profiles list", "kbinfra profiles list -o json")
)
def profiles_list(output: OutputOption = Output.text) -> None:
    """List the built-in hardware profiles."""
    from kbinfra.spec.profile import builtin_profile_names, load_profile  # noqa: PLC0415

    console = Console(output)
    profiles = [load_profile(name).profile for name in builtin_profile_names()]
    if console.json_mode:
        console.emit_json([p.summary() for p in profiles])
        return
    rows = [
        (
            p.name,
            p.host.cpus,
            f"{p.host.memory_mb // 1024} GiB",
            f"{p.host.storage_gb} GB {p.host.disk}",
            p.description,
        )
        for p in profiles
    ]
    console.table(None, ["name", "cpus", "memory", "storage", "description"], rows)


@profiles_app.command(
    "show",
    epilog=examples(
        "kbinfra profiles show minimum",
        "kbinfra profiles show ./my-host.yaml",
        "kbinfra profiles show --dir kb   (the profile kb/kbinfra.yaml names)",
    ),
)
def profiles_show(
    profile: Annotated[
        str | None,
        typer.Argument(
            metavar="PROFILE",
            help="A built-in profile name or a YAML path (default: the stack's profile).",
            show_default=False,
        ),
    ] = None,
    stack_dir: OptionalDirOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Show a profile: the host and every service's allocation."""
    from kbinfra.spec.profile import load_profile  # noqa: PLC0415

    console = Console(output)
    relative_to = Path.cwd()
    if profile is None:
        if stack_dir is None:
            raise KbinfraError(
                "which profile? no PROFILE given and no kbinfra.yaml here or above",
                fix="name one (`kbinfra profiles list`), or pass --dir DIR of a stack",
            )
        from kbinfra.spec.stack import load_stack  # noqa: PLC0415

        profile, relative_to = load_stack(stack_dir)[0].profile, stack_dir
    loaded = load_profile(profile, relative_to=relative_to).profile
    for warning in loaded.warnings():
        console.warn(warning)
    summary = loaded.summary()
    if console.json_mode:
        console.emit_json(summary)
        return
    host = summary["host"]
    console.line(
        f"{loaded.name}: {host['cpus']} CPUs, {host['memory_mb']} MiB, "
        f"{host['storage_gb']} GB {host['disk']}, {host['network_gbps']} Gbps"
    )
    rows = [
        (name, a["cpus"], a["memory_mb"], a["storage_gb"])
        for name, a in summary["services"].items()
    ]
    console.table(None, ["service", "cpus", "memory MiB", "storage GB"], rows)


def next_steps(stack_dir: Path, target: str) -> list[str]:
    """What to run after ``init``, in order (``--dir`` only when it is not the current one)."""
    where = "" if stack_dir.resolve() == Path.cwd().resolve() else f" --dir {stack_dir}"
    steps = [
        f"review {stack_dir / 'kbinfra.yaml'} (services, ports, images); keep a copy of "
        "secrets.yaml off this host",
    ]
    if target.startswith("ssh://"):
        steps.append(f"kbinfra ssh trust{where}      # check and pin the target's host key")
    steps += [
        f"kbinfra render --check{where}  # validate every rendered file",
        f"kbinfra plan{where}            # what apply would change",
        f"kbinfra apply{where}           # deploy, health-gated",
        f"kbinfra check{where}           # prove every service works",
        f"kbinfra backup{where}          # then `kbinfra backup schedule`",
    ]
    return steps


@app.command(
    epilog=examples(
        "kbinfra init --profile minimum --dir kb",
        "kbinfra init --target ssh://deploy@10.0.0.5 --images mirror.yaml",
        "kbinfra init --profile minimum --target swarm --nodes nodes.yaml --dir kb",
        "kbinfra init --force   (new defaults; your edits to kbinfra.yaml kept)",
    )
)
def init(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option(metavar="PROFILE", help="Profile name or YAML path.")
    ] = "recommended",
    stack_dir: NewDirOption = Path(),
    domain: Annotated[
        str, typer.Option(metavar="DOMAIN", help="Public name for nginx and the TLS cert.")
    ] = ("kb.example.com"),
    target: Annotated[
        str, typer.Option(metavar="TARGET", help="local, ssh://user@host[:port] or swarm.")
    ] = "local",
    nodes: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="With --target swarm: the node file (scripts/testbed cluster up prints one).",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="YAML mapping service -> image (private registry).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Rewrite the files init wrote (never secrets, never yours): kbinfra.yaml gets "
            "the new defaults, your edits kept."
        ),
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """Create a stack folder: kbinfra.yaml, secrets.yaml (0600) and a self-signed TLS cert."""
    from kbinfra.scaffold import init_stack  # noqa: PLC0415
    from kbinfra.secrets import SECRETS_FILE  # noqa: PLC0415
    from kbinfra.spec.profile import load_profile  # noqa: PLC0415

    console = Console(output)
    given = {
        name
        for name in ("profile", "domain", "target", "images")
        if given_on_command_line(ctx, name)
    }
    result = init_stack(
        stack_dir,
        profile=profile,
        target=target,
        domain=domain,
        images_file=images,
        force=force,
        given=given,
        nodes_file=nodes,
    )
    for name in result.secrets_added:
        if name.startswith("offsite_"):
            console.warn(
                f"{name} encrypts the offsite backups: keep a copy of secrets.yaml off this "
                "host; losing it loses those backups"
            )
    if result.profile is not None:
        for warning in load_profile(result.profile, relative_to=stack_dir).profile.warnings():
            console.warn(warning)
    steps = next_steps(stack_dir, result.target or target)
    if console.json_mode:
        console.emit_json({**result.as_json(), "next_steps": steps})
        return
    for name in result.created:
        console.line(f"created {stack_dir / name}")
    for name in result.merged:
        console.line(f"updated {stack_dir / name} (new defaults; your edits kept)")
    for name in result.kept:
        why = "exists; --force rewrites what init wrote"
        if name == SECRETS_FILE:
            why = "its values are never rewritten" + (
                "; the missing ones added" if result.secrets_added else ""
            )
        console.line(f"kept    {stack_dir / name} ({why})")
    for name in result.kept_as_yours:
        console.line(f"kept    {stack_dir / name} (yours: init did not write it as it is now)")
    if result.secrets_added:
        console.line(f"generated secrets: {', '.join(result.secrets_added)}")
    console.line("next steps:")
    for number, step in enumerate(steps, 1):
        console.line(f"  {number}. {step}")


@app.command(
    epilog=examples(
        "kbinfra render",
        "kbinfra render --check --strict   (CI: every file validated by the real tools)",
        "kbinfra render --out /tmp/rendered -o json",
    )
)
def render(
    stack_dir: DirOption = Path(),
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Output folder (default: DIR/rendered).", show_default=False
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate every file with the real tools.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="With --check (implied): a validator not installed fails the run."
        ),
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """Render every enabled service's configuration (a CI dry run with --check --strict)."""
    from kbinfra.render import DEFAULT_OUT, render_stack, write_tree  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415

    console = Console(output)
    started = time.perf_counter()
    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    files = render_stack(stack)  # always rendered: render writes nothing but its output
    target = out if out is not None else stack_dir / DEFAULT_OUT
    folder = write_tree(files, target, stack_dir=stack_dir)
    elapsed = time.perf_counter() - started
    results = []
    if check or strict:
        from kbinfra.validation import validate_tree  # noqa: PLC0415

        results = validate_tree(stack, folder)
    failed = [r for r in results if not r.ok]
    unchecked = [r for r in results if r.outcome == "skipped"] if strict else []
    if console.json_mode:
        console.emit_json(
            {
                "out": str(target),
                "files": [
                    {"path": f.path, "mode": f"{f.mode:04o}", "bytes": len(f.text.encode())}
                    for f in files
                ],
                "checks": [r.as_json() for r in results],
                "strict": strict,
                "skipped": sum(r.outcome == "skipped" for r in results),
                "ok": not failed and not unchecked,
            }
        )
    else:
        console.line(f"rendered {len(files)} files into {target} in {elapsed:.2f}s")
        if results:
            rows = [(r.path, r.tool, r.version or "-", r.outcome, r.detail) for r in results]
            console.table("checks", ["file", "tool", "version", "result", "detail"], rows)
    if failed:
        first = failed[0]
        raise KbinfraError(
            f"{len(failed)} check(s) failed; first: {first.detail}",
            where=f"{target / first.path}" + (f":{first.line}" if first.line else ""),
            fix="fix the setting in kbinfra.yaml or the profile, then render again",
        )
    if unchecked:
        first = unchecked[0]
        tools = sorted({r.tool for r in unchecked})
        raise KbinfraError(
            f"--strict: {len(unchecked)} check(s) skipped ({', '.join(tools)}); first: "
            f"{first.detail}",
            where=str(target / first.path),
            fix="install the validators (README: Validators), or drop --strict",
        )


#: Options of the root callback that take no value (they may come before the command).
_ROOT_FLAGS = frozenset({"--debug", "--no-color"})


def _command_name(info: typer.models.CommandInfo) -> str:
    """The name a command is invoked by, as Typer derives it."""
    if info.name:
        return info.name
    assert info.callback is not None
    return info.callback.__name__.lower().replace("_", "-")


def app_for(args: list[str]) -> typer.Typer:
    """``app`` with only the command ``args`` invoke, when they name one: Typer turns every
    command's signature into click parameters before it runs any, about half of a no-op
    apply's work before kbinfra's own starts. ``app`` itself (every command) for ``--help``,
    ``--version``, shell completion and a command it does not know (click's own error)."""
    words = iter(args)
    name = next((word for word in words if word not in _ROOT_FLAGS), None)
    completing = any(key.startswith("_KBINFRA_COMPLETE") for key in os.environ)
    if name is None or name.startswith("-") or completing:
        return app
    pruned = _only(app, name)
    if not pruned.registered_commands and not pruned.registered_groups:
        return app
    return pruned


def _only(app: typer.Typer, name: str) -> typer.Typer:
    """A copy of ``app`` with only what ``name`` invokes: its command, or its named group
    whole (``secrets``, ``profiles``), looked for in the apps mounted without a name too."""
    pruned = copy.copy(app)
    pruned.registered_commands = [c for c in app.registered_commands if _command_name(c) == name]
    pruned.registered_groups = []
    for group in app.registered_groups:
        if isinstance(group.name, str):  # a named group: the whole of it, or none
            if group.name == name:
                pruned.registered_groups.append(group)
            continue
        assert group.typer_instance is not None  # mounted without a name: its commands
        mounted = _only(group.typer_instance, name)
        if mounted.registered_commands or mounted.registered_groups:
            pruned.registered_groups.append(copy.copy(group))
            pruned.registered_groups[-1].typer_instance = mounted
    return pruned


def main() -> None:
    """Entry point: one clear line and exit 2 for user errors; tracebacks only with --debug.

    Every error is printed through the running command's console (so ``--output json`` also
    gets it as a JSON object on stdout) and redacted of every secret value this process
    knows. Typer (click) handles usage errors itself in standalone mode and exits 2.
    """
    try:
        app_for(sys.argv[1:])()
    except KbinfraError as error:
        if _state["debug"]:
            raise
        _report(error.what, error.where, error.fix, error.one_line())
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _report("interrupted", None, None, "interrupted")
        sys.exit(130)
    except Exception as error:  # a bug in kbinfra: exit 1, still one redacted line
        if _state["debug"]:
            raise
        what = f"{type(error).__name__}: {error}"
        fix = "run with --debug for the traceback"
        _report(what, None, fix, f"{what} ({fix})")
        sys.exit(1)


def _report(what: str, where: str | None, fix: str | None, line: str) -> None:
    from kbinfra.secrets import known_secrets_redactor  # noqa: PLC0415 (only on errors)

    console = Console.of_running_command()
    command_redact = console.redact
    everything_known = known_secrets_redactor()
    console.set_redactor(lambda text: everything_known(command_redact(text)))
    console.fail(what, where, fix, line=line)
