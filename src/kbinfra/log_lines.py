"""``kbinfra logs``, the pure part: ``--since`` as Docker reads it, Docker's timestamped log
lines, their order across containers, and the service prefix each printed line gets.

Nothing here talks to an engine (that is :mod:`kbinfra.targets.streams`), so every decision
is tested without one.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kbinfra.errors import KbinfraError

#: Go's duration units, as ``docker logs --since 1h30m`` reads them.
_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIX_TIME = re.compile(r"\d+(?:\.\d+)?")
_FRACTION = re.compile(r"\.(\d+)")
NANOS_PER_S = 1_000_000_000


def parse_since(value: str, now: dt.datetime) -> float:
    """``--since`` as the Unix time (seconds) it stands for, in the forms Docker accepts: a
    duration before ``now`` (``10m``, ``2h``, ``1h30m``), an RFC 3339 time
    (``2026-12-01T14:00:00Z``; without a zone: local time, as Docker reads it), a date, or a
    Unix timestamp."""
    text = value.strip()
    if _is_duration(text):
        seconds = sum(
            float(number) * _DURATION_UNITS_S[unit] for number, unit in _DURATION_PART.findall(text)
        )
        return now.timestamp() - seconds
    if _UNIX_TIME.fullmatch(text):
        return float(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise KbinfraError(
            f"--since {value!r} is not a duration, an RFC 3339 time or a Unix timestamp",
            where="--since",
            fix="give e.g. 10m, 2h, 1h30m, 2026-12-01T14:00:00Z or 1764597600",
        ) from None
    return moment.timestamp()  # a naive time is local time


def _is_duration(text: str) -> bool:
    return bool(text) and "".join(m.group(0) for m in _DURATION_PART.finditer(text)) == text


@dataclass(frozen=True, order=True)
class LogTime:
    """A log line's time with Docker's nanosecond precision, comparable (``order=True``)."""

    seconds: int
    nanos: int

    def __str__(self) -> str:
        moment = dt.datetime.fromtimestamp(self.seconds, dt.UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{self.nanos:09d}Z"


def parse_log_time(stamp: str) -> LogTime | None:
    """Docker's RFC 3339 timestamp (nanoseconds, ``Z`` or an offset) as a :class:`LogTime`.

    Compared as text, ``…:00.1Z`` would sort after ``…:00.12Z`` (Go trims trailing zeros in
    some versions): the fraction is read as a number instead."""
    fraction = _FRACTION.search(stamp)
    nanos = 0
    plain = stamp
    if fraction is not None:
        digits = fraction.group(1)[:9]
        nanos = int(digits.ljust(9, "0"))
        plain = stamp[: fraction.start()] + stamp[fraction.end() :]
    try:
        moment = dt.datetime.fromisoformat(plain)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return LogTime(calendar.timegm(moment.utctimetuple()), nanos)


@dataclass(frozen=True)
class LogLine:
    """One line a service's container wrote (stdout or stderr), with Docker's timestamp."""

    service: str
    time: LogTime | None
    text: str


def split_timestamp(service: str, raw: str) -> LogLine:
    """``2026-12-01T14:00:00.123456789Z text`` (Docker's ``timestamps=True`` form)."""
    stamp, space, text = raw.partition(" ")
    time = parse_log_time(stamp) if space else None
    if time is None:
        return LogLine(service, None, raw)
    return LogLine(service, time, text)


def interleave(per_service: Iterable[Sequence[LogLine]]) -> list[LogLine]:
    """Every line in time order; a container's own lines keep their order, and a line
    without a time stays after the line before it (the sort is stable)."""
    keyed = []
    for lines in per_service:
        last = LogTime(0, 0)
        for line in lines:
            last = line.time or last
            keyed.append((last, line))
    keyed.sort(key=lambda pair: pair[0])
    return [line for _, line in keyed]


#: ANSI colours for service prefixes, in the order services are given them.
PALETTE = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


class LinePrefixer:
    """``service | text``, the names aligned, each service in its own colour when
    ``colour`` (a terminal without ``--no-color`` or ``NO_COLOR``)."""

    def __init__(self, services: Sequence[str], *, colour: bool, timestamps: bool) -> None:
        self.width = max((len(s) for s in services), default=0)
        self.colour = colour
        self.timestamps = timestamps
        self._colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(services)}

    def __call__(self, line: LogLine) -> str:
        name = f"{line.service:<{self.width}} |"
        if self.colour:
            name = f"\x1b[{self._colours[line.service]}m{name}\x1b[0m"
        if self.timestamps and line.time is not None:
            return f"{name} {line.time} {line.text}"
        return f"{name} {line.text}"
