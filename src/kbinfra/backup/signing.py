"""Authenticated backups: an HMAC-SHA256 over ``manifest.json``, keyed by a stack secret.

The manifest lists every artifact's sha256, so one MAC over its bytes authenticates the whole
backup: whoever can write the backup folder but not ``secrets.yaml`` cannot forge one that
verifies. The key is ``backup_hmac_key`` (generated, kept in the 0600 secrets file and in the
user's own safe copy of it). Keys used before a key change stay verify-only in
``backup_hmac_keys_previous`` (separated by spaces), so no older backup is stranded.

A backup without ``manifest.hmac`` (made before kbinfra signed backups) is refused unless the
user passes ``--allow-unsigned``; a signature that matches no key is refused always.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from kbinfra.backup.manifest import MANIFEST_FILE
from kbinfra.backup.manifest import MANIFEST_SIGNATURE_FILE as SIGNATURE_FILE
from kbinfra.errors import KbinfraError
from kbinfra.secrets import BACKUP_KEY_SECRET as KEY_SECRET
from kbinfra.secrets import PREVIOUS_BACKUP_KEYS_SECRET as PREVIOUS_KEYS_SECRET

_ALGORITHM = "hmac-sha256"


@dataclass(frozen=True)
class BackupKeys:
    """The key that signs new backups and every key a backup may be verified with."""

    current: str | None
    previous: tuple[str, ...] = ()

    @property
    def verifying(self) -> tuple[str, ...]:
        return ((self.current,) if self.current else ()) + self.previous


class UnauthenticatedBackupError(KbinfraError):
    """A backup whose manifest is not signed by a key of this stack: nothing of it is used."""


def backup_keys(secrets: Mapping[str, str]) -> BackupKeys:
    return BackupKeys(
        secrets.get(KEY_SECRET) or None, tuple(secrets.get(PREVIOUS_KEYS_SECRET, "").split())
    )


def _mac(data: bytes, key: str) -> str:
    return hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest()


def signature_line(data: bytes, key: str) -> str:
    """``hmac-sha256 <hex>  manifest.json``: what ``manifest.hmac`` holds."""
    return f"{_ALGORITHM} {_mac(data, key)}  {MANIFEST_FILE}\n"


def check_signature(
    data: bytes, signature: str | None, keys: BackupKeys, *, allow_unsigned: bool, where: str
) -> bool:
    """Whether ``data`` (the manifest's bytes) is signed by one of ``keys``.

    True when it is; False for an unsigned backup the caller accepted with
    ``allow_unsigned``; :class:`UnauthenticatedBackupError` for anything else.
    """
    if signature is None:
        if allow_unsigned:
            return False
        raise UnauthenticatedBackupError(
            f"the backup is not signed (no {SIGNATURE_FILE}), so anyone who can write the "
            "backup folder could have made it; nothing was changed",
            where=where,
            fix="if it was made before kbinfra signed backups and you trust it, pass "
            "--allow-unsigned",
        )
    fields = signature.split()
    if len(fields) < 2 or fields[0] != _ALGORITHM:
        raise UnauthenticatedBackupError(
            f"{SIGNATURE_FILE} is not an {_ALGORITHM} signature; nothing was changed",
            where=where,
            fix="use another backup",
        )
    if not keys.verifying:
        raise UnauthenticatedBackupError(
            f"secrets.yaml holds no {KEY_SECRET} to verify the backup's signature with; "
            "nothing was changed",
            where=where,
            fix="restore secrets.yaml from your safe copy of the stack's secrets",
        )
    if not any(hmac.compare_digest(_mac(data, key), fields[1]) for key in keys.verifying):
        raise UnauthenticatedBackupError(
            f"{SIGNATURE_FILE} matches no backup key of this stack: the backup was altered or "
            "signed with another key; nothing was changed",
            where=where,
            fix=f"if the backup is yours, add the key it was made with to {PREVIOUS_KEYS_SECRET} "
            "in secrets.yaml; otherwise use another backup",
        )
    return True
