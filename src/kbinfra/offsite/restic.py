"""restic as a subprocess, one repository at a time: the only I/O of ``kbinfra.offsite``.

Every call gets the repository and password by environment and ``--json`` where restic
0.14 has it; a failure becomes one :class:`OffsiteError` naming the repository, with
restic's own last line (an unknown SSH host key also with its fingerprint).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbinfra.errors import KbinfraError
from kbinfra.offsite.repository import (
    BACKUP_TAG,
    BYTES_TAG,
    STACK_TAG,
    TAG,
    SshSettings,
    repository_kind,
    restic_environment,
    restic_options,
    retention_options,
    sftp_address,
    tag_value,
)
from kbinfra.spec.stack import OffsiteRepository

NO_REPOSITORY = "Is there a repository at the following location?"
WRONG_PASSWORD = "wrong password or no key found"
HOST_KEY_FAILED = "Host key verification failed"
HOST_KEY_CHANGED = "REMOTE HOST IDENTIFICATION HAS CHANGED"
SFTP_START_FAILED = "unable to start the sftp session"


class OffsiteError(KbinfraError):
    """A restic call on one repository failed; the repository is named."""


class WrongPasswordError(OffsiteError):
    """The password given does not open the repository."""


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: dt.datetime
    paths: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def stack(self) -> str | None:
        return tag_value(self.tags, STACK_TAG)

    @property
    def backup(self) -> str | None:
        return tag_value(self.tags, BACKUP_TAG)

    @property
    def size(self) -> int | None:
        value = tag_value(self.tags, BYTES_TAG)
        return int(value) if value and value.isdigit() else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.short_id,
            "time": self.time.isoformat(),
            "backup": self.backup,
            "stack": self.stack,
            "bytes": self.size,
        }


@dataclass(frozen=True)
class RepositoryKey:
    id: str
    current: bool


def parse_keys(data: Any) -> list[RepositoryKey]:
    """``restic key list --json``: ``[{"id": ..., "current": bool, ...}]``."""
    return [RepositoryKey(str(item["id"]), bool(item.get("current"))) for item in data or []]


@dataclass(frozen=True)
class UploadSummary:
    snapshot_id: str
    data_added: int
    bytes_processed: int
    seconds: float


def parse_time(text: str) -> dt.datetime:
    """restic's RFC 3339 times carry nanoseconds; Python parses up to microseconds."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.astimezone(dt.UTC)


def parse_snapshots(data: Any) -> list[Snapshot]:
    snapshots = []
    for item in data or []:
        snapshots.append(
            Snapshot(
                id=str(item["id"]),
                short_id=str(item.get("short_id") or item["id"][:8]),
                time=parse_time(str(item["time"])),
                paths=tuple(item.get("paths") or ()),
                tags=tuple(item.get("tags") or ()),
            )
        )
    return sorted(snapshots, key=lambda s: (s.time, s.id))


def parse_backup_output(lines: Sequence[str]) -> UploadSummary | None:
    for line in reversed(lines):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("message_type") == "summary":
            return UploadSummary(
                snapshot_id=str(message["snapshot_id"]),
                data_added=int(message.get("data_added", 0)),
                bytes_processed=int(message.get("total_bytes_processed", 0)),
                seconds=float(message.get("total_duration", 0.0)),
            )
    return None


def last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    text = (fatal or lines or ["restic failed without a message"])[-1]
    return text.removeprefix("Fatal: ")


def host_key_fingerprints(host: str, port: int) -> list[str]:
    """What the host offers, as ``TYPE SHA256:…`` (ssh-keyscan, then ssh-keygen -l)."""
    try:
        scanned = subprocess.run(
            ["ssh-keyscan", "-p", str(port), host],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-f", "-"],
            input=scanned,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            found.append(f"{parts[-1].strip('()')} {parts[1]}")
    return found


def host_is_known(known_hosts: Path, name: str) -> bool:
    """Whether ``known_hosts`` has a line for ``name`` (hashed or not): ``ssh-keygen -F``."""
    if not known_hosts.is_file():
        return False
    try:
        found = subprocess.run(
            ["ssh-keygen", "-F", name, "-f", str(known_hosts)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: report restic's own error
    return found.returncode == 0 and bool(found.stdout.strip())


class Restic:
    """restic on one configured repository."""

    def __init__(
        self,
        repository: OffsiteRepository,
        secrets: Mapping[str, str],
        ssh: SshSettings,
        *,
        executable: str = "restic",
    ) -> None:
        self.repository = repository
        self.env = restic_environment(repository, secrets, os.environ)
        self.options = restic_options(repository, ssh)
        self.ssh = ssh
        self.executable = executable

    @property
    def where(self) -> str:
        return f"offsite {self.repository.name} ({self.repository.repository})"

    def _command(self, args: Sequence[str]) -> list[str]:
        found = shutil.which(self.executable)
        if found is None:
            raise OffsiteError(
                "restic is not installed",
                where=self.where,
                fix="install it (Debian: apt-get install restic)",
            )
        return [found, *self.options, *args]

    def _fail(self, stderr: str, action: str) -> OffsiteError:
        if HOST_KEY_CHANGED in stderr:
            return OffsiteError(
                "the SSH host key has CHANGED; this may be an attack",
                where=self.where,
                fix="if the host was reinstalled, check its new fingerprint and replace its "
                f"line in {self.ssh.known_hosts}",
            )
        if self._unknown_host(stderr):
            address = sftp_address(self.repository.repository)
            prints = ", ".join(host_key_fingerprints(address.host, address.port)) or "none seen"
            return OffsiteError(
                f"unknown SSH host key for {address.known_hosts_name}: {prints}; refused",
                where=self.where,
                fix="compare the fingerprint with the host's own (`ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub` there), then add it to "
                f"{self.ssh.known_hosts} or run `kbinfra ssh trust`",
            )
        if WRONG_PASSWORD in stderr:
            return WrongPasswordError(
                f"{action}: wrong password for this repository",
                where=self.where,
                fix=f"put the repository's password in secrets.yaml as "
                f"{self.repository.password_secret}",
            )
        return OffsiteError(f"{action}: {last_error_line(stderr)}", where=self.where)

    def _unknown_host(self, stderr: str) -> bool:
        """restic forwards ssh's stderr asynchronously and may exit before it arrives: a
        failed SFTP start is also looked up in the known_hosts file itself."""
        if repository_kind(self.repository.repository) != "sftp":
            return False
        if HOST_KEY_FAILED in stderr:
            return True
        if SFTP_START_FAILED not in stderr:
            return False
        address = sftp_address(self.repository.repository)
        return not host_is_known(self.ssh.known_hosts, address.known_hosts_name)

    def run(
        self,
        args: Sequence[str],
        *,
        action: str,
        cwd: Path | None = None,
        stdin: str | None = None,
    ) -> str:
        proc = subprocess.run(
            self._command(args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=cwd,
            input=stdin,
            check=False,
        )
        if proc.returncode != 0:
            raise self._fail(proc.stderr, action)
        return proc.stdout

    def _open(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(["cat", "config"]),
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )

    def exists(self) -> bool:
        """Whether there is a repository there (whether this password opens it or not)."""
        proc = self._open()
        if proc.returncode == 0 or WRONG_PASSWORD in proc.stderr:
            return True
        if NO_REPOSITORY not in proc.stderr:
            raise self._fail(proc.stderr, "cannot open the repository")
        return False

    def ensure_initialized(self) -> bool:
        """Open the repository, creating it when there is none; True if it was created."""
        proc = self._open()
        if proc.returncode == 0:
            return False
        if NO_REPOSITORY not in proc.stderr:
            raise self._fail(proc.stderr, "cannot open the repository")
        self.run(["init"], action="cannot create the repository")
        return True

    def snapshots(self, stack: str | None = None) -> list[Snapshot]:
        tag = f"{STACK_TAG}{stack}" if stack else TAG
        out = self.run(["snapshots", "--json", "--tag", tag], action="cannot list snapshots")
        return parse_snapshots(json.loads(out or "[]"))

    def backup(
        self,
        folder: Path,
        *,
        tags: Sequence[str],
        host: str,
        advance: Callable[[int], None],
    ) -> UploadSummary:
        """Upload ``folder`` (as its own name, relative to its parent)."""
        args = ["backup", "--json", "--host", host]
        for tag in tags:
            args += ["--tag", tag]
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(
                self._command([*args, folder.name]),
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=self.env,
                cwd=folder.parent,
            )
            lines = self._follow(proc, advance)
            code = proc.wait()
            errors.seek(0)
            stderr = errors.read()
        if code != 0:
            raise self._fail(stderr, "upload failed")
        summary = parse_backup_output(lines)
        if summary is None:
            raise OffsiteError("upload failed: restic reported no snapshot", where=self.where)
        return summary

    @staticmethod
    def _follow(proc: subprocess.Popen[str], advance: Callable[[int], None]) -> list[str]:
        """restic's JSON status lines drive the progress bar; the lines are kept."""
        assert proc.stdout is not None
        lines: list[str] = []
        done = 0
        for line in _lines(proc.stdout):
            lines.append(line)
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if isinstance(status, dict) and status.get("message_type") == "status":
                now = int(status.get("bytes_done") or 0)
                if now > done:
                    advance(now - done)
                    done = now
        return lines

    def forget(self, stack: str) -> list[str]:
        """Apply the repository's retention to this stack's snapshots; the removed ids."""
        out = self.run(
            [
                "forget",
                "--json",
                "--prune",
                "--tag",
                f"{STACK_TAG}{stack}",
                *retention_options(self.repository),
            ],
            action="retention (forget --prune) failed",
        )
        return removed_snapshots(out)

    def restore(self, snapshot: Snapshot, target: Path) -> None:
        self.run(
            ["restore", snapshot.id, "--target", str(target)],
            action=f"cannot fetch snapshot {snapshot.short_id}",
        )

    def list_keys(self) -> list[RepositoryKey]:
        """The repository's keys (``key list --json``); ``current`` is the one this
        password opened. A password that opens none raises :class:`WrongPasswordError`."""
        out = self.run(["key", "list", "--json"], action="cannot list the repository's keys")
        return parse_keys(json.loads(out or "[]"))

    def opens(self) -> bool:
        """Whether this password opens the repository (restic tries each of its keys)."""
        try:
            self.list_keys()
        except WrongPasswordError:
            return False
        return True

    def add_key(self, new_password: str) -> None:
        """``restic key add``: the new password travels on restic's stdin, never a file or
        a command line."""
        self.run(
            ["key", "add", "--new-password-file", "/dev/stdin"],
            action="cannot add the new password (restic key add)",
            stdin=new_password,
        )

    def remove_key(self, key_id: str) -> None:
        """``restic key remove ID``; restic refuses to remove the key this password opens."""
        self.run(["key", "remove", key_id], action=f"cannot remove key {key_id}")

    def check(self, read_data_subset: str) -> str:
        return self.run(
            ["check", "--read-data-subset", read_data_subset],
            action="restic check found a problem",
        )


def removed_snapshots(forget_output: str) -> list[str]:
    """The short ids ``restic forget --json`` removed (its JSON comes before prune's text)."""
    start = forget_output.find("[")
    if start < 0:
        return []
    try:
        groups, _ = json.JSONDecoder().raw_decode(forget_output[start:])
    except ValueError:
        return []
    removed = []
    for group in groups or []:
        for snapshot in group.get("remove") or []:
            removed.append(str(snapshot.get("short_id") or snapshot.get("id", ""))[:8])
    return removed


def _lines(stream: Any) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")
