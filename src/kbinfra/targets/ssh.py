"""A Docker Engine reached over SSH (paramiko), with a strictly verified host key.

One paramiko connection carries everything: the Docker API (``docker system dial-stdio``
on a channel per HTTP connection, as docker-py does), the ``sha256sum`` of the deployed
files, and SFTP uploads.

docker-py's own ``ssh://`` support builds its paramiko client itself: it loads only the
system known_hosts and the key named in ``~/.ssh/config``. kbinfra must use *its*
known_hosts file (``--known-hosts`` / ``KBINFRA_KNOWN_HOSTS``) and key (``--identity``), so
it connects and verifies the host itself, then hands the connected client to docker-py's
``SSHHTTPAdapter`` (subclassed so it does not connect again).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import posixpath
import re
import shlex
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError, unreadable
from kbinfra.spec.values import HostPort
from kbinfra.targets.base import RECORDS_DIR, TEMP_PREFIX, FileStore, Target

if TYPE_CHECKING:
    import paramiko
    from docker import DockerClient

# paramiko logs a failed handshake's traceback from its transport thread, which Python's
# last-resort handler prints (19 lines) unless the paramiko logger has a handler. The error
# kbinfra raises says it in one line; --debug shows the traceback of that error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_PORT = 22
CONNECT_TIMEOUT_S = 15.0
DOCKER_TIMEOUT_S = 120
ENGINE_POOL_KEY = "http+docker://ssh"


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
class SSHAddress:
    user: str
    host: str
    port: int = DEFAULT_PORT

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{HostPort(self.host, self.port)}"


@dataclass(frozen=True)
class SSHOptions:
    known_hosts: Path
    identity: Path | None = None
    deploy_dir: str | None = None


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


def engine_adapter(
    ssh_client: paramiko.SSHClient, reconnect: Callable[[], paramiko.SSHClient]
) -> Any:
    """docker-py's SSH transport over ``ssh_client`` (already connected and verified)."""
    from docker.transport.sshconn import SSHHTTPAdapter  # noqa: PLC0415

    class ConnectedSSHAdapter(SSHHTTPAdapter):
        def __init__(self) -> None:
            super().__init__("ssh://kbinfra", timeout=DOCKER_TIMEOUT_S, shell_out=False)

        def _create_paramiko_client(self, base_url: str) -> None:
            self.ssh_client = ssh_client
            self.ssh_params: dict[str, Any] = {}

        def _connect(self) -> None:
            if self.ssh_client is not None and self.ssh_client.get_transport() is None:
                self.ssh_client = reconnect()

        def get_connection(self, url: str | bytes, proxies: Any = None) -> Any:
            # docker-py keeps one connection pool per request URL, so every new path opened
            # a new channel and a new `docker system dial-stdio` process on the host (tens
            # of ms each). Every request goes to the same engine: one pool for them all.
            return super().get_connection(ENGINE_POOL_KEY, proxies)

    return ConnectedSSHAdapter()


def _docker_client_over(
    ssh_client: paramiko.SSHClient, reconnect: Callable[[], paramiko.SSHClient]
) -> DockerClient:
    """A DockerClient whose HTTP connections are channels of ``ssh_client``."""
    import docker  # noqa: PLC0415

    # No connection is made while the version is given; the adapter is mounted for the
    # same URL prefix docker-py uses for ssh://, so its stream handling applies unchanged.
    client = docker.DockerClient(base_url="unix:///kbinfra-unused.sock", version="1.24")
    api: Any = client.api
    adapter = engine_adapter(ssh_client, reconnect)
    api.mount(ENGINE_POOL_KEY, adapter)
    api._custom_adapter = adapter
    api.base_url = ENGINE_POOL_KEY
    try:
        api._version = api.version(api_version=False)["ApiVersion"]
    except docker.errors.DockerException as error:
        raise KbinfraError(
            f"no Docker Engine answers through SSH: {error}",
            fix="the SSH user needs the docker CLI and access to /var/run/docker.sock",
        ) from None
    return client


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


class SFTPFileStore(FileStore):
    """The deployed stack folder on the remote host: hashes by one ``sha256sum`` call.

    A folder under the home folder is resolved to an absolute path only when SFTP is first
    needed: a no-op apply, which only reads hashes, opens no SFTP session at all (the shell
    that computes them starts in the home folder, as SFTP does).
    """

    def __init__(self, target: SSHTarget, root: str) -> None:
        self._target = target
        self._relative = home_relative(root)
        self._root = None if self._relative is not None else root.rstrip("/") or "/"
        shown = root if self._relative is None else posixpath.join("~", self._relative)
        self.location = f"{target.address.user}@{target.address.host}:{posixpath.normpath(shown)}"
        self._made_dirs: set[str] = set()

    @property
    def root(self) -> str:
        """The folder's absolute path (asks the SFTP server for the home folder once)."""
        if self._root is None:
            home = self._target.sftp().normalize(".")
            self._root = posixpath.normpath(posixpath.join(home, self._relative or "."))
        return self._root

    def _remote(self, path: str) -> str:
        full = posixpath.normpath(posixpath.join(self.root, path))
        if not full.startswith(self.root + "/"):
            raise ValueError(f"{path!r} is outside the stack folder")
        return full

    def hashes(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        # The folder's files are listed by find, never named on the command line: no path
        # ever reaches the shell; ``paths`` only filters the result.
        folder = shlex.quote(self._relative if self._relative is not None else self.root)
        skip = shlex.quote(TEMP_PREFIX + "*")
        command = (
            f"cd {folder} 2>/dev/null || exit 0; "
            f"find . -path ./{RECORDS_DIR} -prune -o -type f ! -name {skip} "
            "-exec sha256sum {} +; exit 0"
        )
        found = parse_sha256sum(self._target.run(command))
        if paths is None:
            return found
        return {path: found[path] for path in paths if path in found}

    def modes(self, paths: Iterable[str]) -> dict[str, int]:
        sftp = self._target.sftp()
        result = {}
        for path in paths:
            try:
                attributes = sftp.stat(self._remote(path))
            except FileNotFoundError:
                continue
            result[path] = stat.S_IMODE(attributes.st_mode or 0)
        return result

    def read(self, path: str) -> bytes | None:
        sftp = self._target.sftp()
        try:
            with sftp.open(self._remote(path), "rb") as handle:
                data: bytes = handle.read()
                return data
        except FileNotFoundError:
            return None

    def _mkdirs(self, directory: str) -> None:
        sftp = self._target.sftp()
        missing = []
        current = directory
        while current not in self._made_dirs and current not in ("", "/"):
            try:
                if stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                    break
            except FileNotFoundError:
                missing.append(current)
            current = posixpath.dirname(current)
        for folder in reversed(missing):
            sftp.mkdir(folder, mode=0o700)
        self._made_dirs.add(directory)

    def put(self, path: str, data: bytes, mode: int) -> None:
        sftp = self._target.sftp()
        remote = self._remote(path)
        self._mkdirs(posixpath.dirname(remote))
        temp = posixpath.join(
            posixpath.dirname(remote), f"{TEMP_PREFIX}{posixpath.basename(remote)}-{os.getpid()}"
        )
        try:
            with sftp.open(temp, "wb") as handle:
                handle.chmod(mode)  # before any byte is written
                handle.write(data)
            sftp.posix_rename(temp, remote)
        except BaseException:
            with contextlib.suppress(OSError):
                sftp.remove(temp)
            raise

    def remove(self, path: str) -> None:
        sftp = self._target.sftp()
        remote = self._remote(path)
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(remote)
        parent = posixpath.dirname(remote)
        while parent.startswith(self.root + "/"):
            try:
                sftp.rmdir(parent)  # only when empty
            except OSError:
                break
            self._made_dirs.discard(parent)
            parent = posixpath.dirname(parent)


class SSHTarget(Target):
    """``ssh://user@host:port``: Docker over SSH, files over SFTP."""

    def __init__(self, address: SSHAddress, options: SSHOptions) -> None:
        self.address = address
        self.options = options
        self.name = address.url
        self._lock = threading.Lock()
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._docker: DockerClient | None = None

    def ssh(self) -> paramiko.SSHClient:
        with self._lock:
            if self._ssh is None or self._ssh.get_transport() is None:
                self._ssh = connect(self.address, self.options)
            return self._ssh

    def _reconnect(self) -> paramiko.SSHClient:
        with self._lock:
            self._ssh = connect(self.address, self.options)
            return self._ssh

    def run(self, command: str) -> str:
        """Run a shell command on the host; its stdout (an error on a non-zero exit)."""
        _, stdout, stderr = self.ssh().exec_command(command, timeout=DOCKER_TIMEOUT_S)
        output = stdout.read().decode("utf-8", "replace")
        status = stdout.channel.recv_exit_status()
        if status != 0:
            message = stderr.read().decode("utf-8", "replace").strip()
            raise KbinfraError(
                f"remote command failed ({status}): {message}", where=self.address.url
            )
        return output

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            import paramiko  # noqa: PLC0415

            try:
                self._sftp = self.ssh().open_sftp()
            except paramiko.SSHException as error:
                raise KbinfraError(
                    f"SFTP is not available: {error}",
                    where=self.address.url,
                    fix="enable it in the host's sshd_config (`Subsystem sftp internal-sftp`)",
                ) from None
        return self._sftp

    def docker_client(self) -> DockerClient:
        if self._docker is None:
            self._docker = _docker_client_over(self.ssh(), self._reconnect)
        return self._docker

    @contextmanager
    def tunnel(self, port: int, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        """A local port forwarded over this SSH connection to ``host:port`` on the target."""
        from kbinfra.targets.tunnel import Tunnel  # noqa: PLC0415

        transport = self.ssh().get_transport()
        if transport is None:
            raise KbinfraError("the SSH connection closed", where=self.address.url)

        def open_channel() -> Any:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0))

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
        return SFTPFileStore(self, root)

    def close(self) -> None:
        if self._docker is not None:
            self._docker.close()
            self._docker = None
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
