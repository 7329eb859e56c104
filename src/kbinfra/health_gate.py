"""kbinfra's own health gate: run a service's health test right after start, not when Docker
first does.

Docker (20.10 has no ``start_interval``) runs the first check one ``interval`` after start, so
a service up in half a second is reported healthy after ten. The gate runs the same
``HealthCheck.test`` through ``exec`` at once, then with backoff (0.2 s doubling to 2 s), each
attempt bounded by the check's own timeout, and counts the service healthy on the first
success. It gives up when the container exits or restarts, and after the timeout with the
last attempt's output. Docker's own check stays configured, for restarts and ``status``.
The loop is pure: the engine calls, the clock and the sleep are handed in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 2.0


def backoff_delays(first: float = FIRST_DELAY_S, most: float = MAX_DELAY_S) -> Iterator[float]:
    """0.2, 0.4, 0.8, 1.6, 2.0, 2.0, … seconds between attempts (no jitter: each service
    starts at its own moment, so their attempts do not fall in step)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


def exec_command(test: Sequence[str]) -> list[str] | None:
    """The command ``exec`` runs for a Docker health-check ``test``; None for ``NONE``.

    ``CMD-SHELL`` runs through ``/bin/sh -c`` as Docker does on Linux, so ``$VAR`` expands in
    the container's own environment.
    """
    kind, *rest = test
    if kind == "CMD" and rest:
        return rest
    if kind == "CMD-SHELL" and len(rest) == 1:
        return ["/bin/sh", "-c", rest[0]]
    if kind == "NONE":
        return None
    raise ValueError(f"not a Docker health-check test: {list(test)!r}")


class Attempt(NamedTuple):
    """One run of the health test: its exit code (None when it did not answer in time)."""

    code: int | None
    output: str

    @property
    def passed(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        last = f": {lines[-1]}" if lines else ""
        if self.code is None:
            return f"no answer{last}"
        return f"exit code {self.code}{last}"


class BoundedAttempts:
    """Runs ``run`` in a thread and waits at most ``timeout_s`` for it.

    Docker kills a check that overruns its timeout; an exec cannot be killed from here, so an
    attempt that overruns counts as failed and the next one waits for it to end instead of
    starting another: at most one test runs in the container at a time.
    """

    def __init__(self, run: Callable[[], tuple[int, str]], timeout_s: float) -> None:
        self.run = run
        self.timeout_s = timeout_s
        self._worker: threading.Thread | None = None
        self._result = Attempt(None, "")

    def _work(self) -> None:
        try:
            code, output = self.run()
            self._result = Attempt(code, output)
        except Exception as error:  # the engine refused the exec: the container stopped
            self._result = Attempt(-1, str(getattr(error, "explanation", None) or error))

    def __call__(self) -> Attempt:
        if self._worker is None or not self._worker.is_alive():
            self._result = Attempt(None, "")
            self._worker = threading.Thread(target=self._work, daemon=True)
            self._worker.start()
        self._worker.join(self.timeout_s)
        if self._worker.is_alive():
            return Attempt(None, f"the check ran longer than its timeout ({self.timeout_s:g}s)")
        return self._result


class GateResult(NamedTuple):
    error: str | None  # None: healthy
    seconds: float  # from the gate's start to the passing attempt (or to giving up)
    attempts: int


def wait_until_healthy(
    attempt: Callable[[], Attempt],
    problem: Callable[[], str | None],
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    delays: Iterator[float] | None = None,
) -> GateResult:
    """Healthy on the first passing ``attempt``; failed when ``problem`` (the container
    exited, restarted, or Docker found it unhealthy) says why, or after ``timeout_s``."""
    started = clock()
    deadline = started + timeout_s
    waits = delays if delays is not None else backoff_delays()
    tries = 0
    while True:
        trouble = problem()
        if trouble is not None:
            return GateResult(trouble, clock() - started, tries)
        result = attempt()
        tries += 1
        now = clock()
        if result.passed:
            return GateResult(None, now - started, tries)
        if now >= deadline:
            return GateResult(
                f"not healthy after {timeout_s:.0f}s; last check: {result.describe()}",
                now - started,
                tries,
            )
        sleep(min(next(waits), deadline - now))
