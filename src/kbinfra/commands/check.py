"""``kbinfra check`` and ``kbinfra bench``: prove the deployed stack works, then measure it.

Each command parses options, calls one function of ``kbinfra.probing`` and prints. Clients
(psycopg, redis, httpx, docker) are imported by the probes when they run.
"""

import os
import platform
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from kbinfra import __version__
from kbinfra.commands.options import (
    DirOption,
    ForceUnlockOption,
    IdentityOption,
    KnownHostsOption,
    OutputOption,
    TargetOption,
    console_progress,
    examples,
    only_option,
    open_stack_and_target,
)
from kbinfra.errors import KbinfraError
from kbinfra.ui import Console, Output

EXIT_FAILED = 1

#: Mounted by :mod:`kbinfra.cli` at the top level: ``kbinfra check``, ``kbinfra bench``.
app = typer.Typer()

OnlyOption = Annotated[
    list[str] | None, only_option("Only these services; 'stack' for the stack-wide checks.")
]


@app.command(epilog=examples("kbinfra check", "kbinfra check --only postgres,stack -o json"))
def check(
    stack_dir: DirOption = Path(),
    only: OnlyOption = None,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Prove every enabled service is reachable, locked down and running as rendered.

    Exit 0 only when every check passes; 1 when one fails; 2 on errors.
    """
    from kbinfra.probing.probe import check_rows_ok  # noqa: PLC0415
    from kbinfra.probing.run import run_checks, select  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    select(stack, only or [])  # a misspelt --only is an error before the engine is asked
    with where:
        where.open_engine()  # an unreachable target is one error line (exit 2), not 40 rows
        rows, unprobed = run_checks(stack, where, only or [], progress=console_progress(console))
    ok = check_rows_ok(rows)
    failed = [r for r in rows if not r.ok]
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "target": where.name,
                "ok": ok,
                "checks": [r.as_json() for r in rows],
                "not_probed": unprobed,
            }
        )
    else:
        table = [(r.service, r.check, r.category, r.outcome, r.value) for r in rows]
        console.table(
            f"stack {stack.spec.name} on {where.name}",
            ["service", "check", "kind", "result", "measured"],
            table,
        )
        for row in failed:
            console.line(f"FAIL {row.service} {row.check}: {row.fix}")
        if unprobed:
            console.line(f"no checks for: {', '.join(unprobed)} (Prometheus scrapes them)")
        console.line(f"{len(rows)} checks: {len(rows) - len(failed)} passed, {len(failed)} failed")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _interrupt_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _client() -> dict[str, Any]:
    return {
        "kbinfra": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


@app.command(
    epilog=examples(
        "kbinfra bench --quick",
        "kbinfra bench --only qdrant --prometheus-textfile /var/lib/node_exporter/kb.prom",
    )
)
def bench(
    stack_dir: DirOption = Path(),
    only: OnlyOption = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A few seconds per benchmark (what CI runs).")
    ] = False,
    prometheus_textfile: Annotated[
        Path | None,
        typer.Option(
            "--prometheus-textfile",
            metavar="FILE",
            help="Also write the results as Prometheus metrics (node-exporter textfile).",
            show_default=False,
        ),
    ] = None,
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    force_unlock: ForceUnlockOption = False,
    output: OutputOption = Output.text,
) -> None:
    """Measure every enabled service: throughput and p50/p95/p99 against thresholds.

    Holds the stack's lock (no apply meanwhile); every object it creates is named
    kbinfra_bench_<random> and removed at the end, also when interrupted. Exit 0 when every
    benchmark ran and met its thresholds; 1 otherwise; 2 on errors.
    """
    import secrets  # noqa: PLC0415 (random, hashlib…: ~16 M instructions of every start)

    from kbinfra.probing.probe import (  # noqa: PLC0415
        BENCH_COLUMNS,
        bench_plan,
        bench_rows,
        prometheus_text,
    )
    from kbinfra.probing.run import run_benches, select  # noqa: PLC0415
    from kbinfra.stack_lock import stack_locked  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(
        stack_dir, target, known_hosts, identity, console, swarm=True
    )
    select(stack, only or [])  # a misspelt --only is an error before the engine is asked
    if prometheus_textfile is not None and prometheus_textfile.is_dir():
        raise KbinfraError(
            "the Prometheus textfile is a directory",
            where=str(prometheus_textfile),
            fix="pass --prometheus-textfile a file path, e.g. DIR/kbinfra_bench.prom",
        )
    plan = bench_plan(quick=quick, token=secrets.token_hex(6))
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    progress = console_progress(console)
    with where, stack_locked(where, stack.spec.name, force=force_unlock) as notes:
        for note in notes:
            console.note(note)
        progress.note("bench", f"{'quick' if quick else 'full'} run, objects named {plan.prefix}")
        results, skipped = run_benches(stack, where, plan, only or [], progress=progress)
    ok = bool(results) and all(r.ok for r in results)
    if prometheus_textfile is not None:
        try:
            _write_atomically(prometheus_textfile, prometheus_text(stack.spec.name, results))
        except OSError as error:
            raise KbinfraError(
                f"cannot write the Prometheus textfile: {error.strerror or error}",
                where=str(prometheus_textfile),
                fix="pass --prometheus-textfile a file path in a folder this user can write",
            ) from None
    if console.json_mode:
        console.emit_json(
            {
                "stack": stack.spec.name,
                "target": where.name,
                "quick": quick,
                "prefix": plan.prefix,
                "client": _client(),
                "ok": ok,
                "results": [r.as_json() for r in results],
                "not_benchmarked": skipped,
            }
        )
    else:
        console.table(
            f"stack {stack.spec.name} on {where.name} ({'quick' if quick else 'full'} run)",
            BENCH_COLUMNS,
            bench_rows(results),
        )
        if skipped:
            console.line(f"no benchmark for: {', '.join(skipped)}")
        missed = [r for r in results if not r.ok]
        console.line(
            f"{len(results)} benchmarks: {len(results) - len(missed)} met their thresholds, "
            f"{len(missed)} did not"
        )
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _write_atomically(path: Path, text: str) -> None:
    """node-exporter may read the file at any moment: write a temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temp.write_text(text, encoding="utf-8")
        temp.chmod(0o644)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


__all__ = ["bench", "check"]
