"""LogFollower.stop: every reading thread ends with the follow, also one whose stream was
still being opened when the stop came (it used to run on, and print a traceback when the
process exited under it: `kbinfra logs -f` ended by SIGTERM)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kbinfra.targets.streams import LogFollower, LogRequest


class EndlessStream:
    """A followed container's log stream: lines until it is closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        while not self.closed.wait(0.01):
            pass
        return iter(())

    def close(self) -> None:
        self.closed.set()


class SlowToOpen:
    """An engine whose log calls return only once ``opened`` is set."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.streams: list[EndlessStream] = []

    def logs(self, container: str, **_: Any) -> EndlessStream:
        self.opened.wait(10)
        stream = EndlessStream()
        self.streams.append(stream)
        return stream


def test_stop_ends_a_stream_that_was_still_being_opened() -> None:
    api = SlowToOpen()
    follower = LogFollower(api)  # type: ignore[arg-type]
    follower.start({"redis": "kb-redis"}, LogRequest(since=None, tail=None), {})
    threading.Timer(0.2, api.opened.set).start()  # the engine answers while stop waits
    follower.stop()
    assert len(api.streams) == 1 and api.streams[0].closed.is_set()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name == "logs-redis")


def test_stop_ends_streams_already_flowing() -> None:
    api = SlowToOpen()
    api.opened.set()
    follower = LogFollower(api)  # type: ignore[arg-type]
    follower.start({"redis": "kb-redis", "qdrant": "kb-qdrant"}, LogRequest(None, None), {})
    while len(api.streams) < 2:
        threading.Event().wait(0.01)
    follower.stop()
    assert all(stream.closed.is_set() for stream in api.streams)
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("logs-"))
