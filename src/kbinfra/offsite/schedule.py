"""``kbinfra backup schedule``: the nightly backup (and offsite upload) and the weekly drill
as a systemd timer or a cron entry. Pure: it returns the files and the exact command lines.

Both jobs run under ``flock`` on one lock file in the stack folder, so a slow night never
overlaps the next one or the drill.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kbinfra.errors import SpecError

ScheduleKind = Literal["systemd", "cron"]
LOCK_FILE = ".backup.lock"
_TIME = re.compile(r"^(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)$")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Job:
    name: str  # backup or drill
    command: str  # the exact shell command line


@dataclass(frozen=True)
class ScheduleFile:
    path: Path
    text: str


def parse_time_of_day(text: str) -> tuple[int, int]:
    match = _TIME.match(text)
    if match is None:
        raise SpecError(f"{text!r} is not a time of day", fix="write HH:MM, e.g. 03:30")
    return int(match["h"]), int(match["m"])


def parse_day(text: str) -> str:
    day = text[:1].upper() + text[1:3].lower()
    if day not in _DAYS or len(text) != 3:
        raise SpecError(f"{text!r} is not a day of the week", fix=f"use one of {', '.join(_DAYS)}")
    return day


def jobs(kbinfra: Sequence[str], stack_dir: Path, *, offsite: bool) -> list[Job]:
    """The nightly backup (which sends offsite when configured) and the weekly drill
    (``--offsite``: restic check and the drill on a fetched copy)."""
    folder = shlex.quote(str(stack_dir))
    program = " ".join(shlex.quote(part) for part in kbinfra)
    lock = shlex.quote(str(stack_dir / LOCK_FILE))
    verify = "backup verify --offsite" if offsite else "backup verify latest"
    return [
        Job("backup", f"cd {folder} && flock {lock} {program} backup --dir {folder}"),
        Job("drill", f"cd {folder} && flock {lock} {program} {verify} --dir {folder}"),
    ]


def unit_name(stack: str, job: str) -> str:
    return f"kbinfra-{stack}-{job}"


def systemd_files(
    stack: str, job_list: Sequence[Job], into: Path, at: tuple[int, int], drill_day: str
) -> list[ScheduleFile]:
    hour, minute = at
    calendars = {
        "backup": f"*-*-* {hour:02d}:{minute:02d}:00",
        "drill": f"{drill_day} *-*-* {(hour + 2) % 24:02d}:{minute:02d}:00",
    }
    files = []
    for job in job_list:
        name = unit_name(stack, job.name)
        service = (
            "[Unit]\n"
            f"Description=kbinfra {job.name} of stack {stack}\n"
            "After=docker.service network-online.target\n"
            "Wants=network-online.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            f"ExecStart=/bin/sh -c {shlex.quote(job.command).replace('%', '%%')}\n"
        )
        timer = (
            "[Unit]\n"
            f"Description=kbinfra {job.name} of stack {stack}, on schedule\n\n"
            "[Timer]\n"
            f"OnCalendar={calendars[job.name]}\n"
            "Persistent=true\n"
            "RandomizedDelaySec=300\n\n"
            "[Install]\n"
            "WantedBy=timers.target\n"
        )
        files.append(ScheduleFile(into / f"{name}.service", service))
        files.append(ScheduleFile(into / f"{name}.timer", timer))
    return files


def cron_file(
    stack: str,
    job_list: Sequence[Job],
    into: Path,
    at: tuple[int, int],
    drill_day: str,
    *,
    user: str,
) -> ScheduleFile:
    hour, minute = at
    day = _DAYS.index(drill_day) + 1 if drill_day != "Sun" else 0
    when = {"backup": f"{minute} {hour} * * *", "drill": f"{minute} {(hour + 2) % 24} * * {day}"}
    lines = [
        f"# kbinfra backups of stack {stack}: written by `kbinfra backup schedule`,",
        "# removed by `kbinfra backup schedule --remove`. A failure is logged with logger.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    for job in job_list:
        if "%" in job.command:
            raise SpecError(
                "cron reads % in a command as a line break", fix="use a folder without %"
            )
        failed = shlex.quote(f"kbinfra {job.name} of {stack} FAILED")
        lines.append(f"{when[job.name]} {user} {job.command} || logger -t kbinfra {failed}")
    return ScheduleFile(into / unit_name(stack, "backups"), "\n".join(lines) + "\n")
