"""Backup signatures: an HMAC over the manifest, current and verify-only previous keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from kbinfra.backup.run import apply_retention
from kbinfra.backup.signing import (
    UnauthenticatedBackupError,
    backup_keys,
    check_signature,
    signature_line,
)
from kbinfra.scaffold import init_stack
from kbinfra.secrets import Redactor, load_secrets
from tests.unit.commands.test_backup import KEY, write_backup

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


def test_retention_counts_and_deletes_only_backups_the_stack_signed(make_stack: Any) -> None:
    stack = make_stack("minimum", {"backup": {"keep_last": 1, "keep_days": None}})
    root = stack.dir / "backups"
    files = {"redis/dump.rdb": b"REDIS0011"}
    made = {
        "kb-old": (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), KEY),
        "kb-new": (dt.datetime(2026, 2, 1, tzinfo=dt.UTC), KEY),
        "kb-forged": (dt.datetime(2025, 1, 1, tzinfo=dt.UTC), "another-key"),
        "kb-unsigned": (dt.datetime(2025, 1, 2, tzinfo=dt.UTC), None),
        "kb-fresh": (dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "generated-just-now"),
    }
    for name, (when, key) in made.items():
        write_backup(root / name, files, when=when, key=key)
    plan = apply_retention(stack, root, dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    assert plan.keep == ("kb-new",) and plan.delete == ("kb-old",)
    assert {"kb-forged", "kb-unsigned", "kb-fresh"} <= set(plan.ignored)
    plan = apply_retention(
        stack, root, dt.datetime(2026, 6, 1, tzinfo=dt.UTC), "generated-just-now"
    )
    assert plan.keep == ("kb-fresh",) and plan.delete == ("kb-new",)
    assert sorted(p.name for p in root.iterdir()) == ["kb-forged", "kb-fresh", "kb-unsigned"]
