"""Clients that send requests in a thread while a command runs (an apply, a rotation), each
request counted and each failure kept: the evidence that the command failed no request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Self


class BackgroundTraffic:
    """Runs :meth:`send` in a thread from ``with``'s start to its end. A subclass's ``send``
    loops ``for _ in self.rounds():`` and counts into :attr:`sent` and :attr:`failures`."""

    #: The longest a client runs, whatever happens to the command.
    max_seconds: float = 900
    #: The pause after each round (under nginx's rate limit where it goes through nginx).
    pause_s: float = 0.02
    join_timeout_s: float = 60

    def __init__(self) -> None:
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.send, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_timeout_s)

    def send(self) -> None:
        raise NotImplementedError

    def rounds(self) -> Iterator[int]:
        """Round numbers until the ``with`` block ends or :attr:`max_seconds` pass, with
        :attr:`pause_s` after each."""
        started = time.monotonic()
        number = 0
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            yield number
            number += 1
            self._stop.wait(self.pause_s)

    def report(self, what: str = "requests") -> str:
        return f"{self.sent} {what}, {len(self.failures)} failed: {self.failures[:5]}"
