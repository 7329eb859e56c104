"""Every container kbinfra creates is locked down, and `kbinfra check` says when one is not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kbinfra.containers import DesiredService
from kbinfra.exports import compose_document
from kbinfra.plan import desired_service
from kbinfra.probing import stack_checks
from kbinfra.probing.probe import CheckFailedError
from kbinfra.stack import Stack
from kbinfra.targets.engine import Engine
from tests.conftest import PROFILES

#: What each image's entrypoint needs back; nothing for those that start as their own user.
ENTRYPOINT_CAPS = {
    "postgres": ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"),
    "redis": ("CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"),
    "nginx": ("CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"),
}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_container_has_a_pids_limit_and_only_its_entrypoints_caps(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    for name, spec in stack.containers.items():
        assert spec.pids_limit is not None and spec.pids_limit >= 32, name
        assert tuple(spec.cap_add) == ENTRYPOINT_CAPS.get(name, ()), name


def test_the_pids_limit_comes_from_the_profile(
    make_stack: Callable[..., Stack], tmp_path: Any
) -> None:
    profile = tmp_path / "few-pids.yaml"
    profile.write_text(
        "extends: minimum\nservices:\n  redis: {cpus: 0.5, memory: 2GB, storage: 10GB, pids: 96}\n"
    )
    stack = make_stack("minimum", {"profile": str(profile)})
    assert stack.containers["redis"].pids_limit == 96
    assert stack.containers["qdrant"].pids_limit == 1024  # the default of every budget


def test_postgres_gets_a_pid_for_every_connection(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"postgres": {"max_connections": 5000}}})
    pids = stack.containers["postgres"].pids_limit
    assert pids is not None and pids > 5000


@pytest.mark.parametrize("profile", PROFILES)
def test_the_compose_export_locks_down_every_service(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    for name, entry in compose_document(stack)["services"].items():
        assert entry["cap_drop"] == ["ALL"], name
        assert entry["security_opt"] == ["no-new-privileges:true"], name
        if name.endswith("-files"):  # the one-shot that copies in the files a service owns
            assert entry["cap_add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER"], name
            assert entry["pids_limit"] == 32
            continue
        assert entry.get("cap_add", []) == list(ENTRYPOINT_CAPS.get(name, ())), name
        assert entry["pids_limit"] == stack.containers[name].pids_limit, name


class RecordingApi:
    """docker-py's APIClient where it matters: host configs built for real, nothing sent."""

    def __init__(self) -> None:
        import docker  # noqa: PLC0415

        self.real = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
        self.created: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        self.created = {"image": image, **kwargs}
        return {"Id": "c0ffee"}


class RecordingClient:
    def __init__(self) -> None:
        self.api = RecordingApi()


def test_the_engine_creates_containers_locked_down(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    by_path = {f.path: f for f in stack.rendered}
    client = RecordingClient()
    engine = Engine(client, stack.spec.name)  # type: ignore[arg-type]
    spec = stack.containers["redis"]
    desired: DesiredService = desired_service(stack.spec.name, spec, "data", by_path, stack.secrets)
    engine.create(desired, stack.secrets)
    host = client.api.created["host_config"]
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] == ["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == spec.pids_limit


LOCKED = {
    "SecurityOpt": ["no-new-privileges:true"],
    "CapDrop": ["ALL"],
    "CapAdd": ["CHOWN"],
    "PidsLimit": 1024,
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, None),
        ({"SecurityOpt": None}, "kb-redis: no no-new-privileges"),
        ({"CapDrop": None}, "kb-redis: capabilities not dropped (cap_drop ALL)"),
        ({"CapAdd": ["CHOWN", "SYS_ADMIN"]}, "kb-redis: adds SYS_ADMIN"),
        ({"PidsLimit": 0}, "kb-redis: no PIDs limit"),
        ({"PidsLimit": None}, "kb-redis: no PIDs limit"),
        ({"Privileged": True}, "kb-redis: privileged"),
    ],
)
def test_hardening_problems(change: dict[str, Any], expected: str | None) -> None:
    problems = stack_checks.hardening_problems("kb-redis", {**LOCKED, **change}, ["CHOWN"])
    assert problems == ([] if expected is None else [expected])


def test_check_names_the_container_that_is_not_locked_down() -> None:
    inspected = [
        {
            "Name": "/kb-redis",
            "Config": {"Labels": {"kbinfra.service": "redis"}},
            "HostConfig": LOCKED,
        },
        {"Name": "/kb-stray", "Config": {"Labels": {}}, "HostConfig": LOCKED},
    ]
    with pytest.raises(CheckFailedError, match=r"^kb-stray: adds CHOWN$"):
        stack_checks.check_hardened(inspected, {"redis": ("CHOWN",)})
    assert (
        stack_checks.check_hardened(inspected[:1] * 2, {"redis": ("CHOWN",)})
        == "2 containers locked down"
    )
