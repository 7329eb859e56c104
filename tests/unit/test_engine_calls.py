"""How many Docker API calls the engine makes for the facts a no-op apply needs.

Over SSH every call is a round trip of tens of milliseconds; these pin the count with a
recording stand-in for docker-py's low-level client (the calls, not what the engine does).
"""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from kbinfra.apply import observe, repair
from kbinfra.containers import ObservedContainer
from kbinfra.names import LABEL_STACK
from kbinfra.targets.engine import LOCK_IMAGE, Engine


class RecordingAPI:
    """docker-py's APIClient as far as these calls go, each one recorded."""

    def __init__(
        self, *, tags: dict[str, str] | None = None, volumes: tuple[str, ...] = ()
    ) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.tags = tags or {}  # tag -> image id
        self.volume_names = list(volumes)
        self.lock_image = True

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:
        self.calls.append(("containers", filters))
        return []

    def images(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        self.calls.append(("images", filters))
        patterns = (filters or {}).get("reference")
        by_id: dict[str, list[str]] = {}
        for tag, image_id in self.tags.items():
            if patterns is None or tag in patterns:
                by_id.setdefault(image_id, []).append(tag)
        return [{"Id": i, "RepoTags": t} for i, t in by_id.items()]

    def volumes(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        self.calls.append(("volumes", filters))
        patterns = (filters or {}).get("name") or [""]
        # the engine matches names as regular expressions: a superset of the names asked for
        found = [v for v in self.volume_names if any(re.search(p, v) for p in patterns)]
        return {"Volumes": [{"Name": v} for v in found]}

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        self.calls.append(("create_volume", name))
        self.volume_names.append(name)

    def inspect_image(self, ref: str) -> dict[str, str]:
        self.calls.append(("inspect_image", ref))
        if ref == LOCK_IMAGE and self.lock_image:
            return {"Id": "sha256:lock"}
        if ref in self.tags:
            return {"Id": self.tags[ref]}
        raise docker.errors.ImageNotFound(f"No such image: {ref}")

    def import_image_from_data(self, data: bytes, repository: str, tag: str) -> None:
        self.calls.append(("import_image", f"{repository}:{tag}"))
        self.lock_image = True

    def create_host_config(self, **options: Any) -> dict[str, Any]:
        return options  # docker-py builds it locally: no round trip, not recorded

    def create_container(self, image: str, **options: Any) -> dict[str, str]:
        self.calls.append(("create_container", image))
        if image == LOCK_IMAGE and not self.lock_image:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return {"Id": "lock-id"}

    def remove_container(self, container: str, force: bool = False) -> None:
        self.calls.append(("remove_container", container))


def _engine(api: RecordingAPI) -> Engine:
    return Engine(SimpleNamespace(api=api), "kb")  # type: ignore[arg-type]


def test_observe_inspects_only_the_images_the_stack_names() -> None:
    api = RecordingAPI(
        tags={"postgres:16": "sha256:p", "redis:7": "sha256:r", "unrelated:1": "sha256:u"}
    )
    facts = _engine(api).observe(["docker.io/library/postgres:16", "redis:7", "absent:2"])
    assert facts.images == {"postgres:16": "sha256:p", "redis:7": "sha256:r"}
    assert api.calls == [
        ("containers", {"label": f"{LABEL_STACK}=kb"}),
        ("inspect_image", "absent:2"),
        ("inspect_image", "postgres:16"),
        ("inspect_image", "redis:7"),
    ]


def test_no_image_call_when_no_image_is_asked_for() -> None:
    api = RecordingAPI(tags={"postgres:16": "sha256:p"})
    assert _engine(api).present_images([]) == {}
    assert api.calls == []
    assert _engine(api).present_images() == {"postgres:16": "sha256:p"}  # every image


def test_volumes_are_checked_in_one_call_by_exact_name() -> None:
    api = RecordingAPI(volumes=("kb-data", "kb-data-old", "kb-logs-2"))
    created = _engine(api).ensure_volumes(["kb-data", "kb-logs", "kb-data"])
    assert created == ["kb-logs"]  # kb-logs-2 matches the engine's filter, but is not it
    assert api.calls == [
        ("volumes", {"name": ["kb-data", "kb-logs"]}),
        ("create_volume", "kb-logs"),
    ]
    assert _engine(api).ensure_volumes([]) == []


def test_the_lock_costs_two_calls_once_its_image_exists() -> None:
    api = RecordingAPI()
    with _engine(api).locked() as notes:
        assert notes == []
    assert api.calls == [("create_container", LOCK_IMAGE), ("remove_container", "lock-id")]


def test_the_first_lock_on_an_engine_imports_its_image() -> None:
    api = RecordingAPI()
    api.lock_image = False
    with _engine(api).locked():
        pass
    assert [name for name, _ in api.calls] == [
        "create_container",
        "inspect_image",
        "import_image",
        "create_container",
        "remove_container",
    ]


def test_repair_reuses_containers_already_listed() -> None:
    api = RecordingAPI()
    running = ObservedContainer("1", "kb-redis", "running", "Up", "redis:7", "sha256:r")
    assert repair(_engine(api), containers=(running,)) == []
    assert api.calls == []


def test_the_deployed_hashes_are_read_while_the_engine_is_asked(make_stack: Any) -> None:
    # over SSH the hashes are a command on a channel of their own: no need to wait for it
    hashing = threading.Event()

    class Store:
        def hashes(self) -> dict[str, str]:
            hashing.set()
            return {"a.conf": "0" * 64}

    class API(RecordingAPI):
        seen_hashing: bool | None = None

        def inspect_image(self, ref: str) -> dict[str, str]:
            self.seen_hashing = hashing.wait(timeout=2)
            return super().inspect_image(ref)

    api = API()
    seen = observe(make_stack("minimum"), _engine(api), Store())  # type: ignore[arg-type]
    assert api.seen_hashing is True
    assert seen.facts.deployed_files == {"a.conf": "0" * 64}


def test_a_container_made_apart_from_an_apply_gets_its_files_or_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restore drill's or an upgrade's own container: volumes claimed, created, files put
    in; when the files cannot be put in, no half-made container is left behind."""
    engine = Engine(SimpleNamespace(api=RecordingAPI()), "kb")  # type: ignore[arg-type]
    calls: list[str] = []
    failing = {"put": False}

    def put_files(container_id: str, files: Any) -> None:
        calls.append(f"put {container_id}")
        if failing["put"]:
            raise OSError("no space left on device")

    monkeypatch.setattr(engine, "claim_volumes", lambda desired: calls.append("claim"))
    monkeypatch.setattr(engine, "create", lambda desired, secrets: calls.append("create") or "c1")
    monkeypatch.setattr(engine, "put_files", put_files)
    monkeypatch.setattr(engine, "remove", lambda container_id: calls.append(f"rm {container_id}"))
    desired = SimpleNamespace(files=())
    assert engine.create_with_files(desired, {}) == "c1"  # type: ignore[arg-type]
    assert calls == ["claim", "create", "put c1"]
    calls.clear()
    failing["put"] = True
    with pytest.raises(OSError, match="no space left"):
        engine.create_with_files(desired, {})  # type: ignore[arg-type]
    assert calls == ["claim", "create", "put c1", "rm c1"]
