"""``kbinfra plan / apply / status / destroy / history / rollback`` and ``kbinfra ssh trust``.

Each command parses options, calls one function of ``kbinfra.apply`` and prints. docker and
paramiko are imported only inside the commands, so ``kbinfra --help`` stays fast.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer

from kbinfra.commands.options import (
    DirOption,
    ForceUnlockOption,
    HealthTimeoutOption,
    IdentityOption,
    KnownHostsOption,
    OptionalDirOption,
    OutputOption,
    TargetOption,
    apply_progress,
    confirm,
    console_progress,
    examples,
    only_option,
    open_stack_and_target,
    warn_about_profile,
)
from kbinfra.errors import ApplyFailedError, KbinfraError
from kbinfra.ui import Console, Output

if TYPE_CHECKING:
    from collections.abc import Callable

    from kbinfra.apply import ApplyResult, Observation
    from kbinfra.capacity import Fit
    from kbinfra.plan import Plan
    from kbinfra.plan_file import PlanFile
    from kbinfra.stack import Stack
    from kbinfra.swarm.capacity import SwarmFit
    from kbinfra.swarm.run import SwarmApplyResult, SwarmPlan
    from kbinfra.targets import Target
    from kbinfra.upgrade import UpgradeStep

EXIT_CHANGES = 3

#: Mounted by :mod:`kbinfra.cli` at the top level: ``kbinfra plan``, ``kbinfra ssh trust``.
app = typer.Typer()
ssh_app = typer.Typer(
    help="SSH targets: trust a host key.",
    epilog=examples("kbinfra ssh trust", "kbinfra ssh trust 10.0.0.5:2222"),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ssh_app, name="ssh")

AllowOversizedOption = Annotated[
    bool,
    typer.Option(
        "--allow-oversized-profile",
        help="Deploy even if the profile gives the services more than the engine has.",
    ),
]


def _require_fit(stack: "Stack", where: "Target", console: Console, *, allow: bool) -> "Fit":
    """Refuse a profile the target's engine cannot hold, unless ``allow``: then warn."""
    from kbinfra.capacity import stack_fit  # noqa: PLC0415

    fit = stack_fit(stack, where.engine_capacity())
    if not fit.fits:
        if not allow:
            raise KbinfraError(fit.refusal(), where=where.name, fix=fit.fix())
        console.warn(f"{fit.refusal()}; deploying it anyway (--allow-oversized-profile)")
    for warning in fit.warnings:
        console.warn(warning)
    return fit


_SYMBOL = {
    "create": "+",
    "recreate": "~",
    "reload": "*",
    "start": ">",
    "remove": "-",
    "nothing": "=",
}


def print_plan(console: Console, plan: "Plan") -> None:
    for leftover in plan.leftovers:
        console.line(f"! {leftover}: left by an interrupted apply; apply repairs it first")
    for action in plan.services:
        reasons = f" ({'; '.join(action.reasons)})" if action.reasons else ""
        console.line(f"{_SYMBOL[action.action]} {action.service}: {action.action}{reasons}")
    for image in plan.missing_images:
        console.line(f"! image {image} is not on the target: apply will try to pull it")
    for change in plan.files:
        if change.change == "remove":
            console.line(f"- file {change.path}: remove")
        elif change.secret:
            mark, what = ("+", "added") if change.change == "add" else ("~", "changed")
            console.line(f"{mark} file {change.path}: (secret file {what})")
        else:
            console.line(
                f"{'+' if change.change == 'add' else '~'} file {change.path}: {change.change}"
            )
            if change.diff and change.change == "change":
                for line in change.diff.rstrip("\n").splitlines():
                    console.line(f"    {line}")
    counts = {kind: sum(1 for a in plan.services if a.action == kind) for kind in _SYMBOL}
    reload = f"{counts['reload']} to reload, " if counts["reload"] else ""
    console.line(
        f"Plan: {counts['create']} to create, {counts['recreate']} to recreate, {reload}"
        f"{counts['start']} to start, {counts['remove']} to remove; "
        f"{sum(1 for f in plan.files if f.change != 'remove')} files to upload, "
        f"{sum(1 for f in plan.files if f.change == 'remove')} to remove."
    )


@app.command(
    epilog=examples(
        "kbinfra plan",
        "kbinfra plan --only nginx --out nginx.plan && kbinfra apply nginx.plan",
        "kbinfra plan --target ssh://deploy@10.0.0.5 -o json",
    )
)
def plan(
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    only: Annotated[
        list[str] | None, only_option("Plan only these services, as `apply --only` would.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Also save the plan (0600): `kbinfra apply FILE` applies exactly it, or "
            "refuses if the stack or the target changed since.",
            show_default=False,
        ),
    ] = None,
    allow_oversized_profile: AllowOversizedOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Show what apply would change, with file diffs. Exit 0: nothing; 3: changes; 2: error."""
    from kbinfra import __version__  # noqa: PLC0415
    from kbinfra.apply import observed_plan  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    chosen = stack.select(only or [])
    if where.kind == "swarm":
        _refuse_saved_plan_on_swarm(out, what="--out")
        warn_about_profile(console, stack)
        _plan_on_swarm(console, stack, where, only=chosen, allow=allow_oversized_profile)
        return
    warn_about_profile(console, stack)
    with where:
        fit = _require_fit(stack, where, console, allow=allow_oversized_profile)
        result, seen = observed_plan(stack, where, only=chosen)
    if out is not None:
        from kbinfra.plan_file import plan_document, write_plan_file  # noqa: PLC0415

        document = plan_document(
            result,
            version=__version__,
            only=chosen,
            desired=seen.desired,
            rendered=seen.rendered,
            facts=seen.facts,
        )
        write_plan_file(out, document)
        console.note(f"plan saved to {out}: `kbinfra apply {out}` applies exactly it")
    if console.json_mode:
        console.emit_json({**result.as_json(), "fit": fit.as_json()})
    else:
        print_plan(console, result)
    if result.has_changes:
        raise typer.Exit(EXIT_CHANGES)


class _Pending(Protocol):
    @property
    def has_changes(self) -> bool: ...


PlanT = TypeVar("PlanT", bound=_Pending)


def _ask_to_apply(
    console: Console, pending: PlanT, show: "Callable[[Console, PlanT], None]", where: str
) -> None:
    """Show what apply would do (one host's plan or a Swarm's) and ask; exit 1 on a no."""
    if not console.json_mode:
        show(console, pending)
    if not pending.has_changes:
        console.note("nothing to do")
    elif not confirm(console, f"Apply these changes to {where}?"):
        raise typer.Exit(1)


def _read_plan_file(path: Path, only: list[str] | None) -> "PlanFile":
    from kbinfra.plan_file import read_plan_file  # noqa: PLC0415

    saved = read_plan_file(path)
    if only:
        raise KbinfraError(
            "--only cannot be given with a plan file: the plan names its own services",
            where="--only",
            fix=f"drop --only (the plan's: {', '.join(saved.only) or 'every service'})",
        )
    return saved


def _expect_plan(
    saved: "PlanFile", path: Path | None, stack: str, target: str
) -> "Callable[[Observation], None]":
    def expect(seen: "Observation") -> None:
        from kbinfra.plan_file import check_plan_file  # noqa: PLC0415

        check_plan_file(
            saved,
            stack=stack,
            target=target,
            desired=seen.desired,
            rendered=seen.rendered,
            facts=seen.facts,
            where=str(path),
        )

    return expect


def print_apply(console: Console, result: "ApplyResult") -> None:
    from kbinfra.noop_fast import print_apply_document  # noqa: PLC0415

    print_apply_document(console, result.as_json())


@app.command(
    epilog=examples(
        "kbinfra apply", "kbinfra apply --yes --only postgres,redis", "kbinfra apply -y -o json"
    )
)
def apply(
    plan_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="PLAN_FILE",
            help="A plan saved by `kbinfra plan --out`: apply exactly it (no question asked), "
            "or refuse (exit 2) if the stack or the target changed since.",
            show_default=False,
        ),
    ] = None,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    timeout: HealthTimeoutOption = None,
    force_unlock: ForceUnlockOption = False,
    only: Annotated[
        list[str] | None, only_option("Converge only these services; others stay as they are.")
    ] = None,
    allow_oversized_profile: AllowOversizedOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Create or update the stack's containers: health-gated, rolled back on failure."""
    from kbinfra.apply import apply_stack, plan_stack  # noqa: PLC0415
    from kbinfra.rotation_state import refuse_while_rotating  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    refuse_while_rotating(stack.dir, "apply")
    if where.kind == "swarm":
        _refuse_saved_plan_on_swarm(plan_file, what="PLAN_FILE")
        _apply_on_swarm(
            console,
            stack,
            where,
            yes=yes,
            timeout=timeout,
            force_unlock=force_unlock,
            only=stack.select(only or []),
            allow=allow_oversized_profile,
        )
        return
    saved = _read_plan_file(plan_file, only) if plan_file is not None else None
    chosen = stack.select(saved.only if saved is not None else only or [])
    expect = _expect_plan(saved, plan_file, stack.spec.name, where.name) if saved else None
    with where:
        _require_fit(stack, where, console, allow=allow_oversized_profile)
        if not yes and saved is None:
            _ask_to_apply(console, plan_stack(stack, where, only=chosen), print_plan, where.name)
        plain = not (chosen or saved or target or force_unlock or allow_oversized_profile)
        with apply_progress(console) as progress:
            result = apply_stack(
                stack,
                where,
                timeout=timeout,
                force_unlock=force_unlock,
                only=chosen,
                progress=progress,
                expect=expect,
            )
        if plain:
            _record_noop(stack, where, result.as_json(), console.warned)
    report_apply(console, result, where.name)


def _record_noop(
    stack: "Stack", where: "Target", document: dict[str, Any], warnings: list[str]
) -> None:
    """After a plain local or SSH apply: when it changed nothing, leave the record the next
    no-op answers from (:mod:`kbinfra.noop_fast`), made from a look, a fresh plan that still
    changes nothing, and a second look that agrees with the first; else drop any record."""
    from kbinfra.apply import nothing_to_do, target_engine  # noqa: PLC0415
    from kbinfra.noop_fast import NoopRecorder, applied_nothing, describe, forget  # noqa: PLC0415

    described = describe(where)
    if described is None:
        return
    if not applied_nothing(document):
        forget(stack.dir)
        return
    refs = [spec.image for spec in stack.containers.values()]
    recorder = NoopRecorder(stack.dir, stack.spec.name, refs, where, described)
    name = stack.spec.name
    if nothing_to_do(stack, target_engine(where, name), where.file_store(name)) is None:
        forget(stack.dir)
        return
    recorder.finish(document, warnings)


def report_apply(console: Console, result: "ApplyResult", where: str) -> None:
    """Print what an apply did (a table, or JSON); exit 1 naming the first failed service."""
    for note in result.notes + result.repaired:
        console.note(note)
    if console.json_mode:
        console.emit_json(result.as_json())
    else:
        print_apply(console, result)
    failed = [r for r in result.services if r.outcome == "failed"]
    if failed:
        for failure in failed:
            if failure.logs:
                console.note(f"--- last {len(failure.logs)} log lines of {failure.service} ---")
                for line in failure.logs:
                    console.note(f"    {line}")
        first = failed[0]
        back = "; the previous container was restored" if first.rolled_back else ""
        what = " was not reloaded" if first.action == "reload" else " did not become healthy"
        if first.job:  # its error names the job and its own reason; nothing was "restored"
            what, back = "", ""
        raise ApplyFailedError(
            f"{first.service}{what}: {first.error}{back}",
            where=where,
            fix=("see its last log lines above; " if first.logs else "")
            + "fix kbinfra.yaml, then `kbinfra plan`",
        )


@app.command(epilog=examples("kbinfra status", "kbinfra status -o json"))
def status(
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Every service: running vs desired image, state, health, uptime, ports, drift."""
    from kbinfra.apply import status_stack  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    if where.kind == "swarm":
        _status_on_swarm(console, stack, where)
        return
    with where:
        rows = status_stack(stack, where)
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "target": where.name,
                "services": [r.as_json() for r in rows],
            }
        )
        return
    table = []
    for row in rows:
        image = row.running_image or "-"
        if row.desired_image and row.running_image and row.desired_image != row.running_image:
            image += f" (want {row.desired_image})"
        table.append(
            (
                row.service,
                row.state,
                row.health or "-",
                row.uptime or "-",
                image,
                ", ".join(row.ports) or "-",
                "; ".join(row.drift) or "none",
            )
        )
    console.table(
        f"stack {stack.spec.name} on {where.name}",
        ["service", "state", "health", "uptime", "image", "ports", "drift"],
        table,
    )


@app.command(
    epilog=examples(
        "kbinfra destroy            (containers and network; data volumes kept)",
        "kbinfra destroy --delete-data --confirm-name kb",
    )
)
def destroy(
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    delete_data: Annotated[
        bool, typer.Option("--delete-data", help="Also delete the data volumes (irreversible).")
    ] = False,
    confirm_name: Annotated[
        str | None,
        typer.Option(
            "--confirm-name",
            metavar="NAME",
            help="The stack name, to delete data without a prompt.",
            show_default=False,
        ),
    ] = None,
    force_unlock: ForceUnlockOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Remove the stack's containers and network; data volumes only with --delete-data."""
    from kbinfra.apply import destroy_stack  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    name = stack.spec.name
    if delete_data:
        if confirm_name is None:
            if yes or not sys.stdin.isatty():
                raise KbinfraError(
                    "--delete-data needs the stack name confirmed",
                    fix=f"add --confirm-name {name} (or run it in a terminal and type it)",
                )
            console.note(f"This deletes every data volume of stack {name!r}. Type its name: ")
            confirm_name = sys.stdin.readline().strip()
        if confirm_name != name:
            raise KbinfraError(
                f"confirmation {confirm_name!r} is not the stack name {name!r}; nothing deleted"
            )
    elif not yes and not confirm(
        console, f"Remove the containers and network of stack {name} on {where.name}?"
    ):
        raise typer.Exit(1)
    if where.kind == "swarm":
        _destroy_on_swarm(console, stack, where, delete_data=delete_data, force_unlock=force_unlock)
        return
    with where:
        result = destroy_stack(
            stack,
            where,
            delete_data=delete_data,
            force_unlock=force_unlock,
            progress=console_progress(console),
        )
    if console.json_mode:
        console.emit_json(result.as_json())
        return
    console.line(
        f"removed {len(result.containers)} containers"
        + (", the network" if result.network else "")
        + (f", {len(result.volumes)} volumes" if delete_data else "; data volumes kept")
    )


# ---------------------------------------------------------------- on a Swarm (target: swarm)


def _refuse_saved_plan_on_swarm(plan_file: Path | None, *, what: str) -> None:
    if plan_file is not None:
        raise KbinfraError(
            f"{what}: saved plans are not built for a Swarm stack yet",
            where=what,
            fix=f"drop {what}: `kbinfra plan` shows what `kbinfra apply` would do",
        )


def _swarm_fit(stack: "Stack", console: Console, *, allow: bool) -> "SwarmFit":
    from kbinfra.swarm.run import require_swarm_fit  # noqa: PLC0415

    return require_swarm_fit(stack, allow=allow, warn=console.warn)


_SWARM_SYMBOL = {"create": "+", "update": "~", "remove": "-", "nothing": "="}


def print_swarm_plan(console: Console, plan: "SwarmPlan") -> None:
    if plan.create_swarm:
        console.line("+ swarm: create (swarm init on the first manager, the others join)")
    if plan.create_network:
        console.line(f"+ network {plan.network}: create")
    for action in plan.services:
        reasons = f" ({'; '.join(action.reasons)})" if action.reasons else ""
        console.line(
            f"{_SWARM_SYMBOL[action.action]} {action.service} ({action.swarm_service}): "
            f"{action.action}{reasons}"
        )
    for kind, create, remove in (
        ("secret", plan.secrets_to_create, plan.secrets_to_remove),
        ("config", plan.configs_to_create, plan.configs_to_remove),
    ):
        for name in create:
            console.line(f"+ {kind} {name}: create")
        for name in remove:
            console.line(f"- {kind} {name}: remove (no service uses it after apply)")
    console.line(
        f"Plan: {plan.count('create')} to create, {plan.count('update')} to update, "
        f"{plan.count('remove')} to remove, {plan.count('nothing')} unchanged; "
        f"{len(plan.secrets_to_create)} secrets and {len(plan.configs_to_create)} configs "
        f"to create, {len(plan.secrets_to_remove) + len(plan.configs_to_remove)} to remove."
    )


def _plan_on_swarm(
    console: Console, stack: "Stack", where: "Target", *, only: list[str], allow: bool
) -> None:
    from kbinfra.swarm.run import swarm_plan  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(where, SwarmTarget)
    fit = _swarm_fit(stack, console, allow=allow)
    with where:
        result = swarm_plan(stack, where, only=only)
    if console.json_mode:
        console.emit_json({**result.as_json(), "fit": fit.as_json()})
    else:
        print_swarm_plan(console, result)
    if result.has_changes:
        raise typer.Exit(EXIT_CHANGES)


def print_swarm_apply(console: Console, result: "SwarmApplyResult") -> None:
    rows = []
    for r in result.services:
        tasks = ", ".join(f"{t['node']} {t['health']}" for t in r.tasks) or "-"
        rows.append((r.service, r.action, r.outcome, f"{r.seconds:.1f}s", tasks, r.error or ""))
    console.table(None, ["service", "action", "outcome", "time", "tasks", "detail"], rows)
    for node, images in sorted(result.images_copied.items()):
        console.line(f"images copied to {node}: {', '.join(images)}")
    console.line(result.summary())


def _apply_on_swarm(
    console: Console,
    stack: "Stack",
    where: "Target",
    *,
    yes: bool,
    timeout: float | None,
    force_unlock: bool,
    only: list[str],
    allow: bool,
) -> None:
    from kbinfra.swarm.run import swarm_apply, swarm_plan  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(where, SwarmTarget)
    _swarm_fit(stack, console, allow=allow)
    with where:
        if not yes:
            pending = swarm_plan(stack, where, only=only)
            _ask_to_apply(console, pending, print_swarm_plan, where.name)
        with apply_progress(console) as progress:
            result = swarm_apply(
                stack,
                where,
                timeout_s=timeout,
                force_unlock=force_unlock,
                only=only,
                progress=progress,
            )
    for note in result.notes:
        console.note(note)
    if console.json_mode:
        console.emit_json(result.as_json())
    else:
        print_swarm_apply(console, result)
    if result.failure is not None:
        raise ApplyFailedError(
            result.failure,
            where=where.name,
            fix="see `kbinfra status` for its tasks; fix kbinfra.yaml, then `kbinfra plan`",
        )


def _status_on_swarm(console: Console, stack: "Stack", where: "Target") -> None:
    from kbinfra.swarm.run import swarm_status  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(where, SwarmTarget)
    with where:
        found = swarm_status(stack, where)
    if console.json_mode:
        console.emit_json(found.as_json())
        return
    if found.status is None:
        console.line(f"stack {stack.spec.name}: the nodes are in no Swarm yet (`kbinfra apply`)")
        return
    table = []
    for service in found.status.services:
        state = "degraded" if service.degraded else "ok" if service.converged else "updating"
        if service.rolled_back:
            state = "rolled back"
        tasks = [t for t in service.tasks if t.desired == "running"] or list(service.tasks[:1])
        for index, task in enumerate(tasks):
            table.append(
                (
                    service.service or service.name if index == 0 else "",
                    f"{state} {service.running}/{service.expected}" if index == 0 else "",
                    task.node or "-",
                    task.state,
                    task.health,
                    task.error or "",
                )
            )
        if not tasks:
            table.append(
                (
                    service.service or service.name,
                    f"{state} 0/{service.expected}",
                    "-",
                    "-",
                    "-",
                    "",
                )
            )
    for name in found.missing:
        table.append((name, "not created", "-", "-", "-", ""))
    console.table(
        f"stack {stack.spec.name} on {where.name} (manager {found.manager})",
        ["service", "state", "node", "task", "health", "error"],
        table,
    )
    degraded = found.status.degraded
    if degraded:
        console.line(
            "degraded: "
            + ", ".join(
                f"{s.name} ({s.running}/{s.expected} running"
                + "".join(f"; its task was on {node}, which is down" for node in s.lost_on)
                + ")"
                for s in degraded
            )
        )


def _destroy_on_swarm(
    console: Console, stack: "Stack", where: "Target", *, delete_data: bool, force_unlock: bool
) -> None:
    from kbinfra.swarm.run import swarm_destroy  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(where, SwarmTarget)
    with where:
        removal = swarm_destroy(
            stack,
            where,
            delete_data=delete_data,
            force_unlock=force_unlock,
            progress=console_progress(console),
        )
    for note in removal.notes:
        console.note(note)
    if console.json_mode:
        console.emit_json(removal.as_json())
        return
    kept = sum(len(v) for v in removal.volumes_kept.values())
    gone = sum(len(v) for v in removal.volumes_removed.values())
    console.line(
        f"removed {len(removal.services)} services, {len(removal.secrets)} secrets, "
        f"{len(removal.configs)} configs, {len(removal.networks)} networks"
        + (
            f", {gone} volumes"
            if delete_data
            else f"; {kept} volumes kept (--delete-data removes them)"
        )
    )
    for node, why in sorted(removal.unreachable.items()):
        console.warn(f"{node}: its volumes were not looked at ({why})")


def _stack_target_host(stack_dir: Path | None) -> tuple[str, int]:
    """The host and port of the stack's ``target: ssh://…``, when no address is given."""
    from kbinfra.spec.stack import load_stack  # noqa: PLC0415

    if stack_dir is None:
        raise KbinfraError(
            "which host? no HOST given and no kbinfra.yaml here or above",
            where="kbinfra ssh trust",
            fix="give HOST[:PORT], or pass --dir DIR of a stack whose target is ssh://",
        )
    spec, _ = load_stack(stack_dir)
    parts = spec.ssh_parts()
    if parts is None:
        raise KbinfraError(
            f"stack {spec.name} runs on the local engine: there is no SSH host to trust",
            where=str(stack_dir / "kbinfra.yaml"),
            fix="give HOST[:PORT], or set target: ssh://user@host[:port] in kbinfra.yaml",
        )
    _, host, port = parts
    return host, port


def _host_port(address: str) -> tuple[str, int]:
    from kbinfra.spec.values import DEFAULT_SSH_PORT, parse_host_port  # noqa: PLC0415

    try:
        return parse_host_port(address, default_port=DEFAULT_SSH_PORT)
    except ValueError as error:
        raise KbinfraError(
            str(error), where="kbinfra ssh trust", fix="give HOST, HOST:PORT or [IPv6]:PORT"
        ) from None


@ssh_app.command(
    "trust",
    epilog=examples(
        "kbinfra ssh trust          (the host of the stack file's target)",
        "kbinfra ssh trust 10.0.0.5:2222 --known-hosts ./known_hosts",
    ),
)
def ssh_trust(
    address: Annotated[
        str | None,
        typer.Argument(
            metavar="HOST[:PORT]",
            help="The host to trust (default: the stack's target, from kbinfra.yaml).",
            show_default=False,
        ),
    ] = None,
    stack_dir: OptionalDirOption = None,
    known_hosts: KnownHostsOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Trust without asking.")] = False,
) -> None:
    """Fetch a host's SSH key, show its fingerprint and add it to known_hosts."""
    from kbinfra.targets.ssh import (  # noqa: PLC0415
        append_known_host,
        default_known_hosts,
        fetch_host_key,
        fingerprint,
        read_known_hosts,
        revoked_key_error,
    )

    console = Console()
    host, port = _host_port(address) if address else _stack_target_host(stack_dir)
    path = known_hosts or default_known_hosts()
    known = read_known_hosts(path)  # a broken file is an error before any connection
    key = fetch_host_key(host, port)
    if key.get_base64() in known.revoked:
        raise revoked_key_error(key, f"{host}:{port}", path)
    shown = f"{host}:{port} offers {key.get_name()} {fingerprint(key.asbytes())}"
    trusted = known.keys_for(host, port)
    if trusted.get(key.get_name()) == key.get_base64():
        console.line(f"{shown}: already trusted in {path}")
        return
    if trusted:
        raise KbinfraError(
            f"{shown}, but {path} already holds another key for it",
            fix="check why the key changed; remove the old line with `ssh-keygen -R` first",
        )
    console.line(shown)
    if not yes and not confirm(console, f"Add it to {path}?"):
        raise typer.Exit(1)
    try:
        append_known_host(path, host, port, key)
    except OSError as error:
        raise KbinfraError(
            f"cannot add the key to the known_hosts file: {error.strerror or error}",
            where=str(path),
            fix="pass --known-hosts a file path in a folder this user can write",
        ) from None
    console.line(f"added to {path}")


# ---------------------------------------------------------------- releases
#: What ``kbinfra rollback`` says before it starts, and docs/operations.md with it.
DATA_NOTE = "data is not rolled back (volumes are as they were): `kbinfra restore` is for data"


@app.command(epilog=examples("kbinfra history", "kbinfra history -o json"))
def history(
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """The releases recorded on the target, newest first: each apply that changed something."""
    from kbinfra.releases import history_rows, read_releases  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    with where:
        releases = read_releases(where.file_store(stack.spec.name))
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "target": where.name,
                "releases": [r.summary() for r in reversed(releases)],
            }
        )
        return
    if not releases:
        console.note(f"no release recorded on {where.name} yet: `kbinfra apply` records one")
        return
    console.table(
        f"releases of stack {stack.spec.name} on {where.name}",
        ["release", "time (UTC)", "kbinfra", "changed", "note"],
        history_rows(releases),
    )


@app.command(
    epilog=examples("kbinfra rollback", "kbinfra rollback 3 --yes", "kbinfra rollback -y -o json")
)
def rollback(
    release_number: Annotated[
        int | None,
        typer.Argument(
            metavar="RELEASE",
            help="The release to return to (`kbinfra history`); default: the one before "
            "the current one.",
            min=1,
            show_default=False,
        ),
    ] = None,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Roll back without asking.")] = False,
    timeout: HealthTimeoutOption = None,
    force_unlock: ForceUnlockOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Return to an earlier release's images and configuration, health-gated like apply.

    The release's stack file is rendered with today's secrets and TLS files (a secret is
    never rolled back), each image reference is put back on the release's image id, and the
    result is applied. Once it converged, kbinfra.yaml is the release's (the one it replaced
    is kept as kbinfra.yaml.before-rollback), so the next plan has nothing to do. Data is
    never rolled back: `kbinfra restore` is for data.
    """
    from kbinfra.apply import apply_stack, plan_stack, target_engine  # noqa: PLC0415
    from kbinfra.releases import (  # noqa: PLC0415
        BEFORE_ROLLBACK,
        choose_release,
        data_volume_moves,
        image_moves,
        read_releases,
        refuse_data_volume_moves,
        release_stack,
        restore_stack_file,
    )
    from kbinfra.rotation_state import refuse_while_rotating  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    refuse_while_rotating(stack.dir, "rollback")
    with where:
        release = choose_release(read_releases(where.file_store(stack.spec.name)), release_number)
        old = release_stack(stack, release)
        refuse_data_volume_moves(release, data_volume_moves(old, stack))
        console.note(f"rolling back to release {release.number} of {release.time:%Y-%m-%d %H:%M}")
        console.note(DATA_NOTE)
        if not yes:
            engine = target_engine(where, stack.spec.name)
            present = engine.present_images(i.ref for i in release.images.values())
            for ref, image_id in image_moves(release, present).items():
                console.note(f"image {ref} goes back to {image_id[7:19]}")
            if not console.json_mode:
                print_plan(console, plan_stack(old, where))
            if not confirm(console, f"Roll {where.name} back to release {release.number}?"):
                raise typer.Exit(1)
        with apply_progress(console) as progress:
            result = apply_stack(
                old,
                where,
                timeout=timeout,
                force_unlock=force_unlock,
                progress=progress,
                rollback_to=release,
            )
    if result.ok:
        replaced = restore_stack_file(stack.dir, release.stack_file)
        if replaced:
            result.notes.append(
                f"kbinfra.yaml is release {release.number}'s; the one it replaced is "
                f"{BEFORE_ROLLBACK}"
            )
        if stack.profile != old.profile:
            result.notes.append(
                f"profile {stack.spec.profile} now differs from the values release "
                f"{release.number} used: the next plan shows what that changes"
            )
    report_apply(console, result, where.name)


def _stack_with_new_images(
    stack: "Stack", named: list[str], to: str | None
) -> "tuple[Path, str, Stack]":
    """kbinfra.yaml's path, its text with ``--to`` applied to the ``named`` services, and
    the stack that text makes (not written anywhere yet)."""
    from kbinfra.spec.stack import parse_stack  # noqa: PLC0415
    from kbinfra.stack import stack_of  # noqa: PLC0415
    from kbinfra.upgrade import new_image_for, stack_file_path, with_images  # noqa: PLC0415

    if to is not None and not named:
        raise KbinfraError(
            "--to needs the services it is for",
            where="--to",
            fix="e.g. `upgrade qdrant --to v1.17.2`",
        )
    path = stack_file_path(stack)
    text = path.read_text(encoding="utf-8")
    if to is not None:
        images = {name: new_image_for(stack.contexts[name].image, to) for name in named}
        text = with_images(text, images, where=str(path))
    spec, doc = parse_stack(text, path)
    return path, text, stack_of(stack.dir, spec, doc, stack.profile)


@app.command(
    epilog=examples(
        "kbinfra upgrade qdrant --to v1.17.2 --check",
        "kbinfra upgrade qdrant --to v1.17.2 --yes",
        "kbinfra upgrade postgres --to postgres:18.1-bookworm --check",
        "kbinfra upgrade            # the images you changed in kbinfra.yaml",
    )
)
def upgrade(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SERVICE...",
            help="The services to upgrade; default: every one whose image in kbinfra.yaml "
            "is not what its container runs.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="TAG|IMAGE",
            help="The new tag (of the service's image repository) or a whole image reference.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Show the upgrade and its checks; change nothing.")
    ] = False,
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Upgrade without asking.")] = False,
    timeout: HealthTimeoutOption = None,
    output: OutputOption = Output.text,
) -> None:
    """New images for services: refused when the data cannot follow, backed up first.

    Each store says what it runs now and whether the new image can take its data over
    (PostgreSQL: a newer major by dump and restore into a new volume, the old one kept;
    Qdrant: one minor version at a time, never back; Redis: never an older release line).
    Every refusal is shown before anything changes. Then the affected stores are backed up
    (verified as written; `kbinfra restore` takes it), the new images are applied to those
    services only, health-gated, and kbinfra.yaml names them.
    """
    from kbinfra.apply import apply_stack, plan_stack, target_engine  # noqa: PLC0415
    from kbinfra.backup.run import data_handlers  # noqa: PLC0415
    from kbinfra.upgrade import (  # noqa: PLC0415
        changed_images,
        kept_volume_note,
        migrate_and_switch,
        plan_upgrade,
        refuse,
    )

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    from kbinfra.rotation_state import refuse_while_rotating  # noqa: PLC0415

    refuse_while_rotating(stack.dir, "upgrade")
    named = stack.select(services or [], asked_as="upgrade")
    path, text, new = _stack_with_new_images(stack, named, to)
    with where:
        containers = {
            c.service: c
            for c in target_engine(where, stack.spec.name).stack_containers()
            if c.service
        }
        chosen = named or changed_images(new, containers)
        if not chosen:
            console.note("nothing to upgrade: every container runs the image kbinfra.yaml names")
            return
        stores = [name for name in chosen if name in data_handlers(stack)]
        steps = plan_upgrade(
            stack, new, where, services=chosen, containers=containers, stores=stores
        )
        if console.json_mode and (check or any(s.refusal for s in steps)):
            console.emit_json({"stack": stack.spec.name, "steps": [s.as_json() for s in steps]})
        elif not console.json_mode:
            console.table(
                f"upgrade of stack {stack.spec.name} on {where.name}",
                ["service", "from", "to", "running", "backed up first", "verdict"],
                [s.row() for s in steps],
            )
        refuse(steps)
        moving, text, new = _with_migration(console, steps, text, new)
        _refuse_other_changes(plan_stack(new, where, with_diffs=False), chosen)
        if check:
            return
        if not yes and not confirm(console, f"Upgrade {', '.join(chosen)} on {where.name}?"):
            raise typer.Exit(1)
        backup = _backup_before_upgrade(console, stack, where, stores) if stores else None
        with apply_progress(console) as progress:
            if moving is not None:
                result = migrate_and_switch(
                    stack, new, where, moving, stack_file=text, timeout=timeout, progress=progress
                )
            else:
                result = apply_stack(
                    new, where, timeout=timeout, progress=progress, stack_file=text
                )
    if result.ok and path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
        result.notes.append(
            f"kbinfra.yaml now names {', '.join(new.contexts[n].image for n in chosen)}"
        )
    kept = kept_volume_note(stack, moving, where.name) if moving is not None else None
    if result.ok and kept is not None:
        result.notes.append(kept)
    if backup is not None:
        result.notes.append(f"the backup taken before it (drill passed): {backup}")
    report_apply(console, result, where.name)


def _with_migration(
    console: Console, steps: "list[UpgradeStep]", text: str, new: "Stack"
) -> "tuple[UpgradeStep | None, str, Stack]":
    """The step whose data moves (if one does), and the stack file and stack with its new
    settings (the new volume); its steps shown."""
    from kbinfra.spec.stack import parse_stack  # noqa: PLC0415
    from kbinfra.stack import stack_of  # noqa: PLC0415
    from kbinfra.upgrade import stack_file_path, with_settings  # noqa: PLC0415

    moving = next((s for s in steps if s.migration is not None), None)
    if moving is None or moving.migration is None:
        return None, text, new
    path = stack_file_path(new)
    text = with_settings(text, {moving.service: moving.migration.settings}, where=str(path))
    new = stack_of(new.dir, *parse_stack(text, path), new.profile)
    for number, line in enumerate(moving.migration.steps, start=1):
        console.note(f"{moving.service} step {number}: {line}")
    return moving, text, new


def _refuse_other_changes(plan: "Plan", chosen: list[str]) -> None:
    """An upgrade changes its services' images and nothing else: other pending changes of
    kbinfra.yaml are applied by ``apply``, where they are shown and asked for."""
    others = [a.service for a in plan.services if a.action != "nothing" and a.service not in chosen]
    if others:
        raise KbinfraError(
            f"kbinfra.yaml also changes {', '.join(others)}; an upgrade changes only "
            f"{', '.join(chosen)}: nothing was changed",
            fix="`kbinfra plan` shows those changes: apply them first, or name them too",
        )


def _backup_before_upgrade(
    console: Console, stack: "Stack", where: "Target", stores: list[str]
) -> Path:
    """Back ``stores`` up and run the restore drill on it, with today's images: after the
    upgrade, a Qdrant snapshot no longer restores (same minor version only)."""
    from kbinfra.backup.run import backup_root, run_backup, run_drill  # noqa: PLC0415
    from kbinfra.offsite.records import LOCAL, record_verified  # noqa: PLC0415

    progress = console_progress(console)
    backup = run_backup(stack, where, progress=progress, services=stores, reason="safety")
    drill = run_drill(stack, where, backup.path, progress=progress)
    if not drill.ok:
        found = "; ".join(str(d) for d in drill.differences())
        raise KbinfraError(
            f"the backup taken before the upgrade did not pass its restore drill: "
            f"{found[:200]}; nothing was changed",
            where=str(backup.path),
            fix="see `kbinfra backup verify` of it, fix what it says, then upgrade",
        )
    record_verified(backup_root(stack), LOCAL, backup.manifest.name, backup.manifest.finished_at)
    console.note(f"backed up {', '.join(stores)} to {backup.path}; its restore drill passed")
    return backup.path
