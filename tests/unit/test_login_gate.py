"""Apply's health gate logs in with the stack's credentials where a service says how."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kbinfra.apply import ServiceRunner, login_checks
from kbinfra.health_gate import exec_command
from kbinfra.plan import desired_services
from kbinfra.progress import SILENT
from kbinfra.render import render_stack

REFUSED = 'psql: error: FATAL:  password authentication failed for user "kb"\n'


class HealthyEngine:
    """A running container whose health test passes; logging into it answers ``login``."""

    def __init__(self, login: tuple[int, str], health_test: Sequence[str]) -> None:
        self.login = login
        self.health_test = health_test
        self.commands: list[Sequence[str]] = []

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"Status": "running"}, "RestartCount": 0}

    def exec(self, container_id: str, command: Sequence[str]) -> tuple[int, str]:
        if command == self.health_test:
            return 0, ""
        self.commands.append(command)
        return self.login


def gate(make_stack: Any, login: tuple[int, str], service: str) -> tuple[str | None, Any]:
    stack = make_stack("minimum")
    desired = desired_services(stack, render_stack(stack))
    check = desired[service].spec.healthcheck
    assert check is not None
    engine = HealthyEngine(login, exec_command(check.test) or [])
    runner = ServiceRunner(
        engine,  # type: ignore[arg-type]
        stack.secrets,
        stack.redact,
        None,
        SILENT,
        login_checks=login_checks(stack),
    )
    return runner._gate(desired[service], "c0ffee")[0], engine


def test_a_healthy_postgres_whose_password_fails_is_not_healthy(make_stack: Any) -> None:
    error, engine = gate(make_stack, (2, REFUSED), "postgres")
    assert error is not None
    assert error.startswith(
        "the stack's postgres_password does not open database 'kb' as role 'kb': volume "
        "kb-postgres-data keeps the password of the stack that initialized it "
        '(psql: error: FATAL:  password authentication failed for user "kb") — put that '
        "stack's postgres_password back in secrets.yaml"
    )
    assert "\n" not in error
    command = " ".join(engine.commands[0])
    assert "psql" in command and "TESTSECRET" not in command  # the password stays in env


def test_the_login_passes_and_services_without_a_check_are_not_logged_into(
    make_stack: Any,
) -> None:
    assert gate(make_stack, (0, "1\n"), "postgres")[0] is None
    error, engine = gate(make_stack, (2, REFUSED), "redis")
    assert error is None and engine.commands == []
