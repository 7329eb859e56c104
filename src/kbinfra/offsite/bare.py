"""The disaster drill: a stack folder rebuilt from nothing but the offsite copy.

The new folder holds only the user's safe copy: ``secrets.yaml`` (with the repository's
``offsite_<name>_password``) and the TLS key (or nothing, and a new self-signed certificate
is made). The backup is fetched and verified (manifest, every sha256) before anything is
written into the folder; then its own ``stack/kbinfra.yaml``, resolved profile and
certificate become the folder's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kbinfra.backup.run import load_backup, verify_backup
from kbinfra.backup.signing import backup_keys
from kbinfra.backup.stackfiles import stack_file_path
from kbinfra.errors import SpecError
from kbinfra.offsite.repository import SshSettings
from kbinfra.offsite.restic import OffsiteError, Restic, WrongPasswordError
from kbinfra.offsite.run import fetch_snapshot, pick_snapshot
from kbinfra.private_file import write_private_file
from kbinfra.progress import Progress
from kbinfra.secrets import load_secrets
from kbinfra.spec.profile import builtin_profile_names
from kbinfra.spec.stack import OffsiteRepository
from kbinfra.stack_folder import STACK_FILE

RESTORED_PROFILE = "profile.yaml"
_PASSWORD = re.compile(r"^offsite_(?P<name>[a-z][a-z0-9_]*)_password$")
_PROFILE_LINE = re.compile(r"^profile:.*$", re.MULTILINE)


@dataclass
class RebuiltFolder:
    backup: Path
    repository: str
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def password_candidates(secrets: dict[str, str]) -> list[str]:
    """The repository names whose password the safe copy holds, in file order."""
    return [m["name"] for m in map(_PASSWORD.match, secrets) if m is not None]


def open_repository(repository: str, secrets: dict[str, str], ssh: SshSettings) -> Restic:
    """The first ``offsite_*_password`` of the safe copy that opens ``repository``."""
    names = password_candidates(secrets)
    if not names:
        raise SpecError(
            "the secrets file holds no offsite_<name>_password",
            fix="put the safe copy of the stack's secrets.yaml into the new folder",
        )
    for name in names:
        restic = Restic(OffsiteRepository(name=name, repository=repository), secrets, ssh)
        try:
            restic.snapshots()
        except WrongPasswordError:
            continue
        return restic
    raise OffsiteError(
        f"none of {', '.join(f'offsite_{n}_password' for n in names)} opens this repository",
        where=repository,
        fix="use the secrets.yaml of the stack that wrote it",
    )


def stack_file_for_new_folder(text: str, profile: str) -> str:
    """The backup's kbinfra.yaml, with a custom profile pointed at the restored copy."""
    if profile in builtin_profile_names():
        return text
    return _PROFILE_LINE.sub(f"profile: {RESTORED_PROFILE}", text, count=1)


def rebuild_stack_folder(
    new_dir: Path,
    repository: str,
    ref: str,
    *,
    ssh: SshSettings,
    scratch: Path,
    progress: Progress,
    allow_unsigned: bool = False,
) -> RebuiltFolder:
    """Fetch ``ref`` from ``repository`` into ``scratch``, verify it (its signature with the
    keys of the safe copy of ``secrets.yaml``), write the stack files."""
    secrets = load_secrets(new_dir, required=())
    restic = open_repository(repository, secrets, ssh)
    snapshots = restic.snapshots()
    stacks = sorted({s.stack for s in snapshots if s.stack})
    if ref == "latest" and len(stacks) > 1:
        raise SpecError(
            f"the repository holds backups of several stacks ({', '.join(stacks)})",
            fix="name the backup: offsite:BACKUP_NAME (see `restic snapshots`)",
        )
    snapshot = pick_snapshot(snapshots, ref, restic.where)
    backup = fetch_snapshot(restic, snapshot, scratch, progress)
    manifest, _ = load_backup(backup, backup_keys(secrets), allow_unsigned=allow_unsigned)
    verify_backup(backup, manifest, progress)
    rebuilt = RebuiltFolder(backup, restic.repository.name)

    stack_text = stack_file_path(backup, STACK_FILE).read_text(encoding="utf-8")
    spec = yaml.safe_load(stack_text) or {}
    tls = spec.get("tls") or {}
    cert_rel = str(tls.get("certificate") or "tls/cert.pem")
    key_rel = str(tls.get("key") or "tls/key.pem")
    for relative in (cert_rel, key_rel):
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise SpecError(
                f"the backup's kbinfra.yaml puts TLS files outside the stack folder: {relative}",
                where=str(new_dir / STACK_FILE),
                fix="restore by hand: copy the files and edit tls: in kbinfra.yaml",
            )
    (new_dir / STACK_FILE).write_text(
        stack_file_for_new_folder(stack_text, manifest.profile), encoding="utf-8"
    )
    rebuilt.written.append(STACK_FILE)
    if manifest.profile not in builtin_profile_names():
        profile = stack_file_path(backup, "profile.yaml").read_bytes()
        (new_dir / RESTORED_PROFILE).write_bytes(profile)
        rebuilt.written.append(RESTORED_PROFILE)
    cert, key = new_dir / cert_rel, new_dir / key_rel
    if key.is_file():
        if not cert.is_file():
            cert.parent.mkdir(parents=True, exist_ok=True)
            cert.write_bytes(stack_file_path(backup, "tls/cert.pem").read_bytes())
            rebuilt.written.append(cert_rel)
    else:
        from kbinfra.scaffold import self_signed_certificate  # noqa: PLC0415

        cert_pem, key_pem = self_signed_certificate(str(spec.get("domain") or "kb.example.com"))
        cert.parent.mkdir(parents=True, exist_ok=True)
        cert.write_text(cert_pem, encoding="utf-8")
        write_private_file(key, key_pem)
        rebuilt.written += [cert_rel, key_rel]
        rebuilt.notes.append(
            f"no TLS key in {new_dir}: made a new self-signed certificate; install the real "
            f"one as {cert_rel} and {key_rel} and run `kbinfra apply`"
        )
    return rebuilt
