"""What the next apply repairs after an interrupted one: the order of its engine calls.

The case that matters: an apply stopped between a new API replica's health gate and nginx's
reload leaves the new replica serving under its name, the old one renamed beside it, and
nginx still on the old one's address. The repair must reload nginx before the old one goes.
(tests/integration/test_app_rollout.py builds that state for real.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from kbinfra.apply import repair
from kbinfra.containers import ObservedContainer
from kbinfra.errors import ApplyFailedError
from kbinfra.names import OLD_SUFFIX
from kbinfra.service import Reload

NGINX_RELOAD = Reload(
    files=("nginx/nginx.conf",),
    test=("nginx", "-t"),
    command=("nginx", "-s", "reload"),
    resolves_servers=True,
)


class RecordingEngine:
    """The engine calls a repair makes, in order; ``reload_code`` answers nginx's test."""

    def __init__(self, reload_code: int = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.reload_code = reload_code
        self.reads = self

    def container_or_none(self, name: str) -> dict[str, Any] | None:
        return {"State": {"Status": "running"}}

    def exec(self, container: str, command: Sequence[str]) -> tuple[int, str]:
        self.calls.append(("exec", " ".join(command)))
        return (self.reload_code, "[emerg] host not found") if command[1] == "-t" else (0, "")

    def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))

    def rename(self, container_id: str, name: str) -> None:
        self.calls.append(("rename", f"{container_id} {name}"))

    def start(self, container_id: str) -> None:
        self.calls.append(("start", container_id))


def container(container_id: str, name: str, status: str = "Up 1 minute (healthy)") -> Any:
    return ObservedContainer(container_id, name, "running", status, "kb-app:2", "sha256:a")


ROLLED = (
    container("old", f"kb-app-1{OLD_SUFFIX}"),
    container("new", "kb-app-1"),
    container("nginx", "kb-nginx"),
)


def test_nginx_is_reloaded_onto_the_serving_replica_before_the_old_one_is_removed() -> None:
    engine = RecordingEngine()
    asked: list[bool] = []

    def balancing() -> dict[str, tuple[str, Reload]]:
        asked.append(True)
        return {"nginx": ("kb-nginx", NGINX_RELOAD)}

    done = repair(engine, containers=ROLLED, balancing=balancing)  # type: ignore[arg-type]
    assert engine.calls == [
        ("exec", "nginx -t"),
        ("exec", "nginx -s reload"),
        ("remove", "old"),
    ]
    assert done == [
        "nginx: reloaded onto the containers an interrupted apply left serving",
        "kb-app-1: removed the previous container left by an interrupted apply",
    ]
    assert asked == [True]


def test_a_failed_reload_removes_nothing_and_says_why() -> None:
    engine = RecordingEngine(reload_code=1)
    with pytest.raises(ApplyFailedError) as failure:
        repair(
            engine,  # type: ignore[arg-type]
            containers=ROLLED,
            balancing=lambda: {"nginx": ("kb-nginx", NGINX_RELOAD)},
        )
    assert "[emerg] host not found" in failure.value.what
    assert "nothing was removed" in str(failure.value.fix)
    assert ("remove", "old") not in engine.calls


def test_an_old_container_put_back_needs_no_reload() -> None:
    # the new one never became healthy: nginx still sends to the old one, which gets its
    # name back; the balancers are not even asked for
    engine = RecordingEngine()
    starting = (
        container("old", f"kb-app-1{OLD_SUFFIX}"),
        container("new", "kb-app-1", "Up 3 seconds (health: starting)"),
    )

    def balancing() -> dict[str, tuple[str, Reload]]:
        raise AssertionError("no old container was dropped: nothing to reload")

    repair(engine, containers=starting, balancing=balancing)  # type: ignore[arg-type]
    assert engine.calls == [("remove", "new"), ("rename", "old kb-app-1"), ("start", "old")]
