"""Backup signatures: an HMAC over the manifest, current and verify-only previous keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbinfra.backup.signing import (
    UnauthenticatedBackupError,
    backup_keys,
    check_signature,
    signature_line,
)
from kbinfra.scaffold import init_stack
from kbinfra.secrets import Redactor, load_secrets

DATA = b'{"format": 1}\n'


def check(signature: str | None, secrets: dict[str, str], allow: bool = False) -> bool:
    return check_signature(DATA, signature, backup_keys(secrets), allow_unsigned=allow, where="b")


def test_a_signature_verifies_with_its_key_only() -> None:
    line = signature_line(DATA, "key-one")
    assert line.startswith("hmac-sha256 ") and line.endswith("  manifest.json\n")
    assert check(line, {"backup_hmac_key": "key-one"}) is True
    with pytest.raises(UnauthenticatedBackupError, match="matches no backup key"):
        check(line, {"backup_hmac_key": "key-two"})
    with pytest.raises(UnauthenticatedBackupError, match="matches no backup key"):
        check_signature(
            DATA + b" ", line, backup_keys({"backup_hmac_key": "key-one"}),
            allow_unsigned=True, where="b",
        )  # fmt: skip


def test_previous_keys_verify_but_never_sign() -> None:
    secrets = {"backup_hmac_key": "new-key", "backup_hmac_keys_previous": "old-1 old-2"}
    assert backup_keys(secrets).current == "new-key"
    assert check(signature_line(DATA, "old-2"), secrets) is True


def test_unsigned_is_refused_unless_allowed_and_a_garbled_signature_always() -> None:
    with pytest.raises(UnauthenticatedBackupError, match="--allow-unsigned"):
        check(None, {"backup_hmac_key": "k"})
    assert check(None, {"backup_hmac_key": "k"}, allow=True) is False
    with pytest.raises(UnauthenticatedBackupError, match="not an hmac-sha256 signature"):
        check("sha1 abc", {"backup_hmac_key": "k"}, allow=True)


def test_previous_keys_are_redacted_one_by_one() -> None:
    redact = Redactor({"backup_hmac_keys_previous": "old-key-1 old-key-2"})
    assert redact("signed with old-key-2") == "signed with ***"


def test_init_generates_the_backup_key(tmp_path: Path) -> None:
    init_stack(
        tmp_path, profile="minimum", target="local", domain="kb.example.com",
        images_file=None, force=False,
    )  # fmt: skip
    key = load_secrets(tmp_path, ["backup_hmac_key"])["backup_hmac_key"]
    assert len(key) >= 40
