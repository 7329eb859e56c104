"""The app tier's checks, run for each of its containers.

An API replica: healthy in Docker, reachable from nginx by the name its ``upstream`` block
uses; the first replica also proves HTTPS through nginx to the health path and that the
app's PostgreSQL role cannot do what it should not. A worker: running, and connected to the
broker (Redis lists a client from the worker's address). The stores are found by asking the
enabled services which of them wire the app (``Service.app_env``), not by name.

Bench (run once, for the first replica): GETs ``app.bench_path`` (the health path unless the
stack file names another) through nginx over HTTPS, as a client does, paced to the rate
nginx's ``limit_req`` allows one client address, so it measures the app's answers and not
nginx's 429s, with clients enough to keep that pace while answers take up to the p95
ceiling. Threshold: p95 under ``app.bench_p95_s`` (0.5 s unless set: the guide's
HighSearchLatency); any answer but 200 fails it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    Pacer,
    ProbeContext,
    Threshold,
    latency_stats,
    require,
    run_load,
)
from kbinfra.services.app.service import (
    APP_DATABASE,
    APP_DB_SECRET,
    APP_ROLE,
    ApiReplica,
    Migration,
    WorkerReplica,
    upstream_address,
)

if TYPE_CHECKING:
    from docker.models.containers import Container

    from kbinfra.service import Service, ServiceContext
    from kbinfra.spec.app import AppSettings

LOGS_FIX = "see `kbinfra logs <container>` and `kbinfra status`"


def wiring_service(probe: ProbeContext, variable: str) -> tuple[Service, ServiceContext]:
    """The enabled service whose ``app_env`` gives ``variable`` (the broker, the database)."""
    from kbinfra.registry import enabled_services  # noqa: PLC0415

    for service, own in enabled_services(probe.ctx):
        if variable in service.app_env(own):
            return service, own
    raise CheckFailedError(f"no enabled service gives the app {variable}")


def edge_service(probe: ProbeContext) -> tuple[Service, ServiceContext]:
    """The stack's public door (nginx): the enabled service that balances over the API."""
    from kbinfra.registry import enabled_services  # noqa: PLC0415

    for service, own in enabled_services(probe.ctx):
        if service.stage == "edge":
            return service, own
    raise CheckFailedError("no edge service (nginx) is enabled: nothing balances the API")


def container_of(probe: ProbeContext, service: str) -> Container:
    import docker.errors  # noqa: PLC0415

    from kbinfra.names import container_name  # noqa: PLC0415

    name = container_name(probe.stack.spec.name, service)
    try:
        return probe.docker().containers.get(name)
    except docker.errors.NotFound:
        raise CheckFailedError(f"container {name} does not exist") from None


def check_healthy(probe: ProbeContext) -> str:
    container = container_of(probe, probe.name)
    state = container.attrs.get("State") or {}
    require(state.get("Status") == "running", f"container is {state.get('Status')}")
    health = (state.get("Health") or {}).get("Status")
    require(health == "healthy", f"Docker health is {health or 'not reported'}")
    return "running, healthy"


def check_running(probe: ProbeContext) -> str:
    container = container_of(probe, probe.name)
    state = container.attrs.get("State") or {}
    require(state.get("Status") == "running", f"container is {state.get('Status')}")
    restarts = int(container.attrs.get("RestartCount") or 0)
    return f"running, {restarts} restarts"


def check_migrated(probe: ProbeContext) -> str:
    container = container_of(probe, probe.name)
    state = container.attrs.get("State") or {}
    require(state.get("Status") == "exited", f"container is {state.get('Status')}")
    code = state.get("ExitCode")
    require(code == 0, f"the migration exited {code}")
    return f"exited 0 at {str(state.get('FinishedAt', ''))[:19]}"


def check_reachable_from_edge(probe: ProbeContext) -> str:
    settings: AppSettings = probe.settings
    edge, _ = edge_service(probe)
    url = f"http://{upstream_address(probe.ctx, probe.name)}{settings.health_path}"
    container = container_of(probe, edge.name)
    code, output = container.exec_run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url]
    )
    text = output.decode("utf-8", "replace").strip() if isinstance(output, bytes) else ""
    require(code == 0 and text == "200", f"{edge.name} → {url}: {text or f'exit {code}'}")
    return f"{edge.name} → {url}: 200"


def check_through_edge(probe: ProbeContext) -> str:
    from kbinfra.services.nginx.probe import Https  # noqa: PLC0415

    settings: AppSettings = probe.settings
    _, edge = edge_service(probe)
    with Https(probe.stack, probe.address(edge.settings.https_port)) as https:
        response = https.get(settings.health_path)
    require(
        response.status_code == 200,
        f"https://{probe.stack.spec.domain}{settings.health_path} answered "
        f"HTTP {response.status_code}",
    )
    return f"https://{probe.stack.spec.domain}{settings.health_path}: 200"


def database_address(probe: ProbeContext) -> tuple[tuple[str, int], Any]:
    _, database = wiring_service(probe, "DATABASE_URL")
    port = database.settings.port
    if port is None:
        raise CheckFailedError("PostgreSQL publishes no host port: the role cannot be checked")
    return probe.address(port), database.settings


def check_role_rights(probe: ProbeContext) -> str:
    from kbinfra.services.postgres.probe import connect  # noqa: PLC0415
    from kbinfra.services.postgres.roles import login_role  # noqa: PLC0415

    address, _ = database_address(probe)
    password = probe.secret(APP_DB_SECRET)
    with connect(address, login_role(APP_ROLE, password), password, APP_DATABASE) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    require(row is not None, f"role {APP_ROLE} not found")
    names = ("superuser", "createrole", "createdb", "replication", "bypassrls")
    held = [name for name, value in zip(names, row or (), strict=True) if value]
    require(not held, f"{APP_ROLE} has {', '.join(held)}")
    require(owner is not None and owner[0] == APP_ROLE, f"{APP_DATABASE} is owned by {owner}")
    return f"{APP_ROLE}: owner of {APP_DATABASE}; no superuser, createrole, createdb"


def check_no_other_database(probe: ProbeContext) -> str:
    import psycopg  # noqa: PLC0415

    from kbinfra.services.postgres.probe import connect  # noqa: PLC0415
    from kbinfra.services.postgres.roles import login_role  # noqa: PLC0415

    address, settings = database_address(probe)
    password = probe.secret(APP_DB_SECRET)
    refused = []
    for other in (settings.database, "template1"):
        try:
            conn = connect(address, login_role(APP_ROLE, password), password, other)
        except psycopg.OperationalError as error:
            require(
                "no pg_hba.conf entry" in str(error) or "permission denied" in str(error),
                f"{other}: refused, but not by pg_hba.conf: {str(error).strip()[:120]}",
            )
            refused.append(other)
            continue
        conn.close()
        raise CheckFailedError(f"{APP_ROLE} connected to database {other}")
    return f"{APP_ROLE} refused by pg_hba.conf for {', '.join(refused)}"


def container_addresses(container: Container) -> set[str]:
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return {n["IPAddress"] for n in networks.values() if n.get("IPAddress")}


def check_broker_connection(probe: ProbeContext) -> str:
    from kbinfra.services.redis.probe import connect, run_command  # noqa: PLC0415
    from kbinfra.services.redis.service import PASSWORD_USERS  # noqa: PLC0415

    broker, own = wiring_service(probe, "CELERY_BROKER_URL")
    port = own.settings.port
    if port is None:
        raise CheckFailedError(f"{broker.name} publishes no host port: cannot ask it")
    addresses = container_addresses(container_of(probe, probe.name))
    require(bool(addresses), "the worker has no address on the stack network")
    client = connect(probe.address(port), "admin", probe.secret(PASSWORD_USERS["admin"]))
    try:
        listed = str(run_command(client, "CLIENT", "LIST"))
    finally:
        client.close()
    clients = [
        line
        for line in listed.splitlines()
        if any(f" addr={address}:" in f" {line}" for address in addresses)
    ]
    require(bool(clients), f"{broker.name} lists no client from {', '.join(sorted(addresses))}")
    users = sorted(
        {
            part.removeprefix("user=")
            for c in clients
            for part in c.split()
            if part.startswith("user=")
        }
    )
    return f"{len(clients)} connections to {broker.name} as {', '.join(users)}"


def checks(probe: ProbeContext) -> list[CheckRow]:
    rows = Checks(probe.name)
    service = probe.service
    if isinstance(service, ApiReplica):
        rows.run("healthy", "reachable", lambda: check_healthy(probe), fix=LOGS_FIX)
        rows.run(
            "reachable-from-nginx",
            "reachable",
            lambda: check_reachable_from_edge(probe),
            fix="nginx must reach the replica by name on the stack network: `kbinfra status`",
            needs="healthy",
        )
        if service.index == 1:
            rows.run(
                "https-through-nginx",
                "reachable",
                lambda: check_through_edge(probe),
                fix="nginx's upstream kb_app must list every replica: re-apply",
                needs="healthy",
            )
            rows.run(
                "db-role-least-rights",
                "locked-down",
                lambda: check_role_rights(probe),
                fix="apply again: PostgreSQL's 30-service-roles.sh resets the role's rights",
            )
            rows.run(
                "db-role-no-other-database",
                "locked-down",
                lambda: check_no_other_database(probe),
                fix="pg_hba.conf must let the app's role in to its own database only: re-apply",
            )
    elif isinstance(service, Migration):
        rows.run(
            "completed",
            "configured",
            lambda: check_migrated(probe),
            fix=f"see `kbinfra logs {probe.name}`, fix the migration, apply again",
        )
    elif isinstance(service, WorkerReplica):
        rows.run("running", "reachable", lambda: check_running(probe), fix=LOGS_FIX)
        rows.run(
            "connected-to-broker",
            "reachable",
            lambda: check_broker_connection(probe),
            fix=f"the worker does not reach Redis: `kbinfra logs {probe.name}`",
            needs="running",
        )
    return rows.rows


# --------------------------------------------------------------------------- bench
#: Clients at least, and at most: enough that an app answering within its p95 ceiling keeps
#: the pace (``rate * ceiling`` requests in flight), never more than this.
MIN_CONCURRENCY = 4
MAX_CONCURRENCY = 32
#: The share of the allowed rate the bench asks for: the limiter's clock and ours differ.
PACE_SHARE = 0.9


def bench_rate(rate_limit_rps: float | None) -> float:
    """Requests per second the bench sends: just under the edge's per-client limit."""
    if rate_limit_rps is None:
        raise CheckFailedError("the edge service names no per-client rate limit to pace by")
    return rate_limit_rps * PACE_SHARE


def bench_concurrency(rate_per_s: float, p95_ceiling_s: float) -> int:
    """Clients enough to send ``rate_per_s`` while each answer takes up to the ceiling."""
    return max(MIN_CONCURRENCY, min(MAX_CONCURRENCY, math.ceil(rate_per_s * p95_ceiling_s)))


def bench_thresholds(settings: AppSettings) -> tuple[Threshold, ...]:
    """The p95 ceiling only: the throughput is the paced rate by design (a floor on it would
    measure the client's start-up on a short run, not the app); an app too slow to keep the
    pace shows in its p95, and any answer but 200 fails the run."""
    return (
        Threshold(
            "p95_s",
            "<",
            settings.bench_p95_s,
            "app.bench_p95_s"
            if "bench_p95_s" in settings.model_fields_set
            else "default: guide alert HighSearchLatency (p95 > 0.5 s)",
        ),
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    from kbinfra.services.nginx.probe import https_get_workers  # noqa: PLC0415

    service = probe.service
    if not isinstance(service, ApiReplica) or service.index != 1:
        return []  # the tier is measured once, through nginx, which balances every replica
    settings: AppSettings = probe.settings
    path = settings.bench_target
    _, edge = edge_service(probe)
    rate = bench_rate(getattr(edge.settings, "rate_limit_rps", None))
    address = probe.address(edge.settings.https_port)
    concurrency = bench_concurrency(rate, settings.bench_p95_s)

    probe.note(f"GET {path} through nginx over HTTPS, {rate:g} requests/s")
    run = run_load(
        https_get_workers(probe.stack, address, path),
        concurrency=concurrency,
        budget=plan.budget(plan.scale(int(rate * 30), int(rate * 600))),
        stop=plan.stop,
        pacer=Pacer(rate),
    )
    return [
        BenchResult(
            service=probe.name,
            name="api-through-nginx",
            workload=f"GET {path} through nginx over HTTPS to {settings.replicas} replicas, "
            f"paced to {rate:g} requests/s (nginx's rate limit per client), keep-alive",
            client="kbinfra (httpx)",
            concurrency=concurrency,
            duration_s=run.elapsed_s,
            operations=run.operations,
            unit="requests",
            latency=latency_stats(run.samples),
            latency_of="per request",
            thresholds=bench_thresholds(settings),
            error=run.error,
        )
    ]
