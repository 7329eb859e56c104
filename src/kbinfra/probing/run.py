"""``kbinfra check`` and ``kbinfra bench``: per-service probes, found in the service's folder.

A service is probed by ``kbinfra/services/<folder>/probe.py`` when that exists
(:func:`kbinfra.registry.service_part`). The module exposes
``checks(probe: ProbeContext) -> list[CheckRow]`` and, optionally,
``bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]``. Nothing here knows a
service's name; stack-wide checks (file modes, published ports) live in ``stack_checks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, cast

from kbinfra.errors import KbinfraError
from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckRow,
    ProbeContext,
    describe_error,
    failed_bench,
)
from kbinfra.progress import SILENT, Progress

if TYPE_CHECKING:
    from kbinfra.service import Service
    from kbinfra.stack import Stack
    from kbinfra.targets import Target

#: The name stack-wide checks are reported under, and that ``--only`` accepts for them.
STACK = "stack"

ChecksFunction = Callable[[ProbeContext], list[CheckRow]]
BenchFunction = Callable[[ProbeContext, BenchPlan], list[BenchResult]]


def probe_module(service: Service) -> ModuleType | None:
    """``kbinfra/services/<folder>/probe.py`` of ``service``, or None when it has no probes."""
    from kbinfra.registry import service_part  # noqa: PLC0415

    return service_part(service.folder_service, "probe")


def select(stack: Stack, only: Sequence[str]) -> list[str]:
    """The enabled services to probe (deployment order) plus ``stack``; ``only`` narrows it.

    ``only`` takes names repeated or comma-separated; an unknown or disabled one is an error.
    """
    known = [*stack.services, STACK]
    wanted = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise KbinfraError(
            f"--only {', '.join(unknown)}: not an enabled service of stack {stack.spec.name}",
            fix=f"choose from {', '.join(known)}",
        )
    return [name for name in known if not wanted or name in wanted]


def stack_checks(stack: Stack, target: Target) -> list[CheckRow]:
    """The stack-wide checks of the target's kind: one engine's, or a Swarm's."""
    if target.kind == "swarm":
        from kbinfra.swarm import stack_checks as swarm  # noqa: PLC0415
        from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

        assert isinstance(target, SwarmTarget)
        return swarm.checks(stack, target)
    from kbinfra.probing import stack_checks as engine  # noqa: PLC0415

    return engine.checks(stack, target)


def run_checks(
    stack: Stack,
    target: Target,
    only: Sequence[str] = (),
    *,
    progress: Progress = SILENT,
) -> tuple[list[CheckRow], list[str]]:
    """Every selected service's checks; also the services that have no probes."""
    rows: list[CheckRow] = []
    unprobed: list[str] = []
    for name in select(stack, only):
        if name == STACK:
            progress.note(STACK, "checking file modes and published ports")
            rows += stack_checks(stack, target)
            continue
        service = stack.services[name]
        module = probe_module(service)
        if module is None:
            unprobed.append(name)
            continue
        checks = cast(ChecksFunction, module.checks)
        progress.note(name, "checking")
        with target.probe_context(stack, service, progress=progress) as probe:
            rows += checks(probe)
    return rows, unprobed


def run_benches(
    stack: Stack,
    target: Target,
    plan: BenchPlan,
    only: Sequence[str] = (),
    *,
    progress: Progress = SILENT,
) -> tuple[list[BenchResult], list[str]]:
    """Every selected service's benchmarks, one service after the other (they would compete
    for the same CPUs otherwise); also the services that have none."""
    results: list[BenchResult] = []
    skipped: list[str] = []
    for name in select(stack, only):
        if name == STACK:
            continue
        service = stack.services[name]
        module = probe_module(service)
        bench = getattr(module, "bench", None) if module is not None else None
        if bench is None:
            skipped.append(name)
            continue
        with target.probe_context(stack, service, progress=progress) as probe:
            try:
                results += cast(BenchFunction, bench)(probe, plan)
            except Exception as error:  # one service's failure must not hide the others'
                results.append(failed_bench(name, "bench", "-", describe_error(error)))
    return results, skipped


__all__ = ["STACK", "probe_module", "run_benches", "run_checks", "select"]
