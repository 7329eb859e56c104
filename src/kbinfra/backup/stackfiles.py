"""The stack itself in a backup: ``kbinfra.yaml``, the profile and the rendered configs.

Secrets (``secrets.yaml``, the TLS key, rendered files that hold a secret, role password
hashes) are included only with ``--include-secrets``: a backup often travels. When they
are, the files are 0600 (as every file of a backup is) and a ``CONTAINS-SECRETS.txt`` at
the top of the backup says so.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kbinfra.backup.handler import BackupOutput, artifact_of
from kbinfra.backup.manifest import SECRETS_MARKER, Artifact
from kbinfra.plan import is_secret_file
from kbinfra.secrets import SECRETS_FILE
from kbinfra.spec.profile import load_profile
from kbinfra.stack import Stack
from kbinfra.stack_folder import STACK_FILE

SERVICE = "stack"
MARKER_TEXT = (
    "This backup CONTAINS SECRETS: stack/secrets.yaml (every password and api key of the\n"
    "stack), the TLS private key, rendered files that hold secrets, and PostgreSQL role\n"
    "password hashes. Store and move it like the secrets themselves.\n"
)


def _write(out: BackupOutput, path: str, data: bytes, *, secret: bool = False) -> Artifact:
    with out.file(path, quiet=True) as handle:
        handle.write(data)
    return artifact_of(handle, path, SERVICE, "secrets" if secret else "stack_file", secret=secret)


def backup_stack_files(stack: Stack, out: BackupOutput) -> tuple[list[Artifact], list[str]]:
    """Write the stack's files under ``stack/``; notes say what was left out and why."""
    artifacts = [_write(out, f"stack/{STACK_FILE}", (stack.dir / STACK_FILE).read_bytes())]
    profile = load_profile(stack.spec.profile, relative_to=stack.dir).profile
    resolved = yaml.safe_dump(profile.model_dump(by_alias=True, mode="json"), sort_keys=True)
    artifacts.append(_write(out, "stack/profile.yaml", resolved.encode()))
    skipped = 0
    for file in stack.rendered:
        secret = is_secret_file(file)
        if secret and not out.include_secrets:
            skipped += 1
            continue
        artifacts.append(
            _write(out, f"stack/rendered/{file.path}", file.text.encode(), secret=secret)
        )
    cert = stack.dir / stack.spec.tls.certificate
    artifacts.append(_write(out, "stack/tls/cert.pem", cert.read_bytes()))
    notes: list[str] = []
    if out.include_secrets:
        artifacts.append(_write(out, "stack/tls/key.pem", stack.tls_key.encode(), secret=True))
        artifacts.append(
            _write(
                out, f"stack/{SECRETS_FILE}", (stack.dir / SECRETS_FILE).read_bytes(), secret=True
            )
        )
        artifacts.append(_write(out, SECRETS_MARKER, MARKER_TEXT.encode()))
    else:
        notes.append(
            f"secrets left out ({SECRETS_FILE}, the TLS key, {skipped} rendered secret "
            "file(s), role passwords): add --include-secrets to keep them in the backup"
        )
    return artifacts, notes


def stack_file_path(backup_dir: Path, name: str) -> Path:
    return backup_dir / "stack" / name
