"""Small records kbinfra keeps next to the backups: which backups passed a drill, and the
digest of what the user's safe copy must hold (to say when it changed).

Both files are in the backup root, 0600, and hold no secret: backup names, dates and a
sha256 of 256-bit random values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbinfra.private_file import write_private_file
from kbinfra.secrets import SECRETS_FILE

VERIFIED_FILE = ".kbinfra-verified.json"
SAFE_COPY_FILE = ".kbinfra-safe-copy.json"
LOCAL = "local"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    write_private_file(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def verified_backups(root: Path) -> dict[str, dict[str, str]]:
    """``{where: {backup name: when its drill passed}}``; where is ``local`` or a repository."""
    data = _read(root / VERIFIED_FILE)
    return {
        str(where): {str(k): str(v) for k, v in names.items()}
        for where, names in data.items()
        if isinstance(names, dict)
    }


def record_verified(root: Path, where: str, backup: str, when: dt.datetime) -> None:
    data = verified_backups(root)
    data.setdefault(where, {})[backup] = when.isoformat()
    _write(root / VERIFIED_FILE, data)


@dataclass(frozen=True)
class SafeCopyStatus:
    """What the copy kept off this host must hold, and whether it changed."""

    files: tuple[str, ...]
    secrets: tuple[str, ...]
    changed: bool
    since: str

    def describe(self) -> str:
        held = ", ".join(self.files)
        names = f" (with {', '.join(self.secrets)})" if self.secrets else ""
        if self.changed:
            return (
                f"safe copy: {held}{names} new or CHANGED since the last backup: copy them "
                "off this host again; without them the offsite backups cannot be read"
            )
        return f"safe copy: {held}{names}, unchanged since {self.since}"

    def as_json(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "secrets": list(self.secrets),
            "changed": self.changed,
            "since": self.since,
        }


def safe_copy_status(
    stack_dir: Path, key_file: str, password_secrets: list[str], root: Path, now: dt.datetime
) -> SafeCopyStatus:
    """Compare the safe copy's files with the digest recorded at the last backup, and
    record the current one."""
    digest = hashlib.sha256()
    for name in (SECRETS_FILE, key_file):
        path = stack_dir / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    current = digest.hexdigest()
    recorded = _read(root / SAFE_COPY_FILE)
    changed = recorded.get("sha256") != current
    since = now.isoformat() if changed else str(recorded.get("since", now.isoformat()))
    if changed:
        _write(root / SAFE_COPY_FILE, {"sha256": current, "since": since})
    return SafeCopyStatus((SECRETS_FILE, key_file), tuple(sorted(password_secrets)), changed, since)
