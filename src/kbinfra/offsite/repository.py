"""What kbinfra tells restic for one repository: its kind, environment, options, tags. Pure.

Passwords and S3 keys travel in restic's environment (``RESTIC_PASSWORD``,
``AWS_ACCESS_KEY_ID`` …), never on a command line. An SFTP repository is reached with the
system ``ssh`` that restic runs (``-o sftp.command``), pinned to kbinfra's known_hosts file
with ``StrictHostKeyChecking=yes``: an unknown host key is refused, never added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kbinfra.errors import SpecError
from kbinfra.spec.stack import OffsiteRepository

RepositoryKind = Literal["local", "sftp", "rest", "s3"]
TAG = "kbinfra"
STACK_TAG = "stack="
BACKUP_TAG = "backup="
BYTES_TAG = "bytes="
#: Variables of the user's environment that would point restic elsewhere than kbinfra says.
_FOREIGN_ENV = re.compile(r"^(RESTIC_|AWS_)")
_SFTP_SHORT = re.compile(r"^sftp:(?:(?P<user>[^@/:]+)@)?(?P<host>[^:/]+):(?P<path>.*)$")
_SFTP_URL = re.compile(
    r"^sftp://(?:(?P<user>[^@/:]+)@)?(?P<host>[^:/]+)(?::(?P<port>\d+))?/(?P<path>.*)$"
)


@dataclass(frozen=True)
class SftpAddress:
    user: str | None
    host: str
    port: int
    path: str

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class SshSettings:
    """kbinfra's SSH rules, as the ``--known-hosts`` and ``--identity`` options resolve them."""

    known_hosts: Path
    identity: Path | None = None


def repository_kind(repository: str) -> RepositoryKind:
    for kind in ("sftp", "rest", "s3"):
        if repository.startswith(f"{kind}:"):
            return kind
    return "local"


def sftp_address(repository: str) -> SftpAddress:
    """``sftp:user@host:/path`` or ``sftp://user@host:port//path``."""
    match = _SFTP_URL.match(repository) or _SFTP_SHORT.match(repository)
    if match is None or not match["path"]:
        raise SpecError(
            f"{repository!r} is not an SFTP repository",
            fix="write sftp:user@host:/path or sftp://user@host:port//path",
        )
    port = match.groupdict().get("port")
    return SftpAddress(match["user"], match["host"], int(port or 22), match["path"])


def sftp_command(address: SftpAddress, ssh: SshSettings) -> str:
    """The ssh command restic runs for an SFTP repository: strict host keys, no prompts."""
    parts = [
        "ssh",
        "-p",
        str(address.port),
        "-o",
        f"UserKnownHostsFile={ssh.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "BatchMode=yes",
    ]
    if ssh.identity is not None:
        parts += ["-i", str(ssh.identity), "-o", "IdentitiesOnly=yes"]
    for part in parts:
        if any(c.isspace() or c in "\"'\\" for c in part):
            raise SpecError(
                f"{part!r} cannot be passed to restic's sftp.command (spaces or quotes)",
                fix="move the known_hosts file or key to a path without spaces",
            )
    login = f"{address.user}@{address.host}" if address.user else address.host
    return " ".join([*parts, login, "-s", "sftp"])


def s3_secret_names(repository: OffsiteRepository) -> tuple[str, str]:
    """The secrets.yaml entries the user fills in for an S3 repository (never generated)."""
    prefix = f"offsite_{repository.name}_s3"
    return f"{prefix}_access_key_id", f"{prefix}_secret_access_key"


def restic_environment(
    repository: OffsiteRepository,
    secrets: Mapping[str, str],
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment restic runs with: ``base`` without RESTIC_*/AWS_*, plus this repo's."""
    password = secrets.get(repository.password_secret)
    if not password:
        raise SpecError(
            f"secrets file lacks {repository.password_secret}",
            fix="run `kbinfra init` to generate it (keep a copy: without it the repository "
            "cannot be read)",
        )
    env = {k: v for k, v in base.items() if not _FOREIGN_ENV.match(k)}
    env["RESTIC_REPOSITORY"] = repository.repository
    env["RESTIC_PASSWORD"] = password
    if repository_kind(repository.repository) == "s3":
        key_id, key = s3_secret_names(repository)
        missing = [name for name in (key_id, key) if not secrets.get(name)]
        if missing:
            raise SpecError(
                f"secrets file lacks {', '.join(missing)} for S3 repository {repository.name}",
                fix="add the bucket's access key id and secret key to secrets.yaml",
            )
        env["AWS_ACCESS_KEY_ID"] = secrets[key_id]
        env["AWS_SECRET_ACCESS_KEY"] = secrets[key]
    return env


def restic_options(repository: OffsiteRepository, ssh: SshSettings) -> list[str]:
    """Options every restic call on this repository gets."""
    options = ["--no-cache"]
    if repository_kind(repository.repository) == "sftp":
        command = sftp_command(sftp_address(repository.repository), ssh)
        options += ["-o", f"sftp.command={command}"]
    return options


def backup_tags(stack: str, backup: str, size: int) -> list[str]:
    return [TAG, f"{STACK_TAG}{stack}", f"{BACKUP_TAG}{backup}", f"{BYTES_TAG}{size}"]


def tag_value(tags: Sequence[str], prefix: str) -> str | None:
    for tag in tags:
        if tag.startswith(prefix):
            return tag.removeprefix(prefix)
    return None


def retention_options(repository: OffsiteRepository) -> list[str]:
    """``restic forget`` policy. Snapshots are grouped by nothing (each backup has its own
    path, so the default grouping by path would keep every one); ``--keep-last`` ≥ 1 means
    the newest is never removed."""
    options = ["--group-by", "", "--keep-last", str(repository.keep_last)]
    for name, value in (
        ("daily", repository.keep_daily),
        ("weekly", repository.keep_weekly),
        ("monthly", repository.keep_monthly),
    ):
        if value:
            options += [f"--keep-{name}", str(value)]
    return options
