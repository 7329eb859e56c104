"""The stack's secrets: generated once, kept in one 0600 file, redacted everywhere else."""

from __future__ import annotations

import os
import re
import secrets as random_source
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kbinfra.errors import SpecError
from kbinfra.spec.yamlfile import YamlSyntaxError, dump_yaml, read_yaml

SECRETS_FILE = "secrets.yaml"
REDACTED = "***"
#: The key that signs the stack's backups (:mod:`kbinfra.backup.signing`), and the keys
#: that signed older ones (verify-only, separated by spaces).
BACKUP_KEY_SECRET = "backup_hmac_key"
PREVIOUS_BACKUP_KEYS_SECRET = "backup_hmac_keys_previous"
#: Secrets of the stack itself rather than of a service: `kbinfra init` generates them.
STACK_SECRETS = (BACKUP_KEY_SECRET,)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: Every secret value this process has read or generated: the top-level error printing
#: redacts them all, also from errors raised before a command set its console's redactor.
_known_values: set[str] = set()


def known_secrets_redactor() -> Redactor:
    """A redactor for every secret value loaded or generated so far in this process."""
    return Redactor({str(index): value for index, value in enumerate(_known_values)})


def remember_secret_values(values: Iterable[str]) -> None:
    """Redact ``values`` from every error this process prints (a rotation's new values)."""
    _known_values.update(values)


def generate_secret() -> str:
    """A 43-character URL-safe token (256 bits): safe in URLs, env vars and config files."""
    return random_source.token_urlsafe(32)


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def refuse_readable_by_others(path: Path, what: str, then: str = "") -> None:
    """A file holding secret values that others may read is refused: say how to fix it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SpecError(
            f"{what} is readable by others (mode {mode:o})",
            where=str(path),
            fix=f"run `chmod 600 {path}`{then}",
        )


def secrets_path(stack_dir: Path) -> Path:
    return stack_dir / SECRETS_FILE


def load_secrets(stack_dir: Path, required: Iterable[str]) -> dict[str, str]:
    """Read the secrets file, refusing one that others can read or that lacks a secret."""
    path = secrets_path(stack_dir)
    if path.is_file():
        refuse_readable_by_others(path, "secrets file")
    try:
        doc = read_yaml(
            path,
            what="secrets file",
            fix_missing=f"run `kbinfra init --dir {stack_dir}` to generate it",
        )
    except YamlSyntaxError as error:
        # The parser's problem and snippet quote the line, that is a secret value (a value
        # starting with "!" reads as a YAML tag and is echoed back): say only where.
        raise SpecError(
            "secrets file is not valid YAML",
            where=error.where,
            fix="quote each value in single quotes: one that starts with ! & * @ ` | > % "
            "or contains ': ' is YAML syntax",
        ) from None
    values: dict[str, str] = {}
    for name, value in doc.data.items():
        values[str(name)] = _checked_secret(name, value, doc.where((name,)))
    _known_values.update(values.values())
    missing = sorted(set(required) - set(values))
    if missing:
        raise SpecError(
            f"secrets file lacks {', '.join(missing)}",
            where=str(path),
            fix=f"run `kbinfra init --dir {stack_dir}` to add the missing secrets",
        )
    return values


_REGENERATE = "delete the line and run `kbinfra init` to generate it"


def _checked_secret(name: object, value: object, where: str) -> str:
    """The value, if it is one a config file or ``.env`` line can hold; the error never shows it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            f"{name!r} is not a secret name (lowercase letters, digits and _)",
            where=where,
            fix="fix the name, or " + _REGENERATE,
        )
    if not isinstance(value, str) or not value:
        raise SpecError(
            f"secret {name!r} must be a non-empty string",
            where=where,
            fix="quote it, or " + _REGENERATE,
        )
    if not value.isprintable():
        # A newline would add a line to .env; say where, never what.
        raise SpecError(
            f"secret {name!r} holds a control or other non-printable character",
            where=where,
            fix="keep it on one line of printable characters, or " + _REGENERATE,
        )
    return value


def dump_secrets(values: Mapping[str, str]) -> str:
    header = (
        "# kbinfra secrets: keep this file private (mode 0600) and out of version control.\n"
        "# Generated by `kbinfra init`; rotate with care: services read them at start.\n"
    )
    return header + dump_yaml(dict(values))


def ensure_secrets(stack_dir: Path, required: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Keep every existing secret and generate the missing ones. Returns values and new names."""
    path = secrets_path(stack_dir)
    existing: dict[str, str] = {}
    if path.exists():
        existing = load_secrets(stack_dir, required=())
    added = sorted(name for name in set(required) if name not in existing)
    if not added and path.exists():
        return existing, []
    values = {**existing, **{name: generate_secret() for name in added}}
    _known_values.update(values.values())
    write_private_file(path, dump_secrets(values))
    record_secret_dates(stack_dir, added, datetime.now(UTC))
    return values, added


class Redactor:
    """Replaces every secret value in a text with ``***``."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        # Longest first, so a secret that contains another is redacted whole.
        # A value may hold several secrets separated by spaces (earlier backup keys).
        values = {v for v in secrets.values()} | {
            part for v in secrets.values() for part in v.split()
        }
        self._values = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        return text


# --------------------------------------------------------------------------- ages
#: When each secret was generated (UTC, ISO 8601), next to ``secrets.yaml``: no value, only
#: dates, so ``kbinfra secrets list`` and ``check`` can say how old each secret is.
SECRET_DATES_FILE = "secrets.dates.yaml"


def secret_dates_path(stack_dir: Path) -> Path:
    return stack_dir / SECRET_DATES_FILE


def load_secret_dates(stack_dir: Path) -> dict[str, datetime]:
    """Each recorded secret's generation time; a file someone edited is checked by type."""
    path = secret_dates_path(stack_dir)
    if not path.is_file():
        return {}
    doc = read_yaml(path, what="secret dates file", fix_missing="")
    dates: dict[str, datetime] = {}
    for name, value in doc.data.items():
        where = doc.where((name,))
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SpecError(f"{name!r} is not a secret name", where=where, fix=_FIX_DATES)
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            raise SpecError(
                f"the date of secret {name!r} is not an ISO 8601 time", where=where, fix=_FIX_DATES
            ) from None
        if when.tzinfo is None:
            raise SpecError(
                f"the date of secret {name!r} has no time zone", where=where, fix=_FIX_DATES
            )
        dates[name] = when.astimezone(UTC)
    return dates


_FIX_DATES = f"write it as `name: 2026-01-31T12:00:00+00:00`, or delete {SECRET_DATES_FILE}"


def record_secret_dates(stack_dir: Path, names: Iterable[str], when: datetime) -> None:
    """Record ``names`` as generated at ``when`` (other names keep their dates)."""
    names = sorted(set(names))
    if not names:
        return
    dates = load_secret_dates(stack_dir)
    dates.update({name: when for name in names})
    header = "# When kbinfra generated each secret (no values here): kbinfra secrets list.\n"
    text = dump_yaml({name: dates[name].isoformat(timespec="seconds") for name in sorted(dates)})
    write_private_file(secret_dates_path(stack_dir), header + text)


@dataclass(frozen=True)
class SecretAge:
    """How old a secret is: ``since`` exact when recorded, else at least since ``since``
    (the secrets file's last change: it was generated then or before)."""

    since: datetime
    exact: bool

    def days(self, now: datetime) -> float:
        return (now - self.since).total_seconds() / 86400


def secret_ages(stack_dir: Path, names: Iterable[str]) -> dict[str, SecretAge]:
    dates = load_secret_dates(stack_dir)
    path = secrets_path(stack_dir)
    file_date = datetime.fromtimestamp(path.stat().st_mtime, UTC) if path.exists() else None
    ages: dict[str, SecretAge] = {}
    for name in names:
        if name in dates:
            ages[name] = SecretAge(dates[name], exact=True)
        elif file_date is not None:
            ages[name] = SecretAge(file_date, exact=False)
    return ages
