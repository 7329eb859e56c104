"""Redis: the app user answers, nobody else gets in, the app cannot run dangerous commands,
and the running memory settings are the rendered ones. Bench: SET/GET with and without
pipelining, by kbinfra's client and by ``redis-benchmark`` inside the container.

Dangerous commands are never executed to find out whether they are allowed: ``ACL DRYRUN``
(Redis 7) answers for the app user without running them, so a weakened server is not flushed
by its own check.
"""

from __future__ import annotations

import csv
import io
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    LatencyStats,
    Operation,
    ProbeContext,
    Threshold,
    failed_bench,
    is_bench_name,
    latency_stats,
    require,
    require_same,
    run_load,
    uninterrupted,
)
from kbinfra.services.redis.service import ACL_PATH, MIB, PASSWORD_USERS, PORT, RedisTune

if TYPE_CHECKING:
    from redis import Redis

#: What the app user must never run, asked with ACL DRYRUN (never executed).
APP_DENIED = (
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN",),
    ("KEYS", "*"),
)
#: The guide's databases 0-7 hold app data; benchmarks write only here.
BENCH_DB = 15
BENCH_TTL_S = 3600  # bench keys expire even if every cleanup failed
VALUE = "x" * 64
KEYSPACE = 10_000
PIPELINE_DEPTH = 32
CONCURRENCY = 4
#: Sanity floors for one fully available core (Redis runs commands on one thread); scaled by
#: the CPUs the profile gives Redis when that is less than one. A healthy Redis does tens of
#: thousands of unpipelined and hundreds of thousands of pipelined commands per second per core.
FLOOR_PER_CORE = {"plain": 2_000.0, "pipelined": 20_000.0}

ADMIN = "admin"
APP = "app"
CHECK_KEY = "kbinfra_check_probe"


def connect(
    address: tuple[str, int],
    user: str | None,
    password: str | None,
    *,
    db: int = 0,
    timeout: float = 10,
) -> Redis:
    """A redis-py client speaking RESP2 (HELLO 3 would need a login first), never retrying."""
    import redis  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    host, port = address
    return redis.Redis(
        host=host,
        port=port,
        username=user,
        password=password,
        db=db,
        protocol=2,
        # A refused login must fail the check at once: redis-py retries an AuthenticationError
        # (a ConnectionError) three times with backoff by default.
        retry=Retry(NoBackoff(), 0),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )


def run_command(client: Any, *args: Any) -> Any:
    """One raw command (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)


def expected_config(tune: RedisTune, maxmemory_policy: str) -> dict[str, str]:
    """``CONFIG GET`` answers a server running the rendered redis.conf gives."""
    return {
        "maxmemory": str(tune.maxmemory_mb * MIB),
        "maxmemory-policy": maxmemory_policy,
        "io-threads": str(tune.io_threads),
        "appendonly": "yes",
        "aclfile": ACL_PATH,
    }


# --------------------------------------------------------------------------- checks
def check_app_ping(address: tuple[str, int], password: str) -> str:
    client = connect(address, APP, password)
    try:
        answer = client.ping()
    finally:
        client.close()
    require(answer is True, f"PING answered {answer!r}")
    return "PONG as app"


def anonymous_reply(address: tuple[str, int], timeout: float = 10) -> str:
    """The first reply line to ``GET`` from a client that never logs in (raw RESP, so no
    client library logs in, negotiates or retries on its behalf)."""
    key = CHECK_KEY.encode()
    request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(request)
        reader = conn.makefile("rb")
        return reader.readline().decode("utf-8", "replace").strip()


def check_refuses_anonymous(address: tuple[str, int]) -> str:
    reply = anonymous_reply(address)
    require(reply.startswith("-NOAUTH"), f"GET without a login answered {reply[:80]!r}")
    return reply.lstrip("-")


def dangerous_allowed(dryrun: Callable[[tuple[str, ...]], str]) -> list[str]:
    """The commands of :data:`APP_DENIED` the app user may run (ACL DRYRUN answered OK)."""
    return [" ".join(command) for command in APP_DENIED if dryrun(command) == "OK"]


def check_app_denied(address: tuple[str, int], admin_password: str, app_password: str) -> str:
    import redis  # noqa: PLC0415

    admin = connect(address, ADMIN, admin_password)
    try:
        allowed = dangerous_allowed(
            lambda command: str(run_command(admin, "ACL", "DRYRUN", APP, *command))
        )
    finally:
        admin.close()
    require(not allowed, f"the app user may run {', '.join(allowed)}")
    # And once for real, from the app's own connection, with a command that changes nothing.
    app = connect(address, APP, app_password)
    try:
        app.config_get("maxmemory")
    except redis.exceptions.NoPermissionError:
        pass
    else:
        raise CheckFailedError("the app user ran CONFIG GET")
    finally:
        app.close()
    return f"{len(APP_DENIED)} commands denied (ACL DRYRUN), CONFIG GET refused as app"


def running_config(
    address: tuple[str, int], admin_password: str, names: list[str]
) -> dict[str, Any]:
    admin = connect(address, ADMIN, admin_password)
    try:
        found: dict[str, Any] = {}
        for name in names:
            found.update({str(k): v for k, v in admin.config_get(name).items()})
        return found
    finally:
        admin.close()


def checks(probe: ProbeContext) -> list[CheckRow]:
    rows = Checks(probe.name)
    admin_password = probe.secret(PASSWORD_USERS[ADMIN])
    app_password = probe.secret(PASSWORD_USERS[APP])
    tune: RedisTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    rows.run(
        "ping-as-app",
        "reachable",
        lambda: check_app_ping(probe.address(), app_password),
        fix="check `kbinfra status`; the app password is redis_app_password in secrets.yaml",
    )
    rows.run(
        "refuses-anonymous",
        "locked-down",
        lambda: check_refuses_anonymous(probe.address()),
        fix="the ACL file must switch the default user off (`user default off`); re-apply",
    )
    rows.run(
        "app-cannot-run-dangerous",
        "locked-down",
        lambda: check_app_denied(probe.address(), admin_password, app_password),
        fix="the app user needs `-@dangerous` in users.acl; re-apply the rendered ACL file",
    )
    expected = expected_config(tune, probe.settings.maxmemory_policy)
    rows.run(
        "running-config-as-rendered",
        "configured",
        lambda: require_same(
            expected, running_config(probe.address(), admin_password, list(expected))
        ),
        fix="the server runs another config than rendered: `kbinfra apply` recreates it",
    )
    replica = probe.replica()
    if replica is not None:
        replica_checks(rows, probe, replica, admin_password)
    return rows.rows


# --------------------------------------------------------------------------- replica
#: How long a key set on the primary may take to be read on the replica.
REPLICATION_WAIT_S = 10.0


def replication_info(client: Any) -> dict[str, str]:
    """``INFO replication`` as text fields (redis-py parses some into numbers)."""
    return {key: str(value) for key, value in client.info("replication").items()}


def check_replica_role(address: tuple[str, int], admin_password: str) -> str:
    """The replica's role and link; a link that is down is given a few seconds to come up
    (a replica reconnects every second, e.g. after its primary's task was moved)."""
    from kbinfra.probing.probe import seen_within  # noqa: PLC0415

    client = connect(address, ADMIN, admin_password)
    info: dict[str, str] = {}

    def linked() -> bool:
        info.update(replication_info(client))
        return info.get("role") != "slave" or info.get("master_link_status") == "up"

    try:
        seen_within(linked, REPLICATION_WAIT_S, every=0.5)
    finally:
        client.close()
    role, link = info.get("role"), info.get("master_link_status")
    require(role == "slave", f"role {role}: not a replica")
    require(link == "up", f"role slave, master link {link} (primary {info.get('master_host')})")
    offset, last_io = info.get("slave_repl_offset"), info.get("master_last_io_seconds_ago")
    return (
        f"role slave of {info.get('master_host')}:{info.get('master_port')}, link up, "
        f"offset {offset}, last I/O {last_io} s ago"
    )


def connected_replicas(info: Mapping[str, Any]) -> list[str]:
    """``redis-replica:6379 online, lag 0`` for each ``slaveN`` of ``INFO replication``
    (redis-py parses those fields into dicts)."""
    found = []
    for key, value in sorted(info.items()):
        if key.startswith("slave") and key[5:].isdigit() and isinstance(value, Mapping):
            found.append(
                f"{value.get('ip')}:{value.get('port')} {value.get('state')}, "
                f"lag {value.get('lag')} s"
            )
    return found


def check_replica_on_primary(address: tuple[str, int], admin_password: str) -> str:
    client = connect(address, ADMIN, admin_password)
    try:
        info: Mapping[str, Any] = client.info("replication")
    finally:
        client.close()
    replicas = connected_replicas(info)
    require(info.get("role") == "master", f"role {info.get('role')}: the primary is not a master")
    require(bool(replicas), f"connected_slaves {info.get('connected_slaves')}: no replica")
    return f"{len(replicas)} replica connected: {'; '.join(replicas)}"


def check_key_reaches_replica(
    primary: tuple[str, int], replica: tuple[str, int], admin_password: str
) -> str:
    """A key set on the primary is read on the replica; removed from both afterwards."""
    from kbinfra.probing.probe import seen_within  # noqa: PLC0415

    key, value = f"{CHECK_KEY}_{secrets.token_hex(6)}", secrets.token_hex(8)
    writer = connect(primary, ADMIN, admin_password)
    reader = connect(replica, ADMIN, admin_password)
    try:
        writer.set(key, value, ex=300)
        took = seen_within(lambda: reader.get(key) == value, REPLICATION_WAIT_S)
        require(
            took is not None,
            f"{key} set on the primary not read on the replica in {REPLICATION_WAIT_S:.0f} s",
        )
        assert took is not None
        return f"key set on the primary read on the replica after {took * 1000:.0f} ms"
    finally:
        writer.delete(key)
        writer.close()
        reader.close()


def replica_checks(
    rows: Checks, probe: ProbeContext, replica: ProbeContext, admin_password: str
) -> None:
    """The streaming replica follows the primary and has what is written on it."""
    rows.run(
        "replica-role-connected",
        "reachable",
        lambda: check_replica_role(replica.address(), admin_password),
        fix="see the replica's log (`docker service logs`): it must reach the primary by its "
        "stable name and log in as the replication user",
    )
    rows.run(
        "primary-sees-replica",
        "reachable",
        lambda: check_replica_on_primary(probe.address(), admin_password),
        fix="the primary lists no replica: see the replica's log",
        needs="replica-role-connected",
    )
    rows.run(
        "key-replicated",
        "reachable",
        lambda: check_key_reaches_replica(probe.address(), replica.address(), admin_password),
        fix="the replica does not receive the primary's writes: see its log and "
        "`INFO replication` on both",
        needs="replica-role-connected",
    )


# --------------------------------------------------------------------------- bench
def floors(cpus: float) -> dict[str, float]:
    """Throughput floors for the CPUs the profile gives Redis (one core at most counts)."""
    share = min(1.0, cpus)
    return {kind: floor * share for kind, floor in FLOOR_PER_CORE.items()}


def bench_user_rules(prefix: str, password: str) -> list[str]:
    """A temporary user that may touch only this run's keys and nothing dangerous."""
    return [
        "on",
        f">{password}",
        "resetkeys",
        f"~{prefix}:*",
        "resetchannels",
        "+@all",
        "-@dangerous",
    ]


def sweep(admin: Redis) -> list[str]:
    """Delete every bench user and bench key left by earlier runs (they held the stack lock,
    so no other bench runs now). Returns what was removed, for the progress line."""
    removed = []
    for user in run_command(admin, "ACL", "USERS"):
        if is_bench_name(str(user)):
            run_command(admin, "ACL", "DELUSER", user)
            removed.append(f"user {user}")
    run_command(admin, "SELECT", BENCH_DB)
    keys = 0
    batch: list[str] = []
    for key in admin.scan_iter(match="kbinfra_bench_*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            keys += int(admin.unlink(*batch))
            batch.clear()
    if batch:
        keys += int(admin.unlink(*batch))
    if keys:
        removed.append(f"{keys} keys")
    return removed


def cleanup(address: tuple[str, int], admin_password: str, prefix: str) -> None:
    """Remove this run's user (which disconnects its clients) and keys."""
    admin = connect(address, ADMIN, admin_password, db=BENCH_DB)
    try:
        run_command(admin, "ACL", "DELUSER", prefix)
        cursor_keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(cursor_keys), 500):
            admin.unlink(*cursor_keys[start : start + 500])
    finally:
        admin.close()


def parse_benchmark_csv(output: str, requests: int) -> tuple[float, LatencyStats] | None:
    """``redis-benchmark --csv``: requests/s and latency of its last result line (of
    ``requests`` requests)."""
    lines = [line for line in output.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        return None
    header, values = rows[0], rows[-1]
    data = dict(zip(header, values, strict=False))
    try:
        ms = {k: float(data[f"{k}_latency_ms"]) / 1000 for k in ("avg", "p50", "p95", "p99", "max")}
        rps = float(data["rps"])
    except (KeyError, ValueError):
        return None
    return rps, LatencyStats(
        count=requests, mean=ms["avg"], p50=ms["p50"], p95=ms["p95"], p99=ms["p99"], max=ms["max"]
    )


def _client_bench(
    probe: ProbeContext, plan: BenchPlan, password: str, *, depth: int, limit: float
) -> BenchResult:
    import random  # noqa: PLC0415

    prefix = plan.prefix
    address = probe.address()

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        client = connect(address, prefix, password, db=BENCH_DB)
        rng = random.Random(index)
        turn = [0]

        def command(pipe: Any) -> None:
            key = f"{prefix}:{rng.randrange(KEYSPACE)}"
            if turn[0] % 2 == 0:
                pipe.set(key, VALUE, ex=BENCH_TTL_S)
            else:
                pipe.get(key)
            turn[0] += 1

        if depth == 1:

            def operation() -> int:
                command(client)
                return 1

        else:

            def operation() -> int:
                pipe = client.pipeline(transaction=False)
                for _ in range(depth):
                    command(pipe)
                pipe.execute()
                return depth

        return operation, client.close

    max_ops = plan.scale(200_000, 5_000_000)
    run = run_load(
        make_worker, concurrency=CONCURRENCY, budget=plan.budget(max_ops), stop=plan.stop
    )
    kind = "plain" if depth == 1 else "pipelined"
    return BenchResult(
        service=probe.name,
        name=f"set-get-{kind}",
        workload=(
            f"SET/GET alternating on {KEYSPACE} keys of {len(VALUE)} B"
            + (f", pipelines of {depth}" if depth > 1 else "")
        ),
        client="kbinfra (redis-py)",
        concurrency=CONCURRENCY,
        duration_s=run.elapsed_s,
        operations=run.operations,
        unit="ops",
        latency=latency_stats(run.samples),
        latency_of="per command" if depth == 1 else f"per pipeline of {depth} commands",
        thresholds=(Threshold("throughput", ">=", limit, _FLOOR_SOURCE),),
        error=run.error,
    )


_FLOOR_SOURCE = "sanity floor per Redis core, scaled by the profile's Redis CPUs"


def _tool_bench(
    probe: ProbeContext, plan: BenchPlan, password: str, *, command: str, depth: int, limit: float
) -> BenchResult:
    requests = plan.scale(10_000, 200_000) * (10 if depth > 1 else 1)
    seconds = max(10, int(plan.seconds * 3))
    argv = [
        "timeout",
        "-s",
        "INT",
        str(seconds),
        "redis-benchmark",
        *("-h", "127.0.0.1", "-p", str(PORT), "--user", plan.prefix, "-a", password),
        *("--dbnum", str(BENCH_DB), "-c", str(CONCURRENCY), "-n", str(requests)),
        *("-r", str(KEYSPACE), "-P", str(depth), "--csv"),
    ]
    key = f"{plan.prefix}:__rand_int__"
    argv += ["SET", key, VALUE, "EX", str(BENCH_TTL_S)] if command == "SET" else ["GET", key]
    kind = "plain" if depth == 1 else "pipelined"
    name = f"{command.lower()}-{kind}"
    workload = f"{command} on {KEYSPACE} keys of {len(VALUE)} B" + (
        f", pipelines of {depth}" if depth > 1 else ""
    )
    code, output = probe.exec(argv)
    parsed = parse_benchmark_csv(output, requests)
    if parsed is None:
        last = (output.strip().splitlines() or ["no output"])[-1]
        reason = f"redis-benchmark exited {code}: {last}"
        if code == 124:
            reason = f"redis-benchmark did not finish {requests} requests within {seconds}s"
        if code == 127 or "not found" in output:
            reason = "redis-benchmark is not in the image"
        return failed_bench(probe.name, name, workload, reason)
    rps, latency = parsed
    return BenchResult(
        service=probe.name,
        name=name,
        workload=workload,
        client="redis-benchmark (in the container)",
        concurrency=CONCURRENCY,
        duration_s=requests / rps if rps else 0.0,
        operations=requests,
        unit="ops",
        latency=latency,
        latency_of="per request" if depth == 1 else f"per request, {depth} in flight per client",
        thresholds=(Threshold("throughput", ">=", limit, _FLOOR_SOURCE),),
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    admin_password = probe.secret(PASSWORD_USERS[ADMIN])
    address = probe.address()
    limits = floors(probe.ctx.resources.cpus)
    password = secrets.token_urlsafe(24)
    results: list[BenchResult] = []
    try:
        admin = connect(address, ADMIN, admin_password)
        try:
            removed = sweep(admin)
            if removed:
                probe.note(f"removed leftovers of an earlier bench: {', '.join(removed)}")
            rules = bench_user_rules(plan.prefix, password)
            run_command(admin, "ACL", "SETUSER", plan.prefix, *rules)
        finally:
            admin.close()
        probe.note(f"keys {plan.prefix}:* in db {BENCH_DB} as temporary user {plan.prefix}")
        for depth, kind in ((1, "plain"), (PIPELINE_DEPTH, "pipelined")):
            probe.note(f"kbinfra client, SET/GET {kind}")
            results.append(_client_bench(probe, plan, password, depth=depth, limit=limits[kind]))
        for depth, kind in ((1, "plain"), (PIPELINE_DEPTH, "pipelined")):
            for command in ("SET", "GET"):
                if plan.stop.is_set():
                    break
                probe.note(f"redis-benchmark in the container, {command} {kind}")
                results.append(
                    _tool_bench(
                        probe, plan, password, command=command, depth=depth, limit=limits[kind]
                    )
                )
    finally:
        with uninterrupted():
            cleanup(address, admin_password, plan.prefix)
            probe.note(f"removed user {plan.prefix} and its keys")
    return results
