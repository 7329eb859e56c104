"""``kbinfra logs`` and ``kbinfra exec`` against real containers, locally and over SSH.

One small stack (PostgreSQL and Redis) per target kind, applied once for the module, and a
printer: a stand-in for a service that logs what it is told (stdout and stderr), run from
the test bed's plain Debian image with the stack's labels, as the ``node-exporter`` of the
stack (enabled in kbinfra.yaml after the apply). It copies what reaches two named pipes
to its stdout and stderr at once, so Docker's timestamps follow the order of the writes.
The hardened services cannot be made to print a chosen line from outside (their PID 1 is
not dumpable); PostgreSQL's own lines (a failed statement logs its text) show that a real
service's lines come through too.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from .stack_support import (
    KBINFRA,
    SECRET_MARK,
    Deployment,
    fixed_secret,
    interrupt_follow,
    new_deployment,
    read_terminal,
    read_until,
    reap,
)
from .testbed_support import Testbed

pytestmark = pytest.mark.integration

SERVICES = ("postgres", "redis")
PRINTER = "node-exporter"


@pytest.fixture(scope="module", params=["local", "ssh"])
def stack(
    request: pytest.FixtureRequest,
    testbed: Testbed,
    base_image: str,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp(f"operate-{request.param}") / "stack"
    deployment = new_deployment(request.param, folder, testbed, SERVICES, prefix="kbo")
    applied = deployment.run("apply", "--yes")
    assert applied.code == 0, applied.err
    printer = docker_client.containers.run(
        base_image,
        ["sh", "-c", "mkfifo /tmp/out /tmp/err; (while :; do cat /tmp/err >&2; done) & "
         "while :; do cat /tmp/out; done"],
        name=deployment.container(PRINTER),
        labels={"kbinfra.stack": deployment.name, "kbinfra.service": PRINTER},
        detach=True,
    )  # fmt: skip
    deployment.edit(lambda data: data["services"][PRINTER].update(enabled=True))
    yield deployment
    printer.remove(force=True)
    deployment.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
    )


def write_to_log(stack: Deployment, text: str, stream: str = "out") -> None:
    """``text`` as a line of the printer's log, on its stdout (``out``) or stderr (``err``)."""
    subprocess.run(
        ["docker", "exec", stack.container(PRINTER), "sh", "-c",
         f"printf '%s\\n' \"$0\" > /tmp/{stream}", text],
        check=True, capture_output=True,
    )  # fmt: skip


def postgres_fails(stack: Deployment, text: str) -> None:
    """PostgreSQL logs a failed statement with its text: ``text`` reaches its log."""
    subprocess.run(
        ["docker", "exec", "-e", f"PGPASSWORD={fixed_secret('postgres_password')}",
         stack.container("postgres"), "psql", "-U", "kb", "-d", "kb", "-c",
         f"select '{text}'::int"],
        check=False, capture_output=True,
    )  # fmt: skip


def marker() -> str:
    return f"mark-{uuid.uuid4().hex[:10]}"


def exec_argv(stack: Deployment, *args: str) -> list[str]:
    """``kbinfra exec`` takes its options before SERVICE, so --dir goes first."""
    return [*KBINFRA, "exec", "--dir", str(stack.dir), *args]


def run_exec(
    stack: Deployment, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        exec_argv(stack, *args), input=stdin, capture_output=True, text=True,
        env=stack.env, timeout=300, check=False,
    )  # fmt: skip
    assert SECRET_MARK not in done.stderr
    return done


# ---------------------------------------------------------------- logs
def test_logs_interleave_services_by_time_with_aligned_prefixes(stack: Deployment) -> None:
    marks = [marker() for _ in range(4)]
    for index, mark in enumerate(marks):
        if index % 2:
            write_to_log(stack, mark, stream="err" if index == 3 else "out")
        else:
            postgres_fails(stack, mark)
    shown = stack.run("logs", "--since", "5m")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    first = [next(i for i, line in enumerate(lines) if mark in line) for mark in marks]
    assert first == sorted(first), lines
    width = len(PRINTER)
    assert lines[first[1]] == f"{PRINTER} | {marks[1]}"
    assert lines[first[3]] == f"{PRINTER} | {marks[3]}"  # stderr too
    assert lines[first[0]].startswith(f"{'postgres':<{width}} | ")
    assert "ERROR" in lines[first[0]]


def test_logs_tail_gives_the_last_lines_of_each_service(stack: Deployment) -> None:
    marks = [marker() for _ in range(3)]
    for mark in marks:
        write_to_log(stack, mark)
    shown = stack.run("logs", PRINTER, "--tail", "2")
    assert shown.code == 0, shown.err
    assert shown.out.splitlines() == [f"{PRINTER} | {marks[1]}", f"{PRINTER} | {marks[2]}"]


def test_logs_redact_every_secret_a_service_prints(stack: Deployment) -> None:
    mark = marker()
    write_to_log(stack, f"{mark} password={fixed_secret('redis_app_password')} end")
    postgres_fails(stack, f"{mark}-{fixed_secret('qdrant_api_key')}")
    shown = stack.run("logs", PRINTER, "postgres", "--tail", "10")  # run() fails on a secret
    assert shown.code == 0, shown.err
    assert f"{PRINTER} | {mark} password=*** end" in shown.out.splitlines()
    assert f'"{mark}-***"' in shown.out


def test_logs_follow_prints_new_lines_of_every_service_until_interrupted(
    stack: Deployment,
) -> None:
    old = marker()
    write_to_log(stack, old)
    follower = stack.popen("logs", "-f", "--tail", "0")
    try:
        time.sleep(3)  # the follow has started (lines before it are not asked for)
        marks = [marker(), marker()]
        postgres_fails(stack, marks[0])
        write_to_log(stack, marks[1], stream="err")
        seen = read_until(follower, marks)
        assert f"{PRINTER} | {marks[1]}" in seen
        assert old not in seen
    finally:
        interrupt_follow(follower)


def test_logs_follow_ends_cleanly_on_sigterm(stack: Deployment) -> None:
    follower = stack.popen("logs", PRINTER, "-f", "--tail", "1")
    try:
        mark = marker()
        write_to_log(stack, mark)
        read_until(follower, [mark])
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert err == ""


def test_logs_colour_on_a_terminal_only_without_no_color(stack: Deployment) -> None:
    write_to_log(stack, marker())
    coloured = on_a_terminal(
        stack, [*KBINFRA, "logs", "redis", "--tail", "1", "--dir", str(stack.dir)]
    )
    assert "\x1b[36mredis |\x1b[0m" in coloured
    plain = on_a_terminal(
        stack, [*KBINFRA, "--no-color", "logs", "redis", "--tail", "1", "--dir", str(stack.dir)]
    )
    assert "\x1b[" not in plain and "redis | " in plain
    no_color = on_a_terminal(
        stack, [*KBINFRA, "logs", "redis", "--tail", "1", "--dir", str(stack.dir)], NO_COLOR="1"
    )
    assert "\x1b[" not in no_color and "redis | " in no_color


def test_logs_of_an_unknown_service_name_the_known_ones(stack: Deployment) -> None:
    shown = stack.run("logs", "rediss")
    assert shown.code == 2
    assert shown.err.count("\n") == 1, shown.err
    assert "did you mean 'redis'?" in shown.err and "postgres, redis" in shown.err


# ---------------------------------------------------------------- exec
def test_exec_streams_output_and_returns_the_commands_exit_code(stack: Deployment) -> None:
    done = run_exec(stack, "redis", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"
    ok = run_exec(stack, "postgres", "psql", "--version")  # no `--` needed either
    assert ok.returncode == 0, ok.stderr
    assert "PostgreSQL" in ok.stdout


def test_exec_interactive_forwards_stdin_until_its_end(stack: Deployment) -> None:
    done = run_exec(stack, "-i", "redis", "--", "sh", "-c", "wc -l", stdin="a\nb\nc\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_exec_it_runs_a_shell_on_a_terminal(stack: Deployment) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: kbinfra on the pseudo-terminal
        os.execve(KBINFRA[0], exec_argv(stack, "-it", "redis", "--", "sh"), stack.env)
    # Typed at once, before kbinfra has even connected: nothing typed ahead may be lost.
    os.write(fd, b"echo tty=$(tty | cut -c1-8) sum=$((6*7)); exit 3\r")
    seen = read_terminal(fd)
    code = reap(pid)
    assert "sum=42" in seen, seen
    assert "tty=/dev/pts" in seen, seen
    assert code == 3, seen


def test_exec_in_an_unknown_service_is_one_line(stack: Deployment) -> None:
    unknown = run_exec(stack, "nosuch", "--", "true")
    assert unknown.returncode == 2
    assert "exec nosuch: service is unknown" in unknown.stderr
    assert unknown.stderr.count("\n") == 1


# ---------------------------------------------------------------- terminals
def on_a_terminal(stack: Deployment, argv: list[str], **env: str) -> str:
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, {**stack.env, **env})
    seen = read_terminal(fd)
    assert reap(pid) == 0, seen
    return seen
