"""A stack's containers as an operator reaches them: their logs (read once or followed) and a
command run in one of them (``kbinfra logs``, ``kbinfra exec``).

Both go through the Docker API of the target (the local engine, or one over SSH), so they
work wherever apply works. An exec always attaches a raw socket (docker-py's
``exec_start(socket=True)``): Docker's multiplexed frames when there is no TTY, the raw
terminal stream with ``tty``. Over SSH that socket is a paramiko channel of
``docker system dial-stdio``; locally a Unix socket: :class:`RawStream` hides which.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kbinfra.errors import KbinfraError
from kbinfra.log_lines import LogLine, LogTime, interleave, split_timestamp
from kbinfra.names import LABEL_SERVICE, LABEL_STACK

if TYPE_CHECKING:
    from docker import APIClient

READ_SIZE = 65536
EXIT_CODE_POLL_S = 0.05
EXIT_CODE_WAIT_S = 10.0


def stack_containers(api: APIClient, stack: str) -> dict[str, str]:
    """Service → container name of every container of ``stack`` (running or not)."""
    listed = api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"})
    found = {}
    for raw in listed:
        service = (raw.get("Labels") or {}).get(LABEL_SERVICE)
        name = raw["Names"][0].lstrip("/")
        if service and not name.endswith(".kbinfra-old"):
            found[service] = name
    return found


# ---------------------------------------------------------------- logs
@dataclass(frozen=True)
class LogRequest:
    since: float | None = None
    tail: int | None = None  # None: every line


def read_logs(
    api: APIClient,
    containers: Mapping[str, str],
    request: LogRequest,
    apis: Mapping[str, APIClient] | None = None,
) -> list[LogLine]:
    """Every selected container's lines (``tail`` each, since ``since``), interleaved by
    Docker's timestamps. ``apis``: the engine of a container that ``api`` does not reach
    (on a Swarm, each task's node), by its label."""
    per_service = []
    for service, container in containers.items():
        raw = (
            (apis or {})
            .get(service, api)
            .logs(
                container,
                stdout=True,
                stderr=True,
                timestamps=True,
                tail="all" if request.tail is None else request.tail,
                since=request.since,
            )
        )
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        per_service.append([split_timestamp(service, line) for line in text.splitlines()])
    return interleave(per_service)


class LogFollower:
    """Follow several containers at once: one reading thread each, lines handed to the
    caller's thread in arrival order. A container that stops ends its stream; the follow
    ends when every stream has, or when the caller stops (Ctrl-C)."""

    def __init__(self, api: APIClient, apis: Mapping[str, APIClient] | None = None) -> None:
        self.api = api
        #: the engine of each container ``api`` does not reach, by label (read_logs' too)
        self.apis = dict(apis or {})
        self._lines: queue.Queue[LogLine | str] = queue.Queue()
        self._stopping = threading.Event()
        self._streams: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._running = 0

    def start(
        self, containers: Mapping[str, str], request: LogRequest, after: Mapping[str, LogTime]
    ) -> None:
        """Follow from where :func:`read_logs` ended: lines newer than ``after[service]``,
        or (a container that printed nothing yet) new lines from ``request``'s window.

        Ctrl-C and SIGTERM wait until every thread has started: one interrupted inside
        ``Thread.start`` would leave a thread that ``stop`` cannot wait for."""
        stops = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            self._start_readers(containers, request, after)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _start_readers(
        self, containers: Mapping[str, str], request: LogRequest, after: Mapping[str, LogTime]
    ) -> None:
        for service, container in containers.items():
            last = after.get(service)
            since: float | None
            tail: Literal["all"] | int = "all"
            if last is not None:
                since = max(last.seconds - 1, 1)  # Docker's since is in whole seconds
            else:
                since = request.since
                tail = "all" if request.tail is None or request.tail > 0 else 0
            thread = threading.Thread(
                target=self._read,
                args=(service, container, since, tail, last),
                name=f"logs-{service}",
                daemon=True,
            )
            self._running += 1
            thread.start()
            self._threads.append(thread)

    def _read(
        self,
        service: str,
        container: str,
        since: float | None,
        tail: Literal["all"] | int,
        after: LogTime | None,
    ) -> None:
        pending = b""
        try:
            stream = self.apis.get(service, self.api).logs(
                container, stream=True, follow=True, timestamps=True, tail=tail, since=since
            )
            self._streams.append(stream)
            if self._stopping.is_set():  # stop() came while the engine was being asked
                stream.close()
                return
            for chunk in stream:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = split_timestamp(service, raw.decode("utf-8", "replace"))
                    if after is None or line.time is None or line.time > after:
                        self._lines.put(line)
            if pending:
                self._lines.put(split_timestamp(service, pending.decode("utf-8", "replace")))
        except Exception:
            if not self._stopping.is_set():
                self._lines.put(LogLine(service, None, "(log stream ended with an error)"))
        finally:
            self._lines.put(service)

    def lines(self, poll_s: float = 0.25) -> Iterator[LogLine]:
        """Lines as they come, until every followed container's stream has ended."""
        while self._running:
            try:
                item = self._lines.get(timeout=poll_s)
            except queue.Empty:
                continue
            if isinstance(item, str):
                self._running -= 1
            else:
                yield item

    def stop(self, wait_s: float = 2.0) -> None:
        """End every stream, and wait (bounded) for the reading threads to finish: one
        still in the middle of a call when the process exits prints a traceback on its way
        out (seen when SIGTERM came while a stream was being opened)."""
        self._stopping.set()
        for stream in list(self._streams):
            with suppress(Exception):  # over SSH docker-py cannot cancel: the channel closes
                stream.close()
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------- exec
def running_container(api: APIClient, container: str, service: str, where: str) -> str:
    """The container's id, if it runs; else one line saying how to start it."""
    import docker.errors  # noqa: PLC0415

    try:
        info = api.inspect_container(container)
    except docker.errors.NotFound:
        raise KbinfraError(
            f"{service} has no container on {where}", fix="run `kbinfra apply` first"
        ) from None
    state = info.get("State") or {}
    if not state.get("Running"):
        raise KbinfraError(
            f"{service} is not running on {where} (state: {state.get('Status', 'unknown')})",
            fix=f"see `kbinfra logs {service}`, then `kbinfra apply`",
        )
    container_id: str = info["Id"]
    return container_id


@dataclass(frozen=True)
class ExecRequest:
    command: Sequence[str]
    interactive: bool = False  # stdin forwarded to the command
    tty: bool = False
    user: str | None = None
    workdir: str | None = None
    env: Mapping[str, str] | None = None


class RawStream:
    """The attached exec socket, local (``socket.SocketIO``) or over SSH (a paramiko
    channel): read, write, half-close, and a file descriptor for ``select``."""

    def __init__(self, attached: Any) -> None:
        self._attached = attached
        inner = getattr(attached, "_sock", None)
        self._socket: socket.socket | None = inner if isinstance(inner, socket.socket) else None
        for each in (attached, inner):  # no read timeout: a shell may idle for hours
            if each is not None and hasattr(each, "settimeout"):
                each.settimeout(None)

    def fileno(self) -> int:
        number: int = self._attached.fileno()
        return number

    def recv(self, size: int = READ_SIZE) -> bytes:
        if self._socket is not None:
            return self._socket.recv(size)
        data: bytes = self._attached.recv(size)
        return data

    def send(self, data: bytes) -> None:
        if self._socket is not None:
            self._socket.sendall(data)
        else:
            self._attached.sendall(data)

    def shutdown_write(self) -> None:
        with suppress(OSError):
            if self._socket is not None:
                self._socket.shutdown(socket.SHUT_WR)
            else:
                self._attached.shutdown_write()

    def close(self) -> None:
        with suppress(Exception):
            self._attached.close()


class FrameReader:
    """Docker's multiplexed stream (no TTY): 8-byte headers (stream, size), then data."""

    HEADER = struct.Struct(">BxxxL")

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The complete frames ``data`` finishes: ``(1 stdout | 2 stderr, bytes)``."""
        self._buffer += data
        while len(self._buffer) >= self.HEADER.size:
            stream, size = self.HEADER.unpack_from(self._buffer)
            end = self.HEADER.size + size
            if len(self._buffer) < end:
                return
            yield stream, self._buffer[self.HEADER.size : end]
            self._buffer = self._buffer[end:]


def run_exec(
    api: APIClient,
    container_id: str,
    request: ExecRequest,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
) -> int:
    """Run ``request.command`` in the container, its output streamed to ``stdout_fd`` and
    ``stderr_fd`` (with a TTY: one stream), ``stdin_fd`` forwarded when interactive; the
    command's exit code."""
    created = api.exec_create(
        container_id,
        list(request.command),
        stdout=True,
        stderr=True,
        stdin=request.interactive,
        tty=request.tty,
        user=request.user or "",
        workdir=request.workdir,
        environment=dict(request.env) if request.env else None,
    )
    exec_id = created["Id"]
    stream = RawStream(api.exec_start(exec_id, socket=True, tty=request.tty))
    try:
        if request.tty:
            with _raw_terminal(stdin_fd), _following_size(api, exec_id, stdin_fd):
                _pump(stream, request, stdin_fd, lambda data: _write_all(stdout_fd, data))
        else:
            frames = FrameReader()

            def route(data: bytes) -> None:
                for number, payload in frames.feed(data):
                    _write_all(stderr_fd if number == 2 else stdout_fd, payload)

            _pump(stream, request, stdin_fd, route)
    finally:
        stream.close()
    return _exit_code(api, exec_id)


def _pump(
    stream: RawStream, request: ExecRequest, stdin_fd: int, output: Callable[[bytes], None]
) -> None:
    """Copy the socket to ``output`` until it ends, and ``stdin_fd`` to the socket."""
    watched = [stream.fileno()] + ([stdin_fd] if request.interactive else [])
    while True:
        ready, _, _ = select.select(watched, [], [])
        if stream.fileno() in ready:
            data = stream.recv()
            if not data:
                return
            output(data)
        if stdin_fd in ready:
            data = os.read(stdin_fd, READ_SIZE)
            if data:
                stream.send(data)
            else:  # end of input: the command sees EOF and may still print
                stream.shutdown_write()
                watched.remove(stdin_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _exit_code(api: APIClient, exec_id: str) -> int:
    """The exec's exit code; the stream can end a moment before Docker records it."""
    deadline = time.monotonic() + EXIT_CODE_WAIT_S
    while True:
        info = api.exec_inspect(exec_id)
        code = info.get("ExitCode")
        if not info.get("Running") and isinstance(code, int):
            return code
        if time.monotonic() > deadline:
            return 1
        time.sleep(EXIT_CODE_POLL_S)


@contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the remote shell as typed), restored after."""
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # keys typed before now stay (TCSAFLUSH drops them)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def _following_size(api: APIClient, exec_id: str, fd: int) -> Iterator[None]:
    """The exec's TTY sized as the local terminal, now and on every resize (SIGWINCH)."""

    def resize(*_: object) -> None:
        with suppress(Exception):
            columns, rows = os.get_terminal_size(fd)
            api.exec_resize(exec_id, height=rows, width=columns)

    resize()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)
