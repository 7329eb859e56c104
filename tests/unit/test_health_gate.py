"""kbinfra's health gate: its backoff, its give-up time and what it runs (a fake clock, no
real sleeping)."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from kbinfra.health_gate import (
    Attempt,
    BoundedAttempts,
    backoff_delays,
    exec_command,
    wait_until_healthy,
)
from kbinfra.targets.engine import container_problem


class FakeTime:
    """A clock that moves only when the gate sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_the_backoff_doubles_from_0_2_s_to_2_s() -> None:
    assert list(itertools.islice(backoff_delays(), 8)) == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]


def test_healthy_on_the_first_passing_attempt() -> None:
    fake = FakeTime()
    answers = iter([Attempt(1, "refused"), Attempt(7, "refused"), Attempt(0, "")])
    result = wait_until_healthy(
        lambda: next(answers), lambda: None, timeout_s=60, clock=fake.clock, sleep=fake.sleep
    )
    assert result.error is None
    assert result.attempts == 3
    assert fake.sleeps == [0.2, 0.4]
    assert result.seconds == pytest.approx(0.6)


def test_it_gives_up_at_the_timeout_with_the_last_output() -> None:
    fake = FakeTime()
    outputs = (Attempt(1, f"wget: can't connect (try {n})\n") for n in itertools.count(1))
    result = wait_until_healthy(
        lambda: next(outputs), lambda: None, timeout_s=10, clock=fake.clock, sleep=fake.sleep
    )
    # 0.2 + 0.4 + 0.8 + 1.6 + 2 + 2 + 2 = 9, then only the 1 s left before the deadline.
    assert fake.sleeps == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 1.0]
    assert result.seconds == pytest.approx(10.0)
    assert result.attempts == 9
    assert (
        result.error
        == "not healthy after 10s; last check: exit code 1: wget: can't connect (try 9)"
    )


def test_slow_attempts_count_against_the_timeout() -> None:
    fake = FakeTime()

    def slow() -> Attempt:
        fake.now += 4.0  # each attempt waits out a 4 s check timeout
        return Attempt(None, "")

    result = wait_until_healthy(slow, lambda: None, timeout_s=9, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [0.2, 0.4]  # 4 + 0.2 + 4 + 0.4 + 4 = 12.6 ≥ 9: no third sleep
    assert result.attempts == 3
    assert result.error is not None and result.error.endswith("last check: no answer")


def test_a_container_that_exits_fails_at_once() -> None:
    fake = FakeTime()
    problems = iter([None, None, "container exited with code 1"])
    ran: list[int] = []

    def attempt() -> Attempt:
        ran.append(1)
        return Attempt(1, "")

    result = wait_until_healthy(
        attempt, lambda: next(problems), timeout_s=60, clock=fake.clock, sleep=fake.sleep
    )
    assert result.error == "container exited with code 1"
    assert len(ran) == 2 and fake.sleeps == [0.2, 0.4]


@pytest.mark.parametrize(
    ("test", "command"),
    [
        (["CMD", "wget", "-qO", "/dev/null", "http://127.0.0.1:9093/-/ready"],
         ["wget", "-qO", "/dev/null", "http://127.0.0.1:9093/-/ready"]),
        (["CMD-SHELL", 'pg_isready -U "$POSTGRES_USER"'],
         ["/bin/sh", "-c", 'pg_isready -U "$POSTGRES_USER"']),
        (["NONE"], None),
    ],
)  # fmt: skip
def test_the_gate_runs_what_docker_runs(test: list[str], command: list[str] | None) -> None:
    assert exec_command(test) == command


@pytest.mark.parametrize("test", [["CMD"], ["CMD-SHELL", "a", "b"], ["curl", "x"]])
def test_a_malformed_test_is_refused(test: list[str]) -> None:
    with pytest.raises(ValueError, match="not a Docker health-check test"):
        exec_command(test)


def test_an_attempt_that_overruns_is_a_failure_and_is_not_run_twice() -> None:
    release = threading.Event()
    runs: list[int] = []

    def hanging_exec() -> tuple[int, str]:
        runs.append(1)
        release.wait(30)
        return 0, "ok"

    attempts = BoundedAttempts(hanging_exec, timeout_s=0.05)
    first = attempts()
    assert first.code is None and "longer than its timeout (0.05s)" in first.output
    assert not attempts().passed  # still the same exec: no second one started
    assert runs == [1]
    release.set()
    assert attempts() == Attempt(0, "ok")
    assert runs == [1]
    assert attempts() == Attempt(0, "ok") and runs == [1, 1]


def test_an_exec_the_engine_refuses_is_a_failed_attempt() -> None:
    def refused() -> tuple[int, str]:
        raise RuntimeError("container abc is not running")

    result = BoundedAttempts(refused, timeout_s=5)()
    assert result == Attempt(-1, "container abc is not running")
    assert result.describe() == "exit code -1: container abc is not running"


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ({"State": {"Status": "running"}, "RestartCount": 0}, None),
        ({"State": {"Status": "running", "Health": {"Status": "starting"}}}, None),
        ({"State": {"Status": "exited", "ExitCode": 127, "Error": "exec: no such file"}},
         "container exited with code 127: exec: no such file"),
        ({"State": {"Status": "running", "ExitCode": 0}, "RestartCount": 1},
         "container exited with code 0"),
        ({"State": {"Status": "running",
                    "Health": {"Status": "unhealthy", "Log": [{"Output": "a\nrefused\n"}]}}},
         "Docker's health check found it unhealthy; last check: refused"),
        ({"State": {"Status": "running",
                    "Health": {"Status": "unhealthy", "Log": [{"Output": "HTTP Error 503"}]}},
          "Config": {"Healthcheck": {"Retries": 3, "StartPeriod": 30_000_000_000}}},
         "Docker's health check found it unhealthy (3 failed checks in a row after its 30s "
         "start period); last check: HTTP Error 503"),
    ],
)  # fmt: skip
def test_the_gate_stops_for_a_container_that_will_not_come_up(
    info: dict[str, Any], problem: str | None
) -> None:
    assert container_problem(info) == problem
