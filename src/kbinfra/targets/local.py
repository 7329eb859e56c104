"""The Docker Engine of this machine (``DOCKER_HOST`` honoured) and a local folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError
from kbinfra.stack_folder import DEPLOYED_DIR
from kbinfra.targets.base import RECORDS_DIR, TEMP_PREFIX, FileStore, Target

if TYPE_CHECKING:
    from docker import DockerClient

    from kbinfra.targets.engine import EngineReads
    from kbinfra.targets.engine_socket import SocketEngineReads

DEFAULT_ENGINE_ADDRESS = "unix:///var/run/docker.sock"


class LocalFileStore(FileStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise ValueError(f"{path!r} is outside the stack folder")
        return full

    def hashes(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        if not self.root.is_dir():
            return {}
        if paths is None:
            candidates = sorted(
                p.relative_to(self.root).as_posix()
                for p in self.root.rglob("*")
                if p.is_file() and not p.name.startswith(TEMP_PREFIX)
            )
            candidates = [p for p in candidates if not p.startswith(f"{RECORDS_DIR}/")]
        else:
            candidates = list(paths)
        result = {}
        for path in candidates:
            try:
                result[path] = hashlib.sha256(self._path(path).read_bytes()).hexdigest()
            except FileNotFoundError:
                continue
        return result

    def modes(self, paths: Iterable[str]) -> dict[str, int]:
        result = {}
        for path in paths:
            try:
                result[path] = stat.S_IMODE(self._path(path).stat().st_mode)
            except FileNotFoundError:
                continue
        return result

    def read(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, path: str, data: bytes, mode: int) -> None:
        target = self._path(path)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f"{TEMP_PREFIX}{target.name}-{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, mode)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def remove(self, path: str) -> None:
        target = self._path(path)
        target.unlink(missing_ok=True)
        root = self.root.resolve()
        for parent in target.parents:
            if parent == root or not parent.is_relative_to(root):
                break
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break

    def remove_folder_if_empty(self) -> None:
        with contextlib.suppress(OSError):  # not empty, or already gone
            self.root.rmdir()


class LocalTarget(Target):
    """The local engine; the deployed copy lives in ``<stack_dir>/.kbinfra/deployed``."""

    def __init__(self, stack_dir: Path) -> None:
        self.name = "local"
        self.stack_dir = stack_dir
        self._client: DockerClient | None = None
        self._socket_reads: SocketEngineReads | None = None

    def docker_client(self) -> DockerClient:
        if self._client is None:
            self._client = local_engine()
        return self._client

    def engine_reads(self) -> EngineReads:
        """On the engine's unix socket, without docker-py (a no-op apply then never imports
        it); through docker-py once a client is made, or for a tcp:// engine."""
        address = engine_address()
        if self._client is not None or not address.startswith("unix://"):
            return super().engine_reads()
        if self._socket_reads is None:
            from kbinfra.targets.engine_socket import SocketEngineReads  # noqa: PLC0415

            self._socket_reads = SocketEngineReads(address.removeprefix("unix://"))
        return self._socket_reads

    def file_store(self, stack: str) -> FileStore:
        return LocalFileStore(self.stack_dir / DEPLOYED_DIR)

    def close(self) -> None:
        if self._socket_reads is not None:
            self._socket_reads.close()
            self._socket_reads = None
        if self._client is not None:
            self._client.close()
            self._client = None


def import_docker(address: str) -> ModuleType:
    """docker-py, without its SSH transport unless ``address`` is an ``ssh://`` one.

    ``import docker`` imports paramiko (about 0.2 s, a fifth of a no-op apply) for an SSH
    support a socket never uses. With ``docker.transport.sshconn`` marked absent while docker
    loads, docker-py skips it as it does when paramiko is not installed; the mark is taken
    away afterwards, so the SSH target can still import that module itself.
    """
    if "docker" in sys.modules or address.startswith("ssh://"):
        import docker  # noqa: PLC0415

        return docker
    blocked = "docker.transport.sshconn"
    sys.modules[blocked] = None  # type: ignore[assignment]
    try:
        import docker  # noqa: PLC0415
    finally:
        if sys.modules.get(blocked, ...) is None:
            del sys.modules[blocked]
    return docker


def engine_address() -> str:
    """This machine's Docker Engine: ``DOCKER_HOST``, or the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE_ADDRESS


def local_engine() -> DockerClient:
    """A client of this machine's Docker Engine (``DOCKER_HOST`` or the default socket),
    answering; an engine that is missing or refuses is one line, exit 2."""
    address = engine_address()
    # heavy; only commands that talk to an engine need it
    docker = import_docker(address)
    try:
        # asks the engine its API version: that answer is the ping
        client: DockerClient = docker.from_env()
    except docker.errors.DockerException as error:
        socket = address.removeprefix("unix://") if address.startswith("unix://") else None
        reason = "no socket there" if socket and not Path(socket).exists() else str(error)
        raise KbinfraError(
            f"cannot reach the Docker Engine: {reason}",
            where=address,
            fix="start dockerd, or set DOCKER_HOST to the engine's socket",
        ) from None
    return client
