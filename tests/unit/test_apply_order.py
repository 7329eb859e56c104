"""The apply scheduler with a fake runner: each service after what it needs at start."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from kbinfra.apply import ServiceResult, ServiceRunner, _run_services, health_timeout
from kbinfra.containers import DesiredService, Facts, ObservedContainer
from kbinfra.plan import Action, Plan, ServiceAction, dependencies, desired_services
from kbinfra.progress import SILENT
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


def _create_all(desired: dict[str, DesiredService]) -> Plan:
    return Plan(
        stack="kb",
        target="local",
        services=tuple(ServiceAction(n, d.container, "create") for n, d in desired.items()),
        files=(),
    )


def _setup(make_stack: Any, profile: str = "minimum") -> tuple[dict[str, DesiredService], Plan]:
    stack = make_stack(profile)
    desired = desired_services(stack, render_stack(stack))
    return desired, _create_all(desired)


def test_each_service_starts_after_what_it_needs_and_everything_is_applied(
    make_stack: Any,
) -> None:
    desired, plan = _setup(make_stack)
    runner = FakeRunner()
    results = _run_services(desired, plan, Facts(), runner)  # type: ignore[arg-type]
    assert [r.service for r in results] == list(desired)
    assert {r.outcome for r in results} == {"created"}
    for name, needs in dependencies(desired).items():
        for need in needs:
            assert runner.finished.index(need) < runner.started.index(name)


def test_a_failure_skips_only_what_needs_the_failed_service(make_stack: Any) -> None:
    desired, plan = _setup(make_stack)
    # nginx made to need postgres-exporter: a chain two deep (no built-in service has one).
    nginx = desired["nginx"]
    desired["nginx"] = replace(nginx, spec=nginx.spec._replace(depends_on=["postgres-exporter"]))
    runner = FakeRunner(fail=frozenset({"postgres"}))
    results = {r.service: r for r in _run_services(desired, plan, Facts(), runner)}  # type: ignore[arg-type]
    assert results["postgres"].outcome == "failed"
    exporter, edge = results["postgres-exporter"], results["nginx"]
    assert (exporter.outcome, exporter.error) == (
        "skipped",
        "not applied: it waits for postgres, which failed",
    )
    assert (edge.outcome, edge.error) == (
        "skipped",
        "not applied: it waits for postgres-exporter, which was not applied",
    )
    assert not {"postgres-exporter", "nginx"} & set(runner.started)
    independent = set(desired) - {"postgres", "postgres-exporter", "nginx"}
    assert independent and all(results[n].outcome == "created" for n in independent)
    assert independent <= set(runner.finished)


class GatedEngine:
    """Containers whose health test passes only once ``expected`` of them run it at the
    same time; it counts the engine work in flight."""

    def __init__(self, expected: int) -> None:
        self.together = threading.Barrier(expected, timeout=30)
        self.lock = threading.Lock()
        self.working = 0
        self.most_working = 0
        self.checking = 0
        self.most_checking = 0

    def _work(self) -> None:
        with self.lock:
            self.working += 1
            self.most_working = max(self.most_working, self.working)
        time.sleep(0.01)  # let the other threads pile up on the slots
        with self.lock:
            self.working -= 1

    def claim_volumes(self, desired: DesiredService) -> bool:
        self._work()
        return False

    def create(self, desired: DesiredService, secrets: Any) -> str:
        self._work()
        return desired.service

    def put_files(self, container_id: str, files: Any) -> None:
        self._work()

    def start(self, container_id: str) -> None:
        self._work()

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"Status": "running"}, "RestartCount": 0}

    def exec(self, container_id: str, command: Any) -> tuple[int, str]:
        with self.lock:
            self.checking += 1
            self.most_checking = max(self.most_checking, self.checking)
        try:
            self.together.wait()
        except threading.BrokenBarrierError:
            return 1, "not every service waited for health at once"
        finally:
            with self.lock:
                self.checking -= 1
        return 0, ""


def test_waiting_for_health_holds_no_engine_slot(make_stack: Any) -> None:
    desired, plan = _setup(make_stack, "recommended")
    independent = {n: d for n, d in desired.items() if not d.spec.depends_on}
    engine = GatedEngine(expected=len(independent))
    runner = ServiceRunner(engine, {}, str, None, SILENT, parallel=4)  # type: ignore[arg-type]
    results = _run_services(independent, plan, Facts(), runner)
    assert len(independent) > 4
    assert {r.outcome for r in results} == {"created"}, [r.error for r in results]
    assert engine.most_checking == len(independent)
    assert engine.most_working <= 4
    assert all(r.healthy_after_s is not None for r in results)


def test_unchanged_services_are_not_run(make_stack: Any) -> None:
    desired, plan = _setup(make_stack)
    plan = Plan(
        stack="kb",
        target="local",
        services=tuple(ServiceAction(n, d.container, "nothing") for n, d in desired.items()),
        files=(),
    )
    runner = FakeRunner()
    results = _run_services(desired, plan, Facts(), runner)  # type: ignore[arg-type]
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


class ClockedEngine:
    """Engine calls that take fake time; the health test passes from the ``passes_from``-th
    run on (never, when None). Records the calls in order."""

    def __init__(self, clock: list[float], passes_from: int | None = 1) -> None:
        self.clock = clock
        self.passes_from = passes_from
        self.calls: list[str] = []
        self.health_runs = 0

    def _take(self, call: str, seconds: float) -> None:
        self.calls.append(call)
        self.clock[0] += seconds

    def claim_volumes(self, desired: DesiredService) -> bool:
        return False  # the service's volumes are its own already: no claim container

    def create(self, desired: DesiredService, secrets: Any) -> str:
        self._take("create", 1.0)
        return "new"

    def put_files(self, container_id: str, files: Any) -> None:
        self._take("put_files", 0.5)

    def rename(self, container_id: str, name: str) -> None:
        self._take(f"rename {container_id} {name}", 0.0)

    def stop(self, container_id: str, timeout: int) -> None:
        self._take(f"stop {container_id}", 5.0)

    def start(self, container_id: str) -> None:
        self._take(f"start {container_id}", 0.5)

    def remove(self, container_id: str) -> None:
        self._take(f"remove {container_id}", 0.0)

    def logs_tail(self, container_id: str, lines: int) -> list[str]:
        return ["the last line"]

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"Status": "running"}, "RestartCount": 0}

    def exec(self, container_id: str, command: Any) -> tuple[int, str]:
        self.health_runs += 1
        self.clock[0] += 0.1
        passed = self.passes_from is not None and self.health_runs >= self.passes_from
        return (0, "") if passed else (1, "connection refused")

    def wait_healthy(self, container_id: str, timeout: float) -> str | None:
        self.calls.append(f"wait_healthy {container_id}")
        return None


def _runner(engine: ClockedEngine, clock: list[float], timeout: float | None = None) -> Any:
    def sleep(seconds: float) -> None:
        clock[0] += seconds

    return ServiceRunner(
        engine,  # type: ignore[arg-type]
        {},
        str,
        timeout,
        SILENT,
        clock=lambda: clock[0],
        sleep=sleep,
    )


OLD = ObservedContainer(
    id="old", name="kb-redis", state="running", status="Up", image="redis", image_id=""
)


def test_healthy_after_counts_from_create_to_the_first_pass_without_the_old_stop(
    make_stack: Any,
) -> None:
    desired, _ = _setup(make_stack)
    clock = [0.0]
    engine = ClockedEngine(clock, passes_from=3)  # passes on the third run: 0.2 + 0.4 later
    result = _runner(engine, clock).run(desired["redis"], "recreate", OLD)
    assert result.outcome == "recreated"
    # create 1 + put_files 0.5 + start 0.5 + 3 runs of 0.1 + sleeps 0.2 + 0.4; the 5 s stop
    # of the previous container is not the new one's start-up.
    assert result.healthy_after_s == pytest.approx(2.9)
    assert result.as_json()["healthy_after_s"] == 2.9
    assert engine.calls == [
        "rename old kb-redis.kbinfra-old",
        "create",
        "put_files",
        "stop old",
        "start new",
        "remove old",
    ]


def test_a_recreate_that_never_passes_rolls_back(make_stack: Any) -> None:
    desired, _ = _setup(make_stack)
    clock = [0.0]
    engine = ClockedEngine(clock, passes_from=None)
    result = _runner(engine, clock, timeout=10).run(desired["redis"], "recreate", OLD)
    assert (result.outcome, result.rolled_back, result.healthy_after_s) == ("failed", True, None)
    assert result.error == "not healthy after 10s; last check: exit code 1: connection refused"
    assert result.logs == ["the last line"]
    assert engine.calls[-4:] == [
        "remove new",
        "rename old kb-redis",
        "start old",
        "wait_healthy old",  # the previous container's own (Docker's) check
    ]
    assert result.as_json()["healthy_after_s"] is None
