"""Every container kbinfra creates is locked down, and `kbinfra check` says when one is not."""

from __future__ import annotations

import dataclasses
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
    assert host.get("CapAdd") is None  # it starts as redis: nothing to chown or drop
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
    host = {**LOCKED, "ReadonlyRootfs": True, **change}
    allowed = stack_checks.AllowedHardening(caps=("CHOWN",))
    problems = stack_checks.hardening_problems("kb-redis", host, allowed, "999")
    assert problems == ([] if expected is None else [expected])


def test_check_names_the_container_that_is_not_locked_down() -> None:
    inspected = [
        {
            "Name": "/kb-redis",
            "Config": {"Labels": {"kbinfra.service": "redis"}, "User": "999"},
            "HostConfig": {**LOCKED, "ReadonlyRootfs": True},
        },
        {
            "Name": "/kb-stray",
            "Config": {"Labels": {}, "User": "999"},
            "HostConfig": {**LOCKED, "ReadonlyRootfs": True},
        },
    ]
    allowed = {"redis": stack_checks.AllowedHardening(caps=("CHOWN",))}
    with pytest.raises(CheckFailedError, match=r"^kb-stray: adds CHOWN$"):
        stack_checks.check_hardened(inspected, allowed)
    assert stack_checks.check_hardened(inspected[:1] * 2, allowed) == "2 containers locked down"


# ---------------------------------------------------------------- read-only roots, users
#: The services whose container starts as root, and why (their folders say it): the
#: entrypoint chowns the data and drops to the service's user, or the image runs as root.
STARTS_AS_ROOT = {"nginx", "qdrant"}


def _anonymous_volumes(host: dict[str, Any]) -> set[str]:
    return {m["Target"] for m in host["Mounts"] if m["Type"] == "volume" and not m["Source"]}


def _created_host_config(stack: Stack, name: str) -> tuple[dict[str, Any], RecordingClient]:
    by_path = {f.path: f for f in stack.rendered}
    client = RecordingClient()
    engine = Engine(client, stack.spec.name)  # type: ignore[arg-type]
    spec = stack.containers[name]
    desired = desired_service(stack.spec.name, spec, "data", by_path, stack.secrets)
    engine.create(desired, stack.secrets)
    host: dict[str, Any] = client.api.created["host_config"]
    return host, client


@pytest.mark.parametrize("profile", PROFILES)
def test_every_service_gets_a_read_only_root_and_its_writable_folders(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    for name, spec in stack.containers.items():
        assert not spec.writable_root_reason, name  # every image here allows it
        host, _ = _created_host_config(stack, name)
        assert host["ReadonlyRootfs"] is True, name
        tmpfs = host.get("Tmpfs") or {}
        assert sorted(tmpfs) == sorted(t.target for t in spec.tmpfs), name
        for options in tmpfs.values():
            assert "noexec" in options and "nosuid" in options and "size=" in options, name
        anonymous = {
            m["Target"] for m in host["Mounts"] if m["Type"] == "volume" and not m["Source"]
        }
        assert set(spec.scratch) <= anonymous, name
    assert {"/var/run/postgresql", "/tmp"} <= {t.target for t in stack.containers["postgres"].tmpfs}
    assert "/run" in {t.target for t in stack.containers["nginx"].tmpfs}


@pytest.mark.parametrize("profile", PROFILES)
def test_only_the_named_exceptions_start_as_root(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    reasons = {name: spec.root_user_reason for name, spec in stack.containers.items()}
    assert {name for name, reason in reasons.items() if reason} == STARTS_AS_ROOT & set(reasons)
    for name in STARTS_AS_ROOT & set(reasons):
        assert len(reasons[name]) > 40, name  # a reason, not a flag


def test_files_go_to_volumes_of_the_container_alone_never_into_its_root(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    host, client = _created_host_config(stack, "nginx")
    anonymous = _anonymous_volumes(host)
    assert "/etc/nginx" in anonymous  # nginx.conf, kbinfra/site.conf, tls/*.pem under it
    assert not {"/etc/nginx/kbinfra", "/etc/nginx/tls"} & anonymous

    sent: list[tuple[str, list[tuple[str, int, int, int]]]] = []

    def put_archive(container: str, path: str, data: bytes) -> bool:
        import io  # noqa: PLC0415
        import tarfile  # noqa: PLC0415

        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            sent.append((path, [(m.name, m.mode, m.uid, m.gid) for m in tar.getmembers()]))
        return True

    client.api.put_archive = put_archive  # type: ignore[method-assign]
    by_path = {f.path: f for f in stack.rendered}
    engine = Engine(client, stack.spec.name)  # type: ignore[arg-type]
    for name in ("nginx", "postgres", "redis"):
        desired = desired_service(
            stack.spec.name, stack.containers[name], "data", by_path, stack.secrets
        )
        engine.put_files("c0ffee", desired.files)
    folders = [path for path, _ in sent]
    assert "/" not in folders
    assert folders == [
        "/etc/nginx",
        "/docker-entrypoint-initdb.d",
        "/etc/postgresql",
        "/usr/local/etc/redis",
    ]
    members = dict(sent)
    assert ("tls/key.pem", 0o600, 0, 0) in members["/etc/nginx"]
    assert ("acl/users.acl", 0o600, 999, 999) in members["/usr/local/etc/redis"]


def test_config_folders_keep_the_top_ones_and_refuse_the_root() -> None:
    from kbinfra.containers import config_folders  # noqa: PLC0415

    assert config_folders(["/etc/a/x", "/etc/a/b/y", "/etc/ab/z", "/srv/q"]) == [
        "/etc/a",
        "/etc/ab",
        "/srv",
    ]
    assert config_folders([]) == []
    with pytest.raises(ValueError, match="a folder of its own"):
        config_folders(["/config.yml"])


def test_a_read_only_root_is_part_of_the_config_hash(make_stack: Callable[..., Stack]) -> None:
    from kbinfra.plan import config_parts  # noqa: PLC0415

    stack = make_stack("minimum")
    spec = stack.containers["redis"]
    before = config_parts(spec, (), stack.secrets)["hardening"]
    assert config_parts(spec._replace(writable_root_reason="x"), (), {})["hardening"] != before
    assert config_parts(spec._replace(tmpfs=()), (), {})["hardening"] != before


@pytest.mark.parametrize("profile", PROFILES)
def test_the_compose_export_runs_read_only_with_the_same_tmpfs(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(profile)
    for name, entry in compose_document(stack)["services"].items():
        assert entry["read_only"] is True, name
        if name.endswith("-files"):
            continue
        spec = stack.containers[name]
        assert entry.get("tmpfs", []) == [f"{t.target}:{t.docker_options()}" for t in spec.tmpfs]
        assert set(spec.scratch) <= set(entry.get("volumes", [])), name


ALLOWED = stack_checks.AllowedHardening(caps=("CHOWN",))


@pytest.mark.parametrize(
    ("host", "user", "allowed", "expected"),
    [
        ({"ReadonlyRootfs": False}, "nobody", ALLOWED, ["root file system writable (read_only)"]),
        (
            {"ReadonlyRootfs": None},
            "65534:65534",
            ALLOWED,
            ["root file system writable (read_only)"],
        ),
        ({"ReadonlyRootfs": False}, "1000", dataclasses.replace(ALLOWED, writable_root=True), []),
        ({}, "", ALLOWED, ["runs as root"]),
        ({}, "root", ALLOWED, ["runs as root"]),
        ({}, "0:0", ALLOWED, ["runs as root"]),
        ({}, "", dataclasses.replace(ALLOWED, root_user=True), []),
        ({}, "999", ALLOWED, []),
    ],
)
def test_hardening_problems_of_the_root_file_system_and_user(
    host: dict[str, Any], user: str, allowed: Any, expected: list[str]
) -> None:
    locked = {**LOCKED, "ReadonlyRootfs": True, **host}
    problems = stack_checks.hardening_problems("kb-x", locked, allowed, user)
    assert problems == [f"kb-x: {problem}" for problem in expected]


def test_check_accepts_only_the_exceptions_a_service_names(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    allowed = {n: stack_checks.AllowedHardening.of(s) for n, s in stack.containers.items()}
    host = {**LOCKED, "CapAdd": None, "ReadonlyRootfs": True}
    inspected = [
        {"Name": "/kb-nginx", "Config": {"Labels": {"kbinfra.service": "nginx"}, "User": ""}},
        {"Name": "/kb-redis", "Config": {"Labels": {"kbinfra.service": "redis"}, "User": "0"}},
        {"Name": "/kb-prom", "Config": {"Labels": {"kbinfra.service": "prometheus"}, "User": ""}},
        {"Name": "/kb-stray", "Config": {"Labels": {}, "User": "nobody"}},
    ]
    for info in inspected:
        info["HostConfig"] = host
    inspected[0]["HostConfig"] = {**host, "CapAdd": ["CHOWN", "NET_BIND_SERVICE"]}
    inspected[3]["HostConfig"] = {**host, "ReadonlyRootfs": False}
    with pytest.raises(CheckFailedError) as failed:
        stack_checks.check_hardened(inspected, allowed)
    assert str(failed.value) == (
        "kb-redis: runs as root; kb-prom: runs as root; "
        "kb-stray: root file system writable (read_only)"
    )


# ---------------------------------------------------------------- helper containers
class HelperApi(RecordingApi):
    """Also answers what the helpers ask before they create their container."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []

    def inspect_volume(self, name: str) -> dict[str, str]:
        return {"Name": name}

    def inspect_image(self, ref: str) -> dict[str, str]:
        return {"Id": "sha256:empty"}

    def remove_container(self, container: str, **kwargs: Any) -> None:
        self.removed.append(container)


def _assert_locked_down(created: dict[str, Any], *, read_only: bool = True) -> None:
    host = created["host_config"]
    assert host["CapDrop"] == ["ALL"]
    assert host.get("CapAdd") is None
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert 0 < host["PidsLimit"] <= 64
    assert bool(host.get("ReadonlyRootfs")) is read_only
    assert host["NetworkMode"] == "none"


def test_the_volume_backup_helper_is_locked_down() -> None:
    from kbinfra.backup.volumes import _mounted  # noqa: PLC0415

    api = HelperApi()
    with _mounted(api, "kb-uploads", "backup") as helper:  # type: ignore[arg-type]
        assert helper == "c0ffee"
    # Never started; a restore extracts at "/" (its tars' one top folder is the mount).
    _assert_locked_down(api.created, read_only=False)
    assert api.removed == ["c0ffee"]


def test_the_lock_container_is_locked_down() -> None:
    client = RecordingClient()
    client.api = HelperApi()
    engine = Engine(client, "kb")  # type: ignore[arg-type]
    with engine.locked():
        pass
    _assert_locked_down(client.api.created)


def test_the_image_builders_probe_container_is_locked_down() -> None:
    from kbinfra.images import build  # noqa: PLC0415

    seen: dict[str, Any] = {}

    class Containers:
        def run(self, image: str, command: list[str], **kwargs: Any) -> bytes:
            seen.update(kwargs)
            return b'{"python": "3.11", "machine": "x86_64", "libc": ["glibc", "2.36"]}'

    class Client:
        containers = Containers()

    build.probe_platform(Client(), "base:1")  # type: ignore[arg-type]
    assert seen["cap_drop"] == ["ALL"]
    assert seen["security_opt"] == ["no-new-privileges:true"]
    assert seen["read_only"] is True
    assert seen["network_mode"] == "none"
    assert 0 < seen["pids_limit"] <= 64


# ---------------------------------------------------------------- non-root from the start
def test_postgres_and_redis_start_as_their_user_owning_their_volumes(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    for name in ("postgres", "redis"):
        spec = stack.containers[name]
        assert spec.user == spec.data_owner == "999:999", name
        assert tuple(spec.cap_add) == (), name
        assert not spec.root_user_reason, name
        host, client = _created_host_config(stack, name)
        assert client.api.created["user"] == "999:999"
        assert host.get("CapAdd") is None
    socket_folder = stack.containers["postgres"].tmpfs[0]
    assert socket_folder.target == "/var/run/postgresql"
    assert "uid=999,gid=999" in socket_folder.docker_options()


class ClaimApi(HelperApi):
    def __init__(self, exit_code: int = 0) -> None:
        super().__init__()
        self.exit_code = exit_code
        self.started: list[str] = []

    def start(self, container: str) -> None:
        self.started.append(container)

    def wait(self, container: str, timeout: int | None = None) -> dict[str, int]:
        return {"StatusCode": self.exit_code}

    def logs(self, container: str, **kwargs: Any) -> bytes:
        return b"chown: changing ownership of '/data/x': Operation not permitted\n"


def _claim(stack: Stack, name: str, api: ClaimApi) -> bool:
    by_path = {f.path: f for f in stack.rendered}
    client = RecordingClient()
    client.api = api
    engine = Engine(client, stack.spec.name)  # type: ignore[arg-type]
    desired = desired_service(stack.spec.name, stack.containers[name], "data", by_path, {})
    return engine.claim_volumes(desired)


def test_a_one_shot_locked_down_container_hands_the_data_volumes_to_the_service_user(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    api = ClaimApi()
    assert _claim(stack, "postgres", api) is True
    created = api.created
    assert created["user"] == "0:0"
    assert [*created["entrypoint"], *created["command"]] == [
        "find", "/var/lib/postgresql/data",
        "(", "!", "-user", "999", "-o", "!", "-group", "999", ")",
        "-exec", "chown", "-h", "999:999", "{}", "+",
    ]  # fmt: skip
    host = created["host_config"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CHOWN", "DAC_READ_SEARCH"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none"
    assert 0 < host["PidsLimit"] <= 64
    assert [m["Source"] for m in host["Mounts"]] == ["kb-postgres-data"]
    assert api.started == ["c0ffee"] and api.removed[-1] == "c0ffee"

    nothing = ClaimApi()
    assert _claim(stack, "qdrant", nothing) is False  # no data_owner: it needs no claim
    assert nothing.created == {}


def test_a_failed_claim_stops_the_service_in_one_line(make_stack: Callable[..., Stack]) -> None:
    from kbinfra.errors import KbinfraError  # noqa: PLC0415

    stack = make_stack("minimum")
    api = ClaimApi(exit_code=1)
    with pytest.raises(KbinfraError, match=r"could not give the data volumes of redis to 999:999"):
        _claim(stack, "redis", api)
    assert api.removed[-1] == "c0ffee"
