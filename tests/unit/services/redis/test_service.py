"""Redis: tuning worked by hand, the guide's fixes in the rendered files, and the real server."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.render import render_service
from kbinfra.service import ServiceContext
from kbinfra.services.redis.render_check import check_rendered, local_copy, static_problems
from kbinfra.services.redis.service import (
    ACL_RELOAD_USER,
    SERVICE,
    RedisSettings,
    acl_password_hash,
    redis_tuning,
)
from kbinfra.stack import Stack

PROFILES = ("minimum", "recommended", "large")
Rendered = Callable[..., tuple[ServiceContext, Path]]
EditOnce = Callable[[Path, str, str], int]


def test_tuning_minimum_profile_half_a_cpu_2gb() -> None:
    # maxmemory = 2048 * 70 // 100 = 1433 MB; 0.5 CPUs → 0 whole cores → one I/O thread.
    tune = redis_tuning(cpus=0.5, memory_mb=2048)
    assert (tune.maxmemory_mb, tune.io_threads, tune.tcp_backlog) == (1433, 1, 511)


def test_tuning_recommended_profile_2_cpus_4gb() -> None:
    # maxmemory = 4096 * 70 // 100 = 2867 MB; 2 cores is under redis.conf's 4-core threshold.
    tune = redis_tuning(cpus=2, memory_mb=4096)
    assert (tune.maxmemory_mb, tune.io_threads, tune.tcp_backlog) == (2867, 1, 511)


def test_tuning_large_profile_4_cpus_16gb() -> None:
    # maxmemory = 16384 * 70 // 100 = 11468 MB; io-threads = 4 * 3 // 4 = 3.
    tune = redis_tuning(cpus=4, memory_mb=16384)
    assert (tune.maxmemory_mb, tune.io_threads, tune.tcp_backlog) == (11468, 3, 511)


@pytest.mark.parametrize(("cpus", "threads"), [(3.9, 1), (8, 6), (10, 7), (16, 8), (64, 8)])
def test_io_threads_follow_redis_conf_guidance(cpus: float, threads: int) -> None:
    # redis.conf: 4 cores → 2-3 threads, 8 cores → 6; more than 8 rarely helps.
    assert redis_tuning(cpus=cpus, memory_mb=1024).io_threads == threads


def test_acl_password_hash_is_sha256_hex() -> None:
    assert acl_password_hash("admin") == (
        "#8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"
    )


def test_evicting_policy_is_refused_unless_queues_may_go() -> None:
    with pytest.raises(ValueError, match=r"allkeys-lru .* queued jobs .* noeviction"):
        RedisSettings(maxmemory_policy="allkeys-lru")
    assert RedisSettings(maxmemory_policy="volatile-lru", allow_eviction_of_queues=True)
    assert RedisSettings().maxmemory_policy == "noeviction"


def test_evicting_policy_in_the_stack_file_is_one_clear_error(
    make_stack: Callable[..., Stack],
) -> None:
    with pytest.raises(SpecError, match=r"services\.redis: maxmemory_policy allkeys-lru") as error:
        make_stack("minimum", {"services": {"redis": {"maxmemory_policy": "allkeys-lru"}}})
    assert "kbinfra.yaml:" in error.value.one_line()


def _files(ctx: ServiceContext) -> dict[str, str]:
    return {f.path: f.text for f in render_service(SERVICE, ctx)}


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_conf_fixes_the_guide(make_stack: Callable[..., Stack], profile: str) -> None:
    ctx = make_stack(profile).contexts["redis"]
    conf = _files(ctx)["redis/redis.conf"]
    directives = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert "maxmemory-policy noeviction" in directives
    assert f"maxmemory {SERVICE.tuning(ctx).maxmemory_mb}mb" in directives
    assert "aclfile /usr/local/etc/redis/acl/users.acl" in directives
    assert not [d for d in directives if d.startswith(("rename-command", "requirepass"))]
    assert not [d for d in directives if d.startswith("logfile")]
    assert "allkeys-lru" not in conf
    assert "bind 0.0.0.0 -::*" in directives
    assert "protected-mode yes" in directives
    assert "dir /data" in directives
    assert "databases 16" in directives
    saves = [d for d in directives if d.startswith("save ")]
    assert saves == ["save 900 1", "save 300 10", "save 60 10000"]
    assert {"appendonly yes", "appendfsync everysec"} <= set(directives)
    assert "#   3 celery_broker    Celery message broker" in conf


def test_io_threads_only_rendered_from_4_cores(make_stack: Callable[..., Stack]) -> None:
    assert (
        "io-threads" not in _files(make_stack("recommended").contexts["redis"])["redis/redis.conf"]
    )
    large = _files(make_stack("large").contexts["redis"])["redis/redis.conf"]
    assert "\nio-threads 3\n" in large


def test_acl_file_holds_hashes_only_and_is_private(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("recommended")
    files = {f.path: f for f in render_service(SERVICE, stack.contexts["redis"])}
    acl = files["redis/users.acl"]
    assert (acl.mode, acl.secret) == (0o600, True)
    users = {line.split()[1]: line.split()[2:] for line in acl.text.splitlines()}
    assert set(users) == {"default", "admin", "app", "exporter", "healthcheck", ACL_RELOAD_USER}
    assert users["default"][0] == "off"
    for user, secret in (
        ("admin", "redis_admin_password"),
        ("app", "redis_app_password"),
        ("exporter", "redis_exporter_password"),
    ):
        digest = hashlib.sha256(stack.secrets[secret].encode()).hexdigest()
        assert f"#{digest}" in users[user]
    assert users["app"][-2:] == ["+@all", "-@dangerous"]
    assert "-@all" in users["exporter"] and "+get" not in users["exporter"]
    assert users["healthcheck"] == ["on", "nopass", "resetkeys", "resetchannels", "-@all", "+ping"]
    # apply's reload (ACL LOAD) logs in with no password: it may run that and nothing else
    assert users[ACL_RELOAD_USER] == [
        "on", "nopass", "resetkeys", "resetchannels", "-@all", "+acl|load"
    ]  # fmt: skip
    assert not re.search(r"\s>", acl.text)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_secret_in_any_rendered_file_or_container_field(
    make_stack: Callable[..., Stack], profile: str
) -> None:
    ctx = make_stack(profile).contexts["redis"]
    for path, text in _files(ctx).items():
        assert "TESTSECRET" not in text, path
    spec = SERVICE.container(ctx)
    assert "TESTSECRET" not in repr(spec)
    assert all("TESTSECRET" not in value for value in spec.env.values())


def test_container_gives_the_acl_file_to_the_redis_user(make_stack: Callable[..., Stack]) -> None:
    spec = SERVICE.container(make_stack("minimum").contexts["redis"])
    assert spec.image == "redis:8.2.10"
    assert spec.entrypoint is None  # the image's own entrypoint drops root as upstream does
    assert spec.command == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    owners = {(f.source, f.target): (f.uid, f.gid) for f in spec.files}
    assert owners == {
        ("redis/redis.conf", "/usr/local/etc/redis/redis.conf"): (0, 0),
        # 0600 and read after the drop to uid 999: it must belong to that user.
        ("redis/users.acl", "/usr/local/etc/redis/acl/users.acl"): (999, 999),
    }
    assert [(v.volume, v.target) for v in spec.volumes] == [("kb-redis-data", "/data")]
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 6379, 6379)
    ]
    assert spec.secret_env == {}
    assert (spec.cpus, spec.memory_mb) == (0.5, 2048)


def test_health_check_needs_no_password(make_stack: Callable[..., Stack]) -> None:
    check = SERVICE.container(make_stack().contexts["redis"]).healthcheck
    assert check is not None
    assert check.test == [
        "CMD-SHELL",
        "redis-cli --no-auth-warning --user healthcheck --pass '' ping | grep -qx PONG",
    ]


def test_local_copy_keeps_line_numbers() -> None:
    text = "# c\nport 6379\ndir /data\nmaxmemory 1mb\n"
    copy = local_copy(text, {"dir": '"/tmp/x"', "port": "7000", "bind": "127.0.0.1"})
    assert copy.splitlines() == [
        "# c",
        "port 7000",
        'dir "/tmp/x"',
        "maxmemory 1mb",
        "bind 127.0.0.1",
    ]


def test_lint_catches_the_guides_mistakes_and_plain_passwords(rendered: Rendered) -> None:
    ctx, out = rendered("redis")
    secrets = {s: ctx.secrets[s] for s in SERVICE.secrets}
    assert static_problems(out, secrets) == []
    conf = out / "redis/redis.conf"
    conf.write_text(conf.read_text() + 'rename-command FLUSHALL ""\nrequirepass hunter2\n')
    acl = out / "redis/users.acl"
    acl.write_text(
        acl.read_text() + f"user bob on nopass\nuser eve on >{secrets['redis_app_password']}\n"
    )
    found = {(r.path, r.line, r.detail.split(" ")[0]) for r in static_problems(out, secrets)}
    conf_lines = conf.read_text().splitlines()
    acl_lines = len(acl.read_text().splitlines())
    assert found == {
        ("redis/redis.conf", len(conf_lines) - 1, "rename-command"),
        ("redis/redis.conf", len(conf_lines), "requirepass"),
        ("redis/users.acl", acl_lines - 1, "user"),
        ("redis/users.acl", acl_lines, "plain"),
        ("redis/users.acl", None, "the"),
    }


# --- the real redis-server ------------------------------------------------------------------


@pytest.mark.validators
@pytest.mark.parametrize("profile", PROFILES)
def test_real_server_accepts_every_profile(
    rendered: Rendered, require_tool: Callable[..., str], profile: str
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis", profile)
    results = check_rendered(ctx, out)
    assert [(r.path, r.outcome) for r in results] == [
        ("redis/redis.conf", "ok"),
        ("redis/users.acl", "ok"),
    ], results
    maxmemory = SERVICE.tuning(ctx).maxmemory_mb * 1024 * 1024
    assert f"maxmemory is {maxmemory} bytes" in results[0].detail


@pytest.mark.validators
def test_real_server_reports_a_bad_directive_with_its_line(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    line = edit_once(
        out / "redis/redis.conf", "maxmemory-policy noeviction", "maxmemory-policy lru"
    )
    (result,) = check_rendered(ctx, out)
    assert (result.path, result.outcome, result.line) == ("redis/redis.conf", "failed", line)
    assert "maxmemory-policy lru" in result.detail
    assert "noeviction" in result.detail  # redis-server lists the values it accepts


@pytest.mark.validators
def test_real_server_reports_a_bad_acl_rule_with_its_line(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    edit_once(out / "redis/users.acl", "+@all -@dangerous", "+@all -@dangerus")
    (result,) = check_rendered(ctx, out)
    assert (result.path, result.outcome, result.line) == ("redis/users.acl", "failed", 3)
    assert "-@dangerus" in result.detail


@pytest.mark.validators
def test_real_server_fails_an_app_user_that_may_flush(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    edit_once(out / "redis/users.acl", "+@all -@dangerous", "+@all")
    results = check_rendered(ctx, out)
    details = {r.detail for r in results if r.outcome == "failed"}
    assert {"app may run FLUSHALL", "app may run CONFIG", "app ran FLUSHALL"} <= details
    assert {r.line for r in results if r.outcome == "failed"} == {3}


@pytest.mark.validators
def test_real_server_fails_an_app_user_that_cannot_do_celerys_work(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    edit_once(out / "redis/users.acl", "+@all -@dangerous", "+@all -@dangerous -@scripting")
    details = {r.detail for r in check_rendered(ctx, out)}
    assert {"app may not run EVALSHA 0000000000000000000000000000000000000000"} <= details


@pytest.mark.validators
def test_real_server_fails_a_wrong_password_hash(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    edit_once(
        out / "redis/users.acl",
        acl_password_hash(ctx.secrets["redis_app_password"]),
        acl_password_hash("something else"),
    )
    (result,) = check_rendered(ctx, out)
    assert (result.outcome, result.line) == ("failed", 3)
    assert result.detail.startswith("user app cannot log in: WRONGPASS")


@pytest.mark.validators
def test_real_server_fails_a_maxmemory_that_differs_from_the_tuning(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    require_tool("redis-server")
    ctx, out = rendered("redis")
    line = edit_once(out / "redis/redis.conf", "maxmemory 1433mb", "maxmemory 1433m")
    (result,) = check_rendered(ctx, out)
    assert (result.outcome, result.line) == ("failed", line)
    assert "expected 1502609408" in result.detail


@pytest.mark.validators
def test_real_server_fails_an_acl_file_without_the_default_user(
    rendered: Rendered, edit_once: EditOnce, require_tool: Callable[..., str]
) -> None:
    # Without a ``user default`` line Redis recreates the default user with no password.
    require_tool("redis-server")
    ctx, out = rendered("redis")
    acl = out / "redis/users.acl"
    acl.write_text("".join(acl.read_text().splitlines(keepends=True)[1:]))
    results = check_rendered(ctx, out)
    assert [(r.outcome, r.detail) for r in results] == [
        ("failed", "a client that never logs in may run commands: the default user must be off")
    ]
