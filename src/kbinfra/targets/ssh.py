"""A Docker Engine reached over SSH, with a strictly verified host key.

Everything goes through the system ``ssh`` client and one shared master connection per
target (:mod:`kbinfra.targets.openssh`): the Docker API as a forward of the host's engine
socket, the deployed files through a few fixed shell scripts fed on their standard input,
and tunnels to the host's loopback as forwards too.

paramiko is imported only by ``kbinfra ssh trust`` (to read the key a host offers) and when
ssh has refused a host key, to say which key was offered and with which fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import posixpath
import re
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError, unreadable
from kbinfra.host_port import HostPort
from kbinfra.targets.base import RECORDS_DIR, TEMP_PREFIX, FileStore, Target
from kbinfra.targets.openssh import (
    DEFAULT_PORT,
    OpenSSH,
    SSHAddress,
    SSHOptions,
    connectable,
    engine_endpoint,
)

if TYPE_CHECKING:
    import paramiko
    from docker import DockerClient

    from kbinfra.targets.engine import EngineReads
    from kbinfra.targets.engine_socket import SocketEngineReads

# paramiko logs a failed handshake's traceback from its transport thread, which Python's
# last-resort handler prints (19 lines) unless the paramiko logger has a handler. The error
# kbinfra raises says it in one line; --debug shows the traceback of that error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT_S = 15.0
DOCKER_TIMEOUT_S = 120


_MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


def load_paramiko(ssh_config: Path | None = None) -> None:
    """Import paramiko without invoke, unless the ssh config has a ``Match exec`` line.

    paramiko imports invoke (a third of paramiko's import time here, 0.09-0.24 s) only to
    run ``Match ... exec`` lines of an ssh config, the only file kbinfra has it read. With
    invoke marked absent while paramiko loads, paramiko goes without, as when invoke is not
    installed; the mark is taken away afterwards.
    """
    if "paramiko" in sys.modules:
        return
    config = ssh_config or Path("~/.ssh/config").expanduser()
    try:
        needs_invoke = bool(
            _MATCH_EXEC.search(config.read_text(encoding="utf-8", errors="replace"))
        )
    except OSError:
        needs_invoke = False
    if needs_invoke or "invoke" in sys.modules:
        import paramiko  # noqa: PLC0415

        return
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko  # noqa: PLC0415, F401
    finally:
        if sys.modules.get("invoke", ...) is None:
            del sys.modules["invoke"]


def default_known_hosts() -> Path:
    return Path(os.environ.get("KBINFRA_KNOWN_HOSTS") or "~/.ssh/known_hosts").expanduser()


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host``, or ``[host]:port`` off port 22."""
    return host if port == DEFAULT_PORT else f"[{host}]:{port}"


def fingerprint(key_bytes: bytes) -> str:
    """OpenSSH's ``SHA256:`` fingerprint of a public key blob."""
    digest = hashlib.sha256(key_bytes).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def trust_hint(host: str, port: int) -> str:
    if port != DEFAULT_PORT:
        address = str(HostPort(host, port))
    else:
        address = f"[{host}]" if ":" in host else host
    return f"kbinfra ssh trust {address}"


class HostKeyError(KbinfraError):
    """An unknown or changed SSH host key: the connection is refused."""


@dataclass(frozen=True)
class KnownHosts:
    """A known_hosts file as OpenSSH reads it: trusted keys, and keys marked ``@revoked``."""

    trusted: paramiko.HostKeys
    revoked: frozenset[str]  # base64 key blobs

    def keys_for(self, host: str, port: int) -> dict[str, str]:
        """Key type → base64 key trusted for ``host:port``."""
        entry = self.trusted.lookup(known_hosts_name(host, port))
        return {} if entry is None else {kind: key.get_base64() for kind, key in entry.items()}


def read_known_hosts(path: Path) -> KnownHosts:
    """Parse ``path`` as OpenSSH does; paramiko alone raises on ``@revoked`` and
    ``@cert-authority`` lines. A revoked key is never trusted, even where another line lists
    it; host certificates are not supported, so a ``@cert-authority`` line trusts nothing."""
    load_paramiko()
    import paramiko  # noqa: PLC0415
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey  # noqa: PLC0415

    trusted = paramiko.HostKeys()
    if not path.exists():
        return KnownHosts(trusted, frozenset())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = unreadable(error)
        raise KbinfraError(
            f"cannot read the known_hosts file: {reason}",
            where=str(path),
            fix="pass --known-hosts FILE (or KBINFRA_KNOWN_HOSTS), a file in known_hosts format",
        ) from None
    revoked: set[str] = set()
    entries: list[HostKeyEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            marker, _, rest = line.partition(" ")
            fields = rest.split()
            if marker == "@revoked" and len(fields) >= 3:
                revoked.add(fields[2])
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, paramiko.SSHException, ValueError):
            raise KbinfraError(
                "not a known_hosts line (HOSTS KEYTYPE BASE64-KEY)",
                where=f"{path}:{number}",
                fix="fix or delete that line, e.g. with `ssh-keygen -f FILE -R HOST`",
            ) from None
        if entry is not None:
            entries.append(entry)
    for entry in entries:
        if entry.key.get_base64() not in revoked:
            for name in entry.hostnames:
                trusted.add(name, entry.key.get_name(), entry.key)
    return KnownHosts(trusted, frozenset(revoked))


def known_keys(known_hosts: Path, host: str, port: int) -> dict[str, str]:
    """Key type → base64 key already trusted for ``host:port``."""
    return read_known_hosts(known_hosts).keys_for(host, port)


def revoked_key_error(key: paramiko.PKey, where: str, known_hosts: Path) -> HostKeyError:
    return HostKeyError(
        f"SSH host key {key.get_name()} {fingerprint(key.asbytes())} is marked @revoked",
        where=f"{where} ({known_hosts})",
        fix="this key must not be trusted: give the host a new key, then run `kbinfra ssh trust`",
    )


def _unknown_host_policy(address: SSHAddress, known: KnownHosts, known_hosts: Path) -> Any:
    import paramiko  # noqa: PLC0415

    class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
        """Refuse, saying which key was offered and how to trust it after checking it."""

        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> None:
            if key.get_base64() in known.revoked:
                raise revoked_key_error(key, f"{address.host}:{address.port}", known_hosts)
            raise HostKeyError(
                f"unknown SSH host key {key.get_name()} {fingerprint(key.asbytes())}",
                where=f"{address.host}:{address.port} (not in {known_hosts})",
                fix=(
                    "compare the fingerprint with the host's own (`ssh-keygen -lf "
                    "/etc/ssh/ssh_host_*_key.pub`), then run "
                    f"`{trust_hint(address.host, address.port)}`"
                ),
            )

    return RefuseUnknownHost()


def connect(address: SSHAddress, options: SSHOptions) -> paramiko.SSHClient:
    """A connected paramiko client whose host key matched ``options.known_hosts``."""
    load_paramiko()
    import paramiko  # noqa: PLC0415

    known = read_known_hosts(options.known_hosts)
    client = paramiko.SSHClient()
    host_keys = client.get_host_keys()
    for name in known.trusted:
        host_keys[name] = known.trusted[name]
    client.set_missing_host_key_policy(_unknown_host_policy(address, known, options.known_hosts))
    params: dict[str, Any] = {
        "hostname": address.host,
        "port": address.port,
        "username": address.user,
        "timeout": CONNECT_TIMEOUT_S,
        "banner_timeout": CONNECT_TIMEOUT_S,
        "auth_timeout": CONNECT_TIMEOUT_S,
    }
    config_file = Path("~/.ssh/config").expanduser()
    if config_file.exists():
        host_config = paramiko.SSHConfig.from_path(str(config_file)).lookup(address.host)
        if "proxycommand" in host_config:
            params["sock"] = paramiko.ProxyCommand(host_config["proxycommand"])
        if "identityfile" in host_config and options.identity is None:
            params["key_filename"] = host_config["identityfile"]
    if options.identity is not None:
        params["key_filename"] = str(options.identity.expanduser())
        params["look_for_keys"] = False
        params["allow_agent"] = False
    where = f"{address.host}:{address.port}"
    try:
        client.connect(**params)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as error:
        client.close()
        raise HostKeyError(
            f"SSH host key CHANGED: offered {error.key.get_name()} "
            f"{fingerprint(error.key.asbytes())}, known_hosts has "
            f"{fingerprint(error.expected_key.asbytes())}; this may be an attack",
            where=f"{where} ({options.known_hosts})",
            fix=(
                "if the host was reinstalled, check the new fingerprint, remove the old line "
                f"(`ssh-keygen -f {options.known_hosts} -R "
                f"'{known_hosts_name(address.host, address.port)}'`), then run "
                f"`{trust_hint(address.host, address.port)}`"
            ),
        ) from None
    except paramiko.AuthenticationException as error:
        client.close()
        raise KbinfraError(
            f"SSH login as {address.user} refused: {error}",
            where=where,
            fix="pass --identity KEY (or KBINFRA_SSH_IDENTITY) for a key the host accepts",
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as error:
        client.close()
        raise KbinfraError(
            f"cannot connect over SSH: {error}",
            where=where,
            fix="check the target's host and port in kbinfra.yaml and that sshd listens there",
        ) from None
    return client


def diagnose_host_key(address: SSHAddress, options: SSHOptions, said: str) -> KbinfraError:
    """Why ssh refused the host key, in kbinfra's words: the same handshake again (paramiko,
    nothing run, nothing written) names the key offered, its fingerprint and the fix."""
    try:
        client = connect(address, options)
    except KbinfraError as error:
        return error
    client.close()
    return HostKeyError(
        f"ssh refused the host key: {said}",
        where=f"{address.host}:{address.port} ({options.known_hosts})",
        fix=f"check the key, then run `{trust_hint(address.host, address.port)}`",
    )


def fetch_host_key(host: str, port: int) -> paramiko.PKey:
    """The host key the server offers (what ``ssh`` would be asked to trust)."""
    import socket  # noqa: PLC0415

    load_paramiko()
    import paramiko  # noqa: PLC0415

    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as error:
        raise KbinfraError(
            f"cannot connect: {error.strerror or error}",
            where=where,
            fix="check the host name and port, and that sshd listens there",
        ) from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT_S)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError):
        raise KbinfraError(
            "no SSH server answered there (no SSH handshake)",
            where=where,
            fix="check the port: pass HOST:PORT with the port sshd listens on",
        ) from None
    finally:
        transport.close()


def append_known_host(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Add one OpenSSH known_hosts line (file 0600 and folder 0700 when created)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode())


_SHA256SUM_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def parse_sha256sum(output: str) -> dict[str, str]:
    r"""``sha256sum``'s lines as path -> digest, its leading ``./`` dropped.

    GNU sha256sum writes a name holding a backslash, newline or carriage return escaped
    (``\\``, ``\n``, ``\r``) and marks that line with a leading backslash; the name is
    everything after the two spaces, spaces included. Lines end at ``\n`` only.
    """
    result: dict[str, str] = {}
    for line in output.split("\n"):
        digest, sep, name = line.partition("  ")
        if not sep:
            continue
        if digest.startswith("\\"):
            digest = digest[1:]
            name = _unescape(name)
        result[name.removeprefix("./")] = digest
    return result


def _unescape(name: str) -> str:
    out: list[str] = []
    chars = iter(name)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(_SHA256SUM_ESCAPES.get(following, "\\" + following))
        else:
            out.append(char)
    return "".join(out)


def home_relative(root: str) -> str | None:
    """``root`` relative to the login's home folder (``~/x``, ``x``), or None if absolute."""
    if root.startswith("/"):
        return None
    if root == "~":
        return "."
    return root.removeprefix("~/") or "."


# The only commands kbinfra runs on a host, fixed: what they act on (a folder, a path, a
# mode) comes on their standard input, one line each, never on the command line. Each runs
# as ``sh -c '...'`` whatever the login shell, so none holds a quote, backslash or ``!``.
ENGINE_ADDRESS_SCRIPT = 'printf "%s" "${DOCKER_HOST-}"'
HASHES_SCRIPT = (
    'IFS= read -r d || exit 0; cd -- "$d" 2>/dev/null || exit 0; '
    f'find . -path ./{RECORDS_DIR} -prune -o -name "{TEMP_PREFIX}*" -prune '
    "-o -type f -exec sha256sum {} +; exit 0"
)
READ_SCRIPT = 'IFS= read -r f || exit 2; [ -f "$f" ] || exit 3; exec cat -- "$f"'
READ_MISSING = 3
MODES_SCRIPT = (
    'while IFS= read -r f; do m=$(stat -c %a -- "$f" 2>/dev/null) || m=-; echo "$m"; done'
)
PUT_SCRIPT = (
    "umask 077; IFS= read -r f && IFS= read -r m || exit 2; "
    'd=$(dirname -- "$f"); t="$d/' + TEMP_PREFIX + '$(basename -- "$f")-$$"; '
    'mkdir -p -- "$d" && cat > "$t" && chmod -- "$m" "$t" && mv -f -- "$t" "$f" && exit 0; '
    'rm -f -- "$t"; exit 1'
)
REMOVE_SCRIPT = (
    "IFS= read -r f && IFS= read -r top || exit 2; "
    'rm -f -- "$f"; d=$(dirname -- "$f"); '
    'while :; do case "$d" in "$top"/*) rmdir -- "$d" 2>/dev/null || break; '
    'd=$(dirname -- "$d");; *) break;; esac; done; exit 0'
)
REMOVE_FOLDER_SCRIPT = 'IFS= read -r d || exit 2; rmdir -- "$d" 2>/dev/null; exit 0'
REMOTE_SCRIPTS = (
    ENGINE_ADDRESS_SCRIPT,
    HASHES_SCRIPT,
    READ_SCRIPT,
    MODES_SCRIPT,
    PUT_SCRIPT,
    REMOVE_SCRIPT,
    REMOVE_FOLDER_SCRIPT,
)


def remote_command(script: str) -> str:
    """``sh -c '<script>'``: the string ssh hands the login shell, for a fixed script."""
    if any(char in script for char in "'\\!\n"):
        raise ValueError("a remote script must hold no quote, backslash, ! or newline")
    return f"sh -c '{script}'"


def stdin_line(value: str) -> bytes:
    """One line of a remote script's input: a path never holds a newline or a NUL."""
    if "\n" in value or "\0" in value:
        raise ValueError(f"{value!r} holds a newline or NUL")
    return value.encode() + b"\n"


class RemoteFileStore(FileStore):
    """The deployed stack folder on the remote host, through the fixed scripts above.

    A folder under the home folder stays relative: every script starts in the home folder.
    Hashes are one ``sha256sum`` of every file, listed by ``find`` (no name on any line).
    """

    def __init__(self, target: SSHTarget, root: str) -> None:
        self._target = target
        relative = home_relative(root)
        self.root = relative if relative is not None else posixpath.normpath(root)
        shown = root if relative is None else posixpath.join("~", relative)
        self.location = f"{target.address.user}@{target.address.host}:{posixpath.normpath(shown)}"

    def _remote(self, path: str) -> str:
        full = posixpath.normpath(posixpath.join(self.root, path))
        inside = (
            not (full == ".." or full.startswith(("../", "/")))
            if self.root == "."
            else full.startswith(self.root.rstrip("/") + "/")
        )
        if not inside or posixpath.isabs(path):
            raise ValueError(f"{path!r} is outside the stack folder")
        return full

    def hashes(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        _, output = self._target.run_script(HASHES_SCRIPT, stdin_line(self.root))
        found = parse_sha256sum(output.decode("utf-8", "surrogateescape"))
        if paths is None:
            return found
        return {path: found[path] for path in paths if path in found}

    def modes(self, paths: Iterable[str]) -> dict[str, int]:
        wanted = list(paths)
        if not wanted:
            return {}
        lines = b"".join(stdin_line(self._remote(path)) for path in wanted)
        _, output = self._target.run_script(MODES_SCRIPT, lines)
        answers = output.decode().split("\n")
        return {
            path: int(answer, 8)
            for path, answer in zip(wanted, answers, strict=False)
            if answer and answer != "-"
        }

    def read(self, path: str) -> bytes | None:
        status, data = self._target.run_script(
            READ_SCRIPT, stdin_line(self._remote(path)), ok=(0, READ_MISSING)
        )
        return None if status == READ_MISSING else data

    def put(self, path: str, data: bytes, mode: int) -> None:
        header = stdin_line(self._remote(path)) + stdin_line(f"{stat.S_IMODE(mode):o}")
        self._target.run_script(PUT_SCRIPT, header + data)

    def remove(self, path: str) -> None:
        lines = stdin_line(self._remote(path)) + stdin_line(self.root)
        self._target.run_script(REMOVE_SCRIPT, lines)

    def remove_folder_if_empty(self) -> None:
        self._target.run_script(REMOVE_FOLDER_SCRIPT, stdin_line(self.root))


class SSHTarget(Target):
    """``ssh://user@host:port``: Docker and files over one shared OpenSSH connection."""

    def __init__(self, address: SSHAddress, options: SSHOptions) -> None:
        self.address = address
        self.options = options
        self.name = address.url
        self._lock = threading.Lock()
        self._openssh: OpenSSH | None = None
        self._engine_socket: Path | None = None
        self._docker: DockerClient | None = None
        self._reads: SocketEngineReads | None = None
        self._tunnels = itertools.count()

    def openssh(self) -> OpenSSH:
        with self._lock:
            if self._openssh is None:
                self._openssh = OpenSSH(
                    self.address,
                    self.options,
                    lambda said: diagnose_host_key(self.address, self.options, said),
                )
            return self._openssh

    def connect(self) -> None:
        """Start (or join) the shared connection: a refused host key is raised here."""
        self.openssh().ensure_master()

    def run_script(
        self, script: str, stdin: bytes = b"", *, ok: Sequence[int] = (0,)
    ) -> tuple[int, bytes]:
        """Run one of the fixed scripts on the host: its exit status and stdout."""
        return self.openssh().run(remote_command(script), stdin, ok=ok)

    def engine_socket(self) -> Path:
        """A socket on this machine that is the host's Docker Engine (a forward on the
        master, made once and shared by every run that shares the master)."""
        ssh = self.openssh()
        with self._lock:
            if self._engine_socket is None:
                ssh.ensure_master()
                local = ssh.forwarded_socket("docker")
                if not connectable(local):
                    _, answer = ssh.run(remote_command(ENGINE_ADDRESS_SCRIPT))
                    endpoint = engine_endpoint(answer.decode("utf-8", "replace"), self.name)
                    ssh.forward(local, endpoint.destination, own=False)
                self._engine_socket = local
            return self._engine_socket

    def engine_reads(self) -> EngineReads:
        """On the forwarded socket, without docker-py, until a docker client is made."""
        if self._docker is not None:
            return super().engine_reads()
        if self._reads is None:
            from kbinfra.targets.engine_socket import SocketEngineReads  # noqa: PLC0415

            self._reads = SocketEngineReads(str(self.engine_socket()), where=self.name)
        return self._reads

    def docker_client(self) -> DockerClient:
        if self._docker is None:
            from kbinfra.targets.local import import_docker  # noqa: PLC0415

            address = f"unix://{self.engine_socket()}"
            docker = import_docker(address)
            try:
                self._docker = docker.DockerClient(base_url=address, timeout=DOCKER_TIMEOUT_S)
            except docker.errors.DockerException as error:
                raise KbinfraError(
                    f"no Docker Engine answers through SSH: {error}",
                    where=self.name,
                    fix="the SSH user needs access to the host's Docker socket "
                    "(e.g. membership of the docker group)",
                ) from None
        return self._docker

    @contextmanager
    def tunnel(self, port: int, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        """A local port forwarded over the shared connection to ``host:port`` on the target."""
        import socket  # noqa: PLC0415

        from kbinfra.targets.tunnel import Tunnel  # noqa: PLC0415

        ssh = self.openssh()
        local = ssh.forwarded_socket(f"t{os.getpid()}-{next(self._tunnels)}")
        remote_host = f"[{host}]" if ":" in host else host
        ssh.forward(local, f"{remote_host}:{port}", own=True)

        def open_channel() -> socket.socket:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                channel.connect(str(local))
            except OSError:
                channel.close()
                raise
            return channel

        forward = Tunnel(open_channel)
        try:
            yield "127.0.0.1", forward.local_port
        finally:
            forward.close()

    def file_store(self, stack: str) -> FileStore:
        root = self.options.deploy_dir
        if root is None:
            root = f"/var/lib/kbinfra/{stack}" if self.address.user == "root" else "~/.kbinfra"
            root = root if self.address.user == "root" else f"{root}/{stack}"
        return RemoteFileStore(self, root)

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        if self._docker is not None:
            self._docker.close()
            self._docker = None
        if self._openssh is not None:
            self._openssh.close()
        self._engine_socket = None
