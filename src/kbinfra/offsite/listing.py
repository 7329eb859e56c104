"""``kbinfra backup list``: local and offsite backups side by side. Pure: it arranges what
the backup root and each repository's snapshot list hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbinfra.offsite.records import LOCAL
from kbinfra.ui import format_bytes

if TYPE_CHECKING:
    from kbinfra.backup.retention import Found
    from kbinfra.offsite.run import RepositoryListing


@dataclass
class ListedBackup:
    name: str
    created_at: dt.datetime | None
    size: int | None
    local: str  # complete, partial, unreadable or absent
    #: repository name → snapshot short id
    offsite: dict[str, str] = field(default_factory=dict)
    #: where (local or a repository) → when a drill of this backup last passed
    verified: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "bytes": self.size,
            "local": self.local,
            "offsite": self.offsite,
            "verified": self.verified,
        }


@dataclass
class BackupListing:
    backups: list[ListedBackup]
    repositories: list[str]
    errors: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "backups": [b.as_json() for b in self.backups],
            "repositories": self.repositories,
            "errors": self.errors,
        }

    def rows(self) -> list[tuple[str, ...]]:
        rows = []
        for backup in self.backups:
            local = backup.local
            if LOCAL in backup.verified:
                local += f", drill ok {backup.verified[LOCAL][:10]}"
            cells = [
                backup.name,
                backup.created_at.isoformat() if backup.created_at else "?",
                format_bytes(backup.size) if backup.size is not None else "?",
                local,
            ]
            for repository in self.repositories:
                snapshot = backup.offsite.get(repository)
                cell = snapshot or "-"
                if snapshot and repository in backup.verified:
                    cell += f", drill ok {backup.verified[repository][:10]}"
                cells.append(cell)
            rows.append(tuple(cells))
        return rows


def backup_listing(
    stack: str,
    local: Sequence[Found],
    local_sizes: Mapping[str, int],
    remote: Sequence[RepositoryListing],
    verified: Mapping[str, Mapping[str, str]],
) -> BackupListing:
    """One row per backup of ``stack``, here or in any repository, newest first."""
    rows: dict[str, ListedBackup] = {}
    for found in local:
        if found.partial:
            rows[found.name] = ListedBackup(found.name, None, None, "partial (unfinished)")
        elif found.stack == stack and found.created_at is not None:
            size = local_sizes.get(found.name)
            rows[found.name] = ListedBackup(found.name, found.created_at, size, "complete")
    for listed in remote:
        for snapshot in listed.snapshots:
            name = snapshot.backup
            if not name:
                continue
            row = rows.setdefault(name, ListedBackup(name, snapshot.time, snapshot.size, "-"))
            row.offsite[listed.repository] = snapshot.short_id
    for row in rows.values():
        for where, names in verified.items():
            if row.name in names and ((where == LOCAL and row.local == "complete")
                                      or where in row.offsite):  # fmt: skip
                row.verified[where] = names[row.name]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    ordered = sorted(rows.values(), key=lambda r: (r.created_at or epoch, r.name), reverse=True)
    return BackupListing(
        ordered,
        [listed.repository for listed in remote],
        {listed.repository: listed.error for listed in remote if listed.error},
    )
