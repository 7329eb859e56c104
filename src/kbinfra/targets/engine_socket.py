"""The reads a no-op apply makes of this machine's Docker Engine, on its unix socket, without
docker-py.

Importing docker-py (with requests and urllib3) takes about 0.07 s, a sixth of a no-op apply
here, for four GET requests: the engine's info, the stack's containers, the images it names
and its lock. This speaks just enough HTTP/1.1 for those (a GET; a JSON answer sized by
``Content-Length`` or chunked), on one kept-alive connection, and asks exactly what
docker-py's ``APIClient`` asks. Everything that changes the engine goes through docker-py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from kbinfra.errors import KbinfraError

TIMEOUT_S = 60.0
#: No answer to these reads comes near this; a larger one is not the engine.
MAX_BODY_BYTES = 64 * 1024 * 1024
_MAX_LINE = 64 * 1024


class EngineAnswerError(KbinfraError):
    """The engine answered a read with an error status, or not in HTTP."""


def filters_param(filters: Mapping[str, Any]) -> str:
    """The ``filters`` query value as docker-py writes it: each value a list, as JSON."""
    return json.dumps(
        {key: value if isinstance(value, list) else [value] for key, value in filters.items()}
    )


class SocketEngineReads:
    """GET requests to the engine listening on ``socket_path`` (connected on first use)."""

    def __init__(
        self, socket_path: str, *, timeout_s: float = TIMEOUT_S, where: str | None = None
    ) -> None:
        self.socket_path = socket_path
        #: for messages: the socket, or the target it forwards to (``ssh://…``)
        self.where = where or f"unix://{socket_path}"
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- what Engine asks
    def info(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._get_json("/info")
        return answer

    def containers(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        query = {
            "limit": -1,
            "all": 1,
            "size": 0,
            "trunc_cmd": 0,
            "filters": filters_param(filters),
        }
        answer: list[dict[str, Any]] = self._get_json("/containers/json", query)
        return answer

    def images(self, filters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"only_ids": 0, "all": 0}
        if filters:
            query["filters"] = filters_param(filters)
        answer: list[dict[str, Any]] = self._get_json("/images/json", query)
        return answer

    def image_ids(self, refs: Sequence[str]) -> dict[str, str]:
        # One inspect per reference, all sent at once on the one connection (HTTP/1.1
        # pipelining: the engine answers them in order): a millisecond each, where listing
        # images with a reference filter makes the engine size every image it holds (50 to
        # 100 ms on a host with 70 images).
        paths = [f"/images/{quote(ref, safe='/:')}/json" for ref in refs]  # as docker-py
        ids: dict[str, str] = {}
        for ref, path, (status, body) in zip(refs, paths, self._get_many(paths), strict=True):
            if status != 404:
                ids[ref] = str(self._decode(status, body, path)["Id"])
        return ids

    def container_or_none(self, name: str) -> dict[str, Any] | None:
        status, body = self._get(f"/containers/{quote(name, safe='')}/json")
        if status == 404:
            return None
        answer: dict[str, Any] = self._decode(status, body, name)
        return answer

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # ---------------------------------------------------------------- HTTP
    def _get_json(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        if query:
            path = f"{path}?{urlencode(query)}"
        status, body = self._get(path)
        return self._decode(status, body, path)

    def _decode(self, status: int, body: bytes, what: str) -> Any:
        if not 200 <= status < 300:
            message = body.decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError, AttributeError):  # not a JSON object
                message = str(json.loads(message).get("message", message))
            raise EngineAnswerError(
                f"the Docker Engine answered {status} to GET {what}: {message[:300]}",
                where=self.where,
            )
        try:
            return json.loads(body)
        except ValueError:
            raise EngineAnswerError(
                f"the Docker Engine's answer to GET {what} is not JSON",
                where=self.where,
            ) from None

    def _get(self, path: str) -> tuple[int, bytes]:
        return self._get_many([path])[0]

    def _get_many(self, paths: Sequence[str]) -> list[tuple[int, bytes]]:
        """GETs on the kept-alive connection, sent together and answered in order; a
        connection the engine closed while idle is opened again once (a GET can be repeated)."""
        requests = b"".join(
            f"GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: kbinfra\r\n\r\n".encode()
            for path in paths
        )
        with self._lock:
            reused = self._sock is not None
            try:
                return self._exchange(requests, len(paths))
            except (ConnectionError, _ClosedByEngineError):
                self._disconnect()
                if not reused:
                    raise EngineAnswerError(
                        "the Docker Engine closed the connection without an answer",
                        where=self.where,
                    ) from None
            try:
                return self._exchange(requests, len(paths))
            except (ConnectionError, _ClosedByEngineError):
                self._disconnect()
                raise EngineAnswerError(
                    "the Docker Engine closed the connection without an answer",
                    where=self.where,
                ) from None

    def _exchange(self, requests: bytes, count: int) -> list[tuple[int, bytes]]:
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        self._sock.sendall(requests)
        answers: list[tuple[int, bytes]] = []
        for _ in range(count):
            status, headers = self._read_head()
            answers.append((status, self._read_body(headers)))
            if headers.get("connection", "").lower() == "close":
                self._disconnect()
                if len(answers) < count:  # the rest were not answered: ask again
                    raise _ClosedByEngineError
        return answers

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as error:
            sock.close()
            missing = isinstance(error, FileNotFoundError)
            raise KbinfraError(
                f"cannot reach the Docker Engine: {'no socket there' if missing else error}",
                where=self.where,
                fix="start dockerd, or set DOCKER_HOST to the engine's socket",
            ) from None
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _line(self) -> bytes:
        line: bytes = self._reader.readline(_MAX_LINE + 1)
        if not line:
            raise _ClosedByEngineError
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise self._not_http("a line too long")
        return line

    def _read_head(self) -> tuple[int, dict[str, str]]:
        parts = self._line().decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise self._not_http("no HTTP status line")
        headers: dict[str, str] = {}
        while True:
            line = self._line().decode("latin-1").strip()
            if not line:
                return int(parts[1]), headers
            name, sep, value = line.partition(":")
            if not sep:
                raise self._not_http("a header without a colon")
            headers[name.strip().lower()] = value.strip()

    def _read_body(self, headers: Mapping[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size_text = self._line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise self._not_http("a chunk size that is not a number") from None
                if size == 0:
                    while self._line().strip():  # trailers, then the blank line
                        pass
                    return b"".join(chunks)
                total += size
                chunks.append(self._exact(size, total))
                if self._line().strip():
                    raise self._not_http("a chunk longer than its size")
        length_text = headers.get("content-length")
        if length_text is None:
            raise self._not_http("neither Content-Length nor chunked")
        if not length_text.isdigit():
            raise self._not_http("a Content-Length that is not a number")
        return self._exact(int(length_text), int(length_text))

    def _exact(self, size: int, total: int) -> bytes:
        if total > MAX_BODY_BYTES:
            raise self._not_http(f"an answer over {MAX_BODY_BYTES} bytes")
        data: bytes = self._reader.read(size)
        if len(data) != size:
            raise _ClosedByEngineError
        return data

    def _not_http(self, what: str) -> EngineAnswerError:
        self._disconnect()
        return EngineAnswerError(
            f"the Docker Engine's answer is not HTTP as expected: {what}",
            where=self.where,
        )


class _ClosedByEngineError(Exception):
    """The engine closed the connection before a whole answer."""
