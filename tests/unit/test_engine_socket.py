"""The engine reads of a no-op apply over the unix socket, without docker-py: what they ask
(exactly what docker-py asks), how they read an answer, and how they fail."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import docker
import pytest

from kbinfra.errors import KbinfraError
from kbinfra.targets.engine import DockerPyReads, Engine
from kbinfra.targets.engine_socket import MAX_BODY_BYTES, EngineAnswerError, SocketEngineReads

Reply = Callable[[str], bytes]


def _json_reply(status: int, body: object, *, chunked: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
    middle = len(data) // 2
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (data[:middle], data[middle:])
    )
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


class FakeEngine:
    """An HTTP/1.1 server on a unix socket: records each request's path, answers with
    ``reply``, one connection after another (keep-alive); ``close_after`` answers per
    connection before it hangs up."""

    def __init__(self, path: Path, reply: Reply, close_after: int | None = None) -> None:
        self.path = path
        self.reply = reply
        self.close_after = close_after
        self.requests: list[str] = []
        self.connections = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            answered = 0
            while self.close_after is None or answered < self.close_after:
                line = reader.readline()
                if not line:
                    break
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # headers
                target = line.decode().split()[1]
                self.requests.append(target)
                try:
                    conn.sendall(self.reply(target))
                except OSError:
                    break  # the client gave up on a refused answer
                answered += 1

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def engine_at(tmp_path: Path) -> Iterator[Callable[..., FakeEngine]]:
    engines: list[FakeEngine] = []

    def start(reply: Reply, close_after: int | None = None) -> FakeEngine:
        engine = FakeEngine(tmp_path / f"engine{len(engines)}.sock", reply, close_after)
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.close()


def _routes(target: str) -> bytes:
    path = urlsplit(target).path
    if path.endswith("/version"):
        return _json_reply(200, {"ApiVersion": "1.41", "Version": "20.10"})
    if path.endswith("/info"):
        return _json_reply(200, {"NCPU": 2, "MemTotal": 4 << 30})
    if path.endswith("/containers/json"):
        return _json_reply(200, [{"Id": "c1", "Names": ["/kb-redis"]}], chunked=True)
    if path.endswith("/images/json"):
        return _json_reply(200, [{"Id": "sha256:r", "RepoTags": ["redis:7"]}])
    if path.endswith("/images/redis:7/json"):
        return _json_reply(200, {"Id": "sha256:r", "RepoTags": ["redis:7"]})
    if path.endswith("/images/postgres:16/json"):
        return _json_reply(200, {"Id": "sha256:p", "RepoTags": ["postgres:16"]})
    if path.endswith("/containers/kb-lock/json"):
        return _json_reply(200, {"Id": "l1", "Config": {"Labels": {"kbinfra.lock.pid": "7"}}})
    return _json_reply(404, {"message": "No such container"})


def _asked(target: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(target)
    path = parts.path.split("/", 2)[2] if parts.path.startswith("/v1.") else parts.path[1:]
    return path, parse_qs(parts.query)


def _reads_of_a_no_op(reads: SocketEngineReads | DockerPyReads) -> list[object]:
    return [
        reads.info(),
        reads.containers({"label": "kbinfra.stack=kb"}),
        reads.images({"reference": ["postgres:16", "redis:7"]}),
        reads.images(None),
        reads.image_ids(["absent:1", "postgres:16", "redis:7"]),
        reads.container_or_none("kb-lock"),
        reads.container_or_none("kb-absent"),
    ]


def test_the_reads_ask_and_answer_what_docker_py_asks_and_answers(
    engine_at: Callable[..., FakeEngine],
) -> None:
    ours, theirs = engine_at(_routes), engine_at(_routes)
    reads = SocketEngineReads(str(ours.path))
    api = docker.APIClient(base_url=f"unix://{theirs.path}", version="1.41")
    try:
        assert _reads_of_a_no_op(reads) == _reads_of_a_no_op(DockerPyReads(api))
    finally:
        reads.close()
        api.close()
    assert [_asked(t) for t in ours.requests] == [_asked(t) for t in theirs.requests]
    assert ours.connections == 1  # one kept-alive connection for every read


def test_a_no_op_look_at_the_engine_imports_no_docker_py(
    engine_at: Callable[..., FakeEngine],
) -> None:
    fake = engine_at(_routes)
    engine = Engine(None, "kb", connect=_no_client, reads=SocketEngineReads(str(fake.path)))
    assert [c.name for c in engine.stack_containers()] == ["kb-redis"]
    assert engine.present_images(["redis:7", "absent:1"]) == {"redis:7": "sha256:r"}
    assert engine.lock_holder() is None  # kb-lock is the lock of stack "kb-lock", not "kb"


def _no_client() -> docker.DockerClient:
    raise AssertionError("a read made a docker-py client")


def test_a_connection_the_engine_closed_while_idle_is_opened_again(
    engine_at: Callable[..., FakeEngine],
) -> None:
    fake = engine_at(_routes, close_after=1)
    reads = SocketEngineReads(str(fake.path))
    assert reads.info()["NCPU"] == 2
    assert reads.info()["NCPU"] == 2  # the engine hung up after the first answer
    assert fake.connections == 2


def test_an_engine_error_is_one_line_with_the_engine_message(
    engine_at: Callable[..., FakeEngine],
) -> None:
    fake = engine_at(lambda target: _json_reply(500, {"message": "disk full"}))
    with pytest.raises(EngineAnswerError) as caught:
        SocketEngineReads(str(fake.path)).info()
    assert "answered 500 to GET /info: disk full" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "no HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nX-Other: 1\r\n\r\n{}", "neither Content-Length nor chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "Content-Length that is not"),
        (
            f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(),
            "an answer over",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", "is not JSON"),
    ],
)
def test_an_answer_that_is_not_the_engines_is_refused_in_one_line(
    engine_at: Callable[..., FakeEngine], answer: bytes, why: str
) -> None:
    fake = engine_at(lambda target: answer)
    with pytest.raises(EngineAnswerError) as caught:
        SocketEngineReads(str(fake.path)).info()
    assert why in str(caught.value)


def test_no_engine_there_is_the_same_one_line_error_as_docker_py_gives(tmp_path: Path) -> None:
    with pytest.raises(KbinfraError) as caught:
        SocketEngineReads(str(tmp_path / "absent.sock")).info()
    assert str(caught.value).startswith(
        f"unix://{tmp_path / 'absent.sock'}: cannot reach the Docker Engine: no socket there"
    )
    assert "start dockerd" in str(caught.value)


def test_the_images_a_stack_names_are_inspected_together_in_one_round_trip(
    engine_at: Callable[..., FakeEngine],
) -> None:
    """Listing images makes the engine size every image it holds (50-100 ms with 70 images);
    an inspect per reference is a millisecond, and all of them go out before any answer."""
    fake = engine_at(_routes)
    reads = SocketEngineReads(str(fake.path))
    sent: list[bytes] = []
    real_connect = reads._connect

    def connect() -> None:
        real_connect()
        assert reads._sock is not None
        sock, sendall = reads._sock, reads._sock.sendall

        class Recording:
            def __getattr__(self, name: str) -> object:
                return getattr(sock, name)

            def sendall(self, data: bytes) -> None:
                sent.append(data)
                sendall(data)

        reads._sock = Recording()  # type: ignore[assignment]

    reads._connect = connect  # type: ignore[method-assign]
    try:
        ids = reads.image_ids(["absent:1", "postgres:16", "redis:7"])
    finally:
        reads.close()
    assert ids == {"postgres:16": "sha256:p", "redis:7": "sha256:r"}
    assert [_asked(t)[0] for t in fake.requests] == [
        "images/absent:1/json",
        "images/postgres:16/json",
        "images/redis:7/json",
    ]
    assert len(sent) == 1 and sent[0].count(b"GET ") == 3  # one write: pipelined
    assert fake.connections == 1
