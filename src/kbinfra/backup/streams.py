"""Moving bytes between a container and a local file without holding them in memory.

Every transfer goes through the Docker Engine API (locally or over the SSH connection) or a
tunnel to a loopback port, chunk by chunk: ``pg_dump`` output is written to disk as it
arrives, a restore streams the file into ``pg_restore``'s stdin, and files move in and out
of volumes as tar streams. Nothing is copied to a temporary file on the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError

if TYPE_CHECKING:
    from docker import APIClient

    from kbinfra.targets.base import Target

CHUNK = 1024 * 1024
TAIL = 16 * 1024  # bytes of stdout/stderr kept for messages
EMPTY_IMAGE = "kbinfra-lock:1"  # the file-less image apply makes for its lock

Sink = Callable[[bytes], None]


# ---------------------------------------------------------------- local files
class HashingFile:
    """A file written chunk by chunk (mode 0600 from the first byte) while it is hashed."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._digest = hashlib.sha256()
        self.size = 0
        self._on_bytes = on_bytes

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._digest.update(chunk)
        self.size += len(chunk)
        if self._on_bytes is not None:
            self._on_bytes(len(chunk))

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def file_chunks(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            if on_bytes is not None:
                on_bytes(len(block))
            yield block


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- docker exec
@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes  # the tail only when the output went to a sink
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()

    def last_error_line(self) -> str:
        lines = [line for line in self.error_text.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.exit_code}"


class _Tail:
    def __init__(self, limit: int = TAIL) -> None:
        self.data = bytearray()
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]


def _exec_create(
    api: APIClient,
    container: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    user: str,
    stdin: bool = False,
) -> str:
    # Secrets go in the exec's environment, never on its command line (visible in `ps`).
    created = api.exec_create(
        container,
        list(command),
        stdout=True,
        stderr=True,
        stdin=stdin,
        environment=dict(env or {}),
        user=user,
    )
    exec_id: str = created["Id"]
    return exec_id


def _exit_code(api: APIClient, exec_id: str) -> int:
    code = api.exec_inspect(exec_id).get("ExitCode")
    return int(code) if code is not None else -1


def exec_run(
    api: APIClient,
    container: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    user: str = "",
    sink: Sink | None = None,
) -> ExecResult:
    """Run ``command`` in the container; stdout to ``sink`` chunk by chunk (or kept whole)."""
    exec_id = _exec_create(api, container, command, env=env, user=user)
    whole = bytearray()
    err = _Tail()
    for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
        if stdout:
            if sink is not None:
                sink(stdout)
            else:
                whole += stdout
        if stderr:
            err.add(stderr)
    return ExecResult(_exit_code(api, exec_id), bytes(whole), bytes(err.data))


def _raw_socket(hijacked: Any) -> Any:
    """The connection under docker-py's hijacked exec: a socket, or a paramiko channel."""
    return getattr(hijacked, "_sock", hijacked)


def _close_write(sock: Any) -> None:
    if hasattr(sock, "shutdown_write"):  # paramiko.Channel (SSH targets)
        sock.shutdown_write()
    else:
        sock.shutdown(socket.SHUT_WR)


def _read_frames(sock: Any, out: _Tail, err: _Tail) -> None:
    """Demultiplex Docker's stream framing (8-byte header per frame) until EOF."""
    buffer = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 8:
            kind, size = struct.unpack(">BxxxL", bytes(buffer[:8]))
            if len(buffer) < 8 + size:
                break
            payload = bytes(buffer[8 : 8 + size])
            del buffer[: 8 + size]
            (err if kind == 2 else out).add(payload)


def exec_with_stdin(
    api: APIClient,
    container: str,
    command: Sequence[str],
    source: Iterator[bytes],
    *,
    env: Mapping[str, str] | None = None,
    user: str = "",
) -> ExecResult:
    """Run ``command`` with ``source`` streamed into its stdin (EOF when it ends).

    The exec's connection is hijacked (``exec_start(socket=True)``); the input is written to
    it and its write half closed, which the engine turns into EOF on stdin. Over SSH the
    connection is a channel of ``docker system dial-stdio``, which forwards the half-close.
    Output is read on a thread meanwhile, so a chatty command can never block on a full pipe.
    """
    exec_id = _exec_create(api, container, command, env=env, user=user, stdin=True)
    sock = _raw_socket(api.exec_start(exec_id, socket=True))
    sock.settimeout(None)
    out, err = _Tail(), _Tail()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            _read_frames(sock, out, err)
        except (OSError, EOFError) as error:
            failure.append(error)

    reader = threading.Thread(target=read, name="kbinfra-exec-output", daemon=True)
    reader.start()
    broken = False
    try:
        for chunk in source:
            try:
                sock.sendall(chunk)
            except OSError:
                broken = True  # the command exited early; its exit code tells why
                break
        with contextlib.suppress(OSError):
            _close_write(sock)
        reader.join()
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    code = _exit_code(api, exec_id)
    if broken and code == 0:
        code = -1
    return ExecResult(code, bytes(out.data), bytes(err.data))


# ---------------------------------------------------------------- archives
class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (for ``tarfile`` stream mode)."""

    def __init__(self, chunks: Iterator[bytes], on_bytes: Callable[[int], None] | None = None):
        self._chunks = chunks
        self._pending = b""
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            if self._on_bytes is not None:
                self._on_bytes(len(self._pending))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def archive_file_to(api: APIClient, container: str, path: str, sink: Sink) -> dict[str, Any]:
    """Stream one file out of a container (``get_archive``) into ``sink``; its tar stat."""
    chunks, stat = api.get_archive(container, path, chunk_size=CHUNK)
    reader = io.BufferedReader(ChunkReader(iter(chunks)), buffer_size=CHUNK)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            while block := handle.read(CHUNK):
                sink(block)
            break
        else:
            raise KbinfraError(f"{path} in the container is not a regular file")
    for _ in chunks:  # drain the response so the connection can be reused
        pass
    result: dict[str, Any] = stat
    return result


def archive_to(api: APIClient, container: str, path: str, sink: Sink) -> None:
    """Stream a whole directory out of a container as the engine's tar, unchanged."""
    chunks, _ = api.get_archive(container, path, chunk_size=CHUNK)
    for chunk in chunks:
        sink(chunk)


def tar_of_file(
    name: str,
    path: Path,
    *,
    uid: int,
    gid: int,
    mode: int = 0o600,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """A one-file tar stream read from ``path`` chunk by chunk (for ``put_archive``)."""
    size = path.stat().st_size
    info = tarfile.TarInfo(name)
    info.size = size
    info.uid, info.gid, info.mode = uid, gid, mode
    info.mtime = int(path.stat().st_mtime)
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    sent = 0
    for block in file_chunks(path, on_bytes):
        sent += len(block)
        yield block
    if sent != size:
        raise KbinfraError(f"{path} changed size while it was sent", where=str(path))
    remainder = size % tarfile.BLOCKSIZE
    if remainder:
        yield b"\0" * (tarfile.BLOCKSIZE - remainder)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def put_stream(api: APIClient, container: str, directory: str, data: Iterator[bytes]) -> None:
    """Extract a tar stream into ``directory`` of the container (sent chunked, not buffered)."""
    if not api.put_archive(container, directory, data):
        raise KbinfraError(f"the engine refused to extract into {directory}", where=container)


# ---------------------------------------------------------------- helpers on the engine
def ensure_empty_image(api: APIClient) -> str:
    """The file-less image apply uses for its lock: a container of it is never started,
    only created so that a volume can be mounted for ``get_archive``/``put_archive``."""
    import docker.errors  # noqa: PLC0415

    try:
        api.inspect_image(EMPTY_IMAGE)  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        repo, tag = EMPTY_IMAGE.split(":")
        api.import_image_from_data(bytes(1024), repository=repo, tag=tag)
    return EMPTY_IMAGE


@contextlib.contextmanager
def reach(target: Target, api: APIClient, container: str, port: int) -> Iterator[tuple[str, int]]:
    """A local ``(host, port)`` that reaches ``port`` of a running container.

    The stack's services publish on the target's loopback: the tunnel goes there. A drill's
    throwaway containers publish nothing: the tunnel goes to the container's address on its
    network, which the target host routes to (Docker's bridge networks on Linux).
    """
    info = api.inspect_container(container)
    settings = info.get("NetworkSettings") or {}
    for binding in (settings.get("Ports") or {}).get(f"{port}/tcp") or ():
        if binding.get("HostPort"):
            host = binding.get("HostIp") or "127.0.0.1"
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            with target.tunnel(int(binding["HostPort"]), host) as address:
                yield address
            return
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            with target.tunnel(port, network["IPAddress"]) as address:
                yield address
            return
    raise KbinfraError(
        f"port {port} of the container is neither published nor on a network",
        where=info.get("Name", container).lstrip("/"),
        fix="run `kbinfra apply` so the service runs as the stack file describes",
    )
