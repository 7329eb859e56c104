"""Who holds a stack's lock, and whether that process still runs: one host and a Swarm.

A lock is an object the engine creates atomically by name (a container on one host, a
Swarm config on a Swarm: a second create of the same name is refused), labelled with its
holder: host, pid, the time it was taken and the process's start time (which tells a pid
the kernel reused from the holder). A lock whose holder process on this host is gone is
stale and may be broken; one held from another host is never broken without
``--force-unlock``.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from kbinfra.errors import KbinfraError

LABEL_LOCK = "kbinfra.lock"


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    since: str
    process_start: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}"


def process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a reused pid from the holder)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def holder_alive(holder: LockHolder) -> bool | None:
    """Whether the lock holder still runs; None when it ran on another host."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not holder.process_start or process_start(holder.pid) == holder.process_start


def holder_labels(stack: str) -> dict[str, str]:
    """The labels that name this process as the holder of ``stack``'s lock."""
    pid = os.getpid()
    return {
        LABEL_LOCK: stack,
        f"{LABEL_LOCK}.host": socket.gethostname(),
        f"{LABEL_LOCK}.pid": str(pid),
        f"{LABEL_LOCK}.since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        f"{LABEL_LOCK}.process-start": process_start(pid),
    }


def holder_from_labels(labels: Mapping[str, str] | None) -> LockHolder:
    """The holder a lock's labels name ("?" for what a foreign object leaves out)."""
    labels = labels or {}
    pid = str(labels.get(f"{LABEL_LOCK}.pid", "0") or "0")
    return LockHolder(
        host=labels.get(f"{LABEL_LOCK}.host", "?"),
        pid=int(pid) if pid.isdigit() else 0,
        since=labels.get(f"{LABEL_LOCK}.since", "?"),
        process_start=labels.get(f"{LABEL_LOCK}.process-start", ""),
    )


def may_break(holder: LockHolder, *, force: bool) -> str | None:
    """Why the lock of ``holder`` may be broken now (forced, or its process is gone on this
    host), or None: it is held."""
    if force:
        return "forced"
    if holder_alive(holder) is False:
        return "its holder is gone"
    return None


def locked_error(stack: str, holder: LockHolder, where: str) -> KbinfraError:
    return KbinfraError(
        f"stack {stack} is locked by {holder.describe()}",
        where=where,
        fix="wait for that apply to finish; if it died, re-run with --force-unlock",
    )
