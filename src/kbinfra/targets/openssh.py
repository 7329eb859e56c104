"""One shared OpenSSH connection per target (``ControlMaster``), with kbinfra's host-key rules.

The system ``ssh`` client starts a master connection once; every later ``ssh`` of this or
another kbinfra run within ``ControlPersist`` seconds rides on it, without a new handshake
(a few milliseconds instead of a few hundred). The Docker API is a forward of the host's
engine socket to a socket in a private folder of this user, so docker-py and kbinfra's own
socket reads speak to it as to a local engine, and every HTTP connection is a channel of the
master, not a new session or a new ``docker`` process on the host.

What kbinfra asks of ``ssh`` is an argument vector, never a shell string: the only remote
commands are the fixed scripts of :mod:`kbinfra.targets.ssh`, and what they act on (a path,
a mode) is sent on their standard input. Nothing secret is ever on a command line.

Host keys are checked by ssh itself, strictly, against kbinfra's known_hosts file alone
(``StrictHostKeyChecking=yes``, ``GlobalKnownHostsFile=/dev/null``, ``UpdateHostKeys=no``,
host certificates refused as kbinfra refuses ``@cert-authority`` lines). A master is shared
only by runs with the same user, host, port, identity *and* known_hosts content: the
socket's name is a hash of all of them, so removing a key from known_hosts (or using another
file) never rides on a master that was verified against the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kbinfra.errors import KbinfraError
from kbinfra.host_port import HostPort

DEFAULT_PORT = 22
#: How long a master outlives its last use, unless ``KBINFRA_SSH_PERSIST`` says otherwise.
DEFAULT_PERSIST_S = 60
PERSIST_ENV = "KBINFRA_SSH_PERSIST"
#: With ``KBINFRA_SSH_PERSIST=0`` the master is closed when the target is; this bounds its
#: life should kbinfra be killed before it can close it.
UNSHARED_PERSIST_S = 5
CONNECT_TIMEOUT_S = 15
COMMAND_TIMEOUT_S = 120
#: sun_path is 108 bytes on Linux, 104 on macOS; ssh adds a 17-byte suffix while binding.
MAX_SOCKET_PATH = 104 - 17
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"


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


def ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise KbinfraError(
            "the OpenSSH client (`ssh`) is not installed on this machine",
            fix="install it (Debian/Ubuntu: `apt-get install openssh-client`); kbinfra "
            "reaches SSH targets through it",
        )
    return found


def persist_seconds() -> int:
    """``KBINFRA_SSH_PERSIST``: seconds a master outlives its last use (0: not shared)."""
    raw = os.environ.get(PERSIST_ENV, "").strip()
    if not raw:
        return DEFAULT_PERSIST_S
    if not raw.isdigit() or int(raw) > 86400:
        raise KbinfraError(
            f"{PERSIST_ENV}={raw!r} is not a number of seconds from 0 to 86400",
            where=PERSIST_ENV,
            fix=f"set it to e.g. {DEFAULT_PERSIST_S}, or 0 to close the connection at exit",
        )
    return int(raw)


def control_dir() -> Path:
    """This user's private folder for master sockets: ``$XDG_RUNTIME_DIR/kbinfra-ssh``, else
    ``~/.cache/kbinfra/ssh``; made 0700, and refused if anyone else could enter it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "kbinfra-ssh" if runtime else Path("~/.cache/kbinfra/ssh")
    folder = base.expanduser()
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise KbinfraError(
            "the folder for shared SSH connections is not a private folder of this user",
            where=str(folder),
            fix=f"`chmod 700 {folder}` (owned by you), or remove it: kbinfra makes it again",
        )
    return folder


def master_name(address: SSHAddress, options: SSHOptions) -> str:
    """The socket's name: a hash of everything that decides what the master may be used
    for (who, where, which key, and which host keys were trusted when it was made)."""
    digest = hashlib.sha256()
    for part in (address.user, address.host, str(address.port)):
        digest.update(part.encode() + b"\0")
    identity = options.identity
    digest.update(str(identity.expanduser().resolve()).encode() if identity else b"-")
    digest.update(b"\0" + str(options.known_hosts.expanduser().resolve()).encode() + b"\0")
    with contextlib.suppress(OSError):
        digest.update(options.known_hosts.expanduser().read_bytes())
    return digest.hexdigest()[:24]


def base_arguments(
    address: SSHAddress, options: SSHOptions, control_path: Path | None
) -> list[str]:
    """The options of every ``ssh`` kbinfra runs (before the destination)."""
    known_hosts = str(options.known_hosts.expanduser())
    args = [
        "-T",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", "HostKeyAlgorithms=-*-cert-v01@openssh.com",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", "ServerAliveInterval=15",
        "-o", "LogLevel=ERROR",
        "-o", "StreamLocalBindUnlink=yes",
        "-p", str(address.port),
        "-l", address.user,
    ]  # fmt: skip
    if options.identity is not None:
        args += ["-i", str(options.identity.expanduser()), "-o", "IdentitiesOnly=yes"]
    if control_path is not None:
        args += ["-o", f"ControlPath={control_path}"]
    else:
        args += ["-o", "ControlPath=none"]
    return args


@dataclass(frozen=True)
class EngineEndpoint:
    """Where the host's Docker Engine listens, as a forward destination: a socket path, or
    ``host:port`` for a plain ``tcp://`` engine."""

    destination: str


def engine_endpoint(docker_host: str, where: str) -> EngineEndpoint:
    """The forward destination of the host's ``DOCKER_HOST`` (empty: the default socket)."""
    value = docker_host.strip()
    if not value:
        return EngineEndpoint(DEFAULT_ENGINE_SOCKET)
    if value.startswith("unix://") and value.removeprefix("unix://").startswith("/"):
        return EngineEndpoint(value.removeprefix("unix://"))
    if value.startswith("tcp://"):
        hostport = value.removeprefix("tcp://").rstrip("/")
        if hostport and ":" in hostport and "/" not in hostport:
            return EngineEndpoint(hostport)
    raise KbinfraError(
        f"the host's DOCKER_HOST={value!r} is neither a unix:// socket nor tcp://HOST:PORT",
        where=where,
        fix="point DOCKER_HOST on the host at the engine's socket (or unset it)",
    )


class OpenSSH:
    """The ``ssh`` runs of one target: a shared master, commands, and socket forwards."""

    def __init__(
        self,
        address: SSHAddress,
        options: SSHOptions,
        diagnose: Callable[[str], KbinfraError] | None = None,
    ) -> None:
        """``diagnose`` turns what ssh said of a refused host key into kbinfra's error."""
        self.address = address
        self.options = options
        self._diagnose = diagnose
        self.binary = ssh_binary()
        self.persist_s = persist_seconds()
        self.folder = control_dir()
        self.name = master_name(address, options)
        path = self.folder / self.name
        # A home folder too deep for a socket path: ssh runs without sharing (still strict).
        self.control_path: Path | None = path if len(str(path)) + 8 <= MAX_SOCKET_PATH else None
        self._forwards: list[str] = []
        self._started = False

    @property
    def where(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    def argv(self, *extra: str) -> list[str]:
        """``ssh`` with kbinfra's options, then ``extra`` (before the destination)."""
        args = [self.binary, *base_arguments(self.address, self.options, self.control_path)]
        return [*args, *extra]

    def command_argv(self, remote: str) -> list[str]:
        """The argument vector that runs the fixed remote command ``remote``."""
        # forwards an ssh config may name are not kbinfra's: none is asked for
        args = self.argv("-o", "ControlMaster=no", "-o", "ClearAllForwardings=yes")
        return [*args, "--", self.address.host, remote]

    # ---------------------------------------------------------------- the master
    def master_alive(self) -> bool:
        if self.control_path is None or not self.control_path.exists():
            return False
        done = subprocess.run(
            [*self.argv("-O", "check"), "--", self.address.host],
            capture_output=True,
            timeout=CONNECT_TIMEOUT_S,
            check=False,
        )
        return done.returncode == 0

    def ensure_master(self) -> None:
        """Start the shared connection unless one already runs (host key checked by ssh)."""
        if self._started or self.control_path is None:
            self._started = True
            return
        lock_path = self.folder / f"{self.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two runs at once start one master, not two
            if not self.master_alive():
                self._remove_dead_socket()
                self._start_master()
        finally:
            os.close(fd)
        self._started = True

    def _remove_dead_socket(self) -> None:
        """Remove the socket a master killed without cleaning up left behind (a reboot, the
        OOM killer, ``kill -9``): ssh does not bind over it, and every ``-O`` request would
        fail on it with "Connection refused". Only a socket nothing listens on is removed,
        and only in kbinfra's own private folder, under the lock."""
        path = self.control_path
        if path is None or not path.is_socket():
            return
        if isinstance(connect_error(path), ConnectionRefusedError):
            path.unlink(missing_ok=True)

    def _start_master(self) -> None:
        persist = self.persist_s or UNSHARED_PERSIST_S
        argv = [
            *self.argv(
                "-o", "ControlMaster=yes", "-o", f"ControlPersist={persist}",
                "-o", "ClearAllForwardings=yes", "-f", "-N",
            ),
            "--",
            self.address.host,
        ]  # fmt: skip
        # with -f, ssh detaches after authentication and points its stdio at /dev/null
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CONNECT_TIMEOUT_S * 2,
            check=False,
        )
        if done.returncode != 0:
            raise self.failure(done.stderr.decode("utf-8", "replace"))

    def failure(self, stderr: str) -> KbinfraError:
        """One line saying why ssh could not connect: a host-key refusal with the key's
        fingerprint (asked again, read-only, to say which key was offered), a refused login,
        or ssh's own last line."""
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        text = " ".join(lines)
        refused_key = "host key" in text.lower() or "host identification" in text.lower()
        if refused_key and self._diagnose is not None:
            return self._diagnose(text)
        if refused_key:
            return KbinfraError(
                f"ssh refused the host key: {text}",
                where=self.where,
                fix="check the key, then run `kbinfra ssh trust HOST:PORT`",
            )
        if "Permission denied" in text:
            return KbinfraError(
                f"SSH login as {self.address.user} refused: {lines[-1]}",
                where=self.where,
                fix="pass --identity KEY (or KBINFRA_SSH_IDENTITY) for a key the host accepts",
            )
        return KbinfraError(
            f"cannot connect over SSH: {lines[-1] if lines else 'ssh exited'}",
            where=self.where,
            fix="check the target's host and port in kbinfra.yaml and that sshd listens there",
        )

    def close(self) -> None:
        """Cancel this run's own forwards; end the master when it is not to be shared."""
        if self.control_path is None or not self._started:
            return
        for spec in self._forwards:
            self._control("cancel", "-L", spec)
        self._forwards.clear()
        if self.persist_s == 0:
            self._control("exit")
        self._started = False

    def _control(self, operation: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.argv("-O", operation, *extra), "--", self.address.host],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CONNECT_TIMEOUT_S,
            check=False,
        )

    # ---------------------------------------------------------------- commands
    def run(
        self, remote: str, stdin: bytes = b"", *, ok: Sequence[int] = (0,)
    ) -> tuple[int, bytes]:
        """Run the fixed command ``remote`` with ``stdin``; its exit status and stdout."""
        self.ensure_master()
        try:
            done = subprocess.run(
                self.command_argv(remote),
                input=stdin,
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise KbinfraError(
                f"a command on the host did not finish in {COMMAND_TIMEOUT_S} s",
                where=self.address.url,
            ) from None
        if done.returncode == 255:
            raise self.failure(done.stderr.decode("utf-8", "replace"))
        if done.returncode not in ok:
            message = done.stderr.decode("utf-8", "replace").strip()
            raise KbinfraError(
                f"remote command failed ({done.returncode}): {message}", where=self.address.url
            )
        return done.returncode, done.stdout

    # ---------------------------------------------------------------- forwards
    def forward(self, local: Path, destination: str, *, own: bool) -> None:
        """Forward the socket ``local`` (in the private folder) to ``destination`` on the
        host (a socket path or ``host:port``), on the master. ``own`` forwards are this
        run's: cancelled at close; the others live as long as the master."""
        self.ensure_master()
        if self.control_path is None:
            raise KbinfraError(
                f"the folder for shared SSH connections has too long a path ({self.folder})",
                where=self.where,
                fix="set XDG_RUNTIME_DIR to a short folder of yours (e.g. /run/user/$UID)",
            )
        spec = f"{local}:{destination}"
        done = self._control("forward", "-L", spec)
        if done.returncode != 0:
            raise self.failure(done.stderr.decode("utf-8", "replace"))
        if own:
            self._forwards.append(spec)

    def forwarded_socket(self, suffix: str) -> Path:
        return self.folder / f"{self.name}.{suffix}"


def connect_error(path: Path) -> OSError | None:
    """Why connecting to the unix socket ``path`` fails now, or None when a listener
    answers (``ConnectionRefusedError``: a socket file nothing listens on)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError as error:
            return error
    return None


def connectable(path: Path) -> bool:
    """Whether a listener answers on the unix socket ``path`` now."""
    return path.exists() and connect_error(path) is None
