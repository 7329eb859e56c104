"""The apply scheduler with a fake runner: each service after what it needs at start."""

from __future__ import annotations

import threading
import time
from typing import Any

from kbinfra.apply import ServiceResult, _run_services, health_timeout
from kbinfra.containers import DesiredService, Facts, ObservedContainer
from kbinfra.plan import Action, Plan, ServiceAction, dependencies, desired_services
from kbinfra.render import render_stack


class FakeRunner:
    """Records start and end order; fails the services it is told to."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.fail = fail
        self.started: list[str] = []
        self.finished: list[str] = []
        self.lock = threading.Lock()

    def run(
        self, desired: DesiredService, action: Action, observed: ObservedContainer | None
    ) -> ServiceResult:
        with self.lock:
            self.started.append(desired.service)
        time.sleep(0.01)
        with self.lock:
            self.finished.append(desired.service)
        if desired.service in self.fail:
            return ServiceResult(desired.service, action, "failed", error="boom")
        return ServiceResult(desired.service, action, "created")


def _setup(make_stack: Any) -> tuple[dict[str, DesiredService], Plan]:
    stack = make_stack("minimum")
    desired = desired_services(stack, render_stack(stack))
    plan = Plan(
        stack="kb",
        target="local",
        services=tuple(ServiceAction(n, d.container, "create") for n, d in desired.items()),
        files=(),
    )
    return desired, plan


def test_each_service_starts_after_what_it_needs_and_everything_is_applied(
    make_stack: Any,
) -> None:
    desired, plan = _setup(make_stack)
    runner = FakeRunner()
    results = _run_services(desired, plan, Facts(), runner, 4)  # type: ignore[arg-type]
    assert [r.service for r in results] == list(desired)
    assert {r.outcome for r in results} == {"created"}
    for name, needs in dependencies(desired).items():
        for need in needs:
            assert runner.finished.index(need) < runner.started.index(name)


def test_a_failure_skips_what_needs_the_failed_service(make_stack: Any) -> None:
    desired, plan = _setup(make_stack)
    runner = FakeRunner(fail=frozenset({"postgres"}))
    results = {r.service: r for r in _run_services(desired, plan, Facts(), runner, 4)}  # type: ignore[arg-type]
    assert results["postgres"].outcome == "failed"
    assert results["postgres-exporter"].outcome == "skipped"
    assert "postgres-exporter" not in runner.started


def test_unchanged_services_are_not_run(make_stack: Any) -> None:
    desired, plan = _setup(make_stack)
    plan = Plan(
        stack="kb",
        target="local",
        services=tuple(ServiceAction(n, d.container, "nothing") for n, d in desired.items()),
        files=(),
    )
    runner = FakeRunner()
    results = _run_services(desired, plan, Facts(), runner, 2)  # type: ignore[arg-type]
    assert {r.outcome for r in results} == {"unchanged"}
    assert runner.started == []


def test_health_timeout_from_the_check(make_stack: Any) -> None:
    desired, _ = _setup(make_stack)
    postgres = desired["postgres"]
    check = postgres.spec.healthcheck
    assert check is not None
    expected = check.start_period_s + check.retries * (check.interval_s + check.timeout_s) + 30
    assert health_timeout(postgres, None) == expected
    assert health_timeout(postgres, 7) == 7
