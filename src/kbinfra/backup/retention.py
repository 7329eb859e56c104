"""Which backups to keep: the newest N and/or those younger than D days, by manifest date.

Pure: it decides from what a listing of the backup root found. The guide's
``find -mtime +30 -exec rm -rf`` could delete the newest backup when a clock or an mtime was
off; here the date is the one each manifest recorded, the newest complete backup is never
deleted, and a directory without a readable manifest (a ``.partial`` still being written, or
anything kbinfra did not write) is never touched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Found:
    """One directory in the backup root."""

    name: str
    stack: str | None  # from its manifest; None when it has no readable manifest
    created_at: dt.datetime | None
    partial: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[str, ...]
    delete: tuple[str, ...]
    ignored: tuple[str, ...]  # partial, unreadable or another stack's: never touched

    def as_json(self) -> dict[str, list[str]]:
        return {
            "kept": list(self.keep),
            "deleted": list(self.delete),
            "ignored": list(self.ignored),
        }


def retention_plan(
    found: Iterable[Found],
    *,
    stack: str,
    keep_last: int,
    keep_days: int | None,
    now: dt.datetime,
) -> RetentionPlan:
    """Keep a backup when it is among the ``keep_last`` newest OR younger than ``keep_days``.

    ``keep_last`` is at least 1, so the newest complete backup always stays.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: the newest backup always stays")
    complete: list[Found] = []
    ignored: list[str] = []
    for item in found:
        if item.partial or item.stack != stack or item.created_at is None:
            ignored.append(item.name)
        else:
            complete.append(item)
    complete.sort(key=lambda f: (f.created_at, f.name), reverse=True)
    cutoff = now - dt.timedelta(days=keep_days) if keep_days is not None else None
    keep: list[str] = []
    delete: list[str] = []
    for index, item in enumerate(complete):
        assert item.created_at is not None
        young = cutoff is not None and item.created_at >= cutoff
        if index < keep_last or young:
            keep.append(item.name)
        else:
            delete.append(item.name)
    return RetentionPlan(tuple(keep), tuple(delete), tuple(sorted(ignored)))
