"""PostgreSQL: the stack's user logs in, nobody gets in without SCRAM and the right password,
pg_stat_statements is there, and ``SHOW`` gives back every rendered setting. Bench: the same
TPC-B-like transaction driven by kbinfra's client (psycopg, through the tunnel) and by
``pgbench`` inside the container, so the difference is kbinfra's own client overhead.

Non-SCRAM refusal is proven from the client side with libpq's ``require_auth`` (libpq 16+):
``require_auth=!scram-sha-256`` makes libpq refuse to go on when the server asks for SCRAM,
and accept anything else (md5, a cleartext password, no authentication at all). A connection
that succeeds with it proves the server let the user in without SCRAM.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import (
    CHECK_PREFIX,
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    Operation,
    ProbeContext,
    Threshold,
    describe_error,
    failed_bench,
    latency_stats,
    require,
    require_same,
    run_load,
    uninterrupted,
)
from kbinfra.services.postgres.service import (
    BENCH_GROUP,
    REPLICATION_SLOT,
    PgTune,
    PostgresSettings,
    expected_settings,
    normalise_setting,
)

if TYPE_CHECKING:
    import psycopg

#: Authentication methods a pg_hba.conf line may use: SCRAM, certificates, or a refusal.
STRONG_METHODS = frozenset({"scram-sha-256", "cert", "reject"})
REQUIRE_AUTH_SINCE = 160000  # libpq's require_auth
CONCURRENCY = 4
PGBENCH_THREADS = 2
#: pgbench's TPC-B: 100 000 accounts and 10 tellers per branch; one branch per client, so
#: clients do not all queue on one branch row.
ACCOUNTS_PER_BRANCH = {"quick": 10_000, "full": 100_000}
TELLERS_PER_BRANCH = 10

#: The transaction of pgbench's built-in "tpcb-like" script, on this run's tables.
TRANSACTION = (
    "UPDATE {p}_accounts SET abalance = abalance + {delta} WHERE aid = {aid}",
    "SELECT abalance FROM {p}_accounts WHERE aid = {aid}",
    "UPDATE {p}_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}",
    "UPDATE {p}_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}",
    "INSERT INTO {p}_history (tid, bid, aid, delta, mtime)"
    " VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)",
)


def connect(
    address: tuple[str, int],
    user: str,
    password: str,
    dbname: str,
    *,
    autocommit: bool = True,
    **options: Any,
) -> psycopg.Connection[Any]:
    import psycopg  # noqa: PLC0415

    host, port = address
    return psycopg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=10,
        autocommit=autocommit,
        **options,
    )


def _scalar(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params or None).fetchone()
    return None if row is None else row[0]


# --------------------------------------------------------------------------- checks
def check_login(address: tuple[str, int], user: str, password: str, dbname: str) -> str:
    with connect(address, user, password, dbname) as conn:
        require(_scalar(conn, "SELECT 1") == 1, "SELECT 1 did not answer 1")
        version = str(_scalar(conn, "SHOW server_version"))
    return f"SELECT 1 as {user}; PostgreSQL {version.split(maxsplit=1)[0]}"


def check_pg_stat_statements(address: tuple[str, int], user: str, password: str, db: str) -> str:
    with connect(address, user, password, db) as conn:
        version = _scalar(
            conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        require(version is not None, f"extension not installed in database {db}")
        preload = str(_scalar(conn, "SHOW shared_preload_libraries"))
        require(
            "pg_stat_statements" in preload,
            f"not in shared_preload_libraries ({preload or 'empty'})",
        )
        rows = _scalar(conn, "SELECT count(*) FROM pg_stat_statements")
    return f"pg_stat_statements {version}, {rows} statements tracked"


def check_wrong_password(address: tuple[str, int], user: str, dbname: str) -> str:
    import psycopg  # noqa: PLC0415

    wrong = "kbinfra-wrong-" + secrets.token_hex(8)
    try:
        conn = connect(address, user, wrong, dbname)
    except psycopg.OperationalError as error:
        text = str(error)
        require(
            "password authentication failed" in text,
            f"refused, but not for the password: {describe_error(error)}",
        )
        return "password authentication failed"
    conn.close()
    raise CheckFailedError(f"logged in as {user} with a wrong password")


def libpq_version() -> int:
    import psycopg  # noqa: PLC0415

    return int(psycopg.pq.version())


def check_non_scram(address: tuple[str, int], user: str, password: str, dbname: str) -> str:
    import psycopg  # noqa: PLC0415

    version = libpq_version()
    require(
        version >= REQUIRE_AUTH_SINCE,
        f"libpq {version} has no require_auth (needs 16+): install psycopg[binary] >= 3.2.3",
    )
    try:
        conn = connect(address, user, password, dbname, require_auth="!scram-sha-256")
    except psycopg.OperationalError as error:
        text = str(error)
        require(
            "authentication method requirement" in text,
            f"refused, but not for the method: {describe_error(error)}",
        )
        return "a client that refuses SCRAM is turned away: the server asks for SCRAM"
    method = ""
    try:
        method = str(_scalar(conn, "SELECT current_setting('password_encryption')"))
    finally:
        conn.close()
    raise CheckFailedError(
        f"logged in as {user} without SCRAM (password_encryption {method or '?'})"
    )


def weak_hba_rules(rows: list[tuple[Any, ...]]) -> list[str]:
    """pg_hba_file_rules rows (line, type, database, user, address, method, error) that
    let someone in without SCRAM, or that the server could not parse."""
    weak = []
    for line, kind, database, users, address, method, error in rows:
        if error:
            weak.append(f"line {line}: {error}")
        elif method not in STRONG_METHODS:
            where = f"{kind} {','.join(database or [])} {','.join(users or [])} {address or ''}"
            weak.append(f"line {line}: {' '.join(where.split())} {method}")
    return weak


def check_hba(address: tuple[str, int], user: str, password: str, dbname: str) -> str:
    with connect(address, user, password, dbname) as conn:
        rows = conn.execute(
            "SELECT line_number, type, database, user_name, address, auth_method, error"
            " FROM pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
    weak = weak_hba_rules(rows)
    require(bool(rows), "pg_hba_file_rules is empty")
    require(not weak, "; ".join(weak))
    return f"{len(rows)} pg_hba.conf rules, all scram-sha-256"


def check_stored_passwords(address: tuple[str, int], user: str, password: str, db: str) -> str:
    with connect(address, user, password, db) as conn:
        encryption = str(_scalar(conn, "SHOW password_encryption"))
        weak = [
            str(row[0])
            for row in conn.execute(
                "SELECT rolname FROM pg_authid WHERE rolpassword IS NOT NULL"
                " AND rolpassword NOT LIKE 'SCRAM-SHA-256$%' ORDER BY rolname"
            ).fetchall()
        ]
        total = _scalar(conn, "SELECT count(*) FROM pg_authid WHERE rolpassword IS NOT NULL")
    require(encryption == "scram-sha-256", f"password_encryption is {encryption}")
    require(not weak, f"roles with a non-SCRAM password: {', '.join(weak)}")
    return f"password_encryption scram-sha-256; {total} role passwords stored as SCRAM"


def running_settings(
    address: tuple[str, int], user: str, password: str, dbname: str, names: list[str]
) -> dict[str, str | None]:
    with connect(address, user, password, dbname) as conn:
        return {
            name: normalise_setting(name, str(_scalar(conn, "SELECT current_setting(%s)", name)))
            for name in names
        }


def checks(probe: ProbeContext) -> list[CheckRow]:
    settings: PostgresSettings = probe.settings
    password = probe.secret("postgres_password")
    user, db = settings.user, settings.database
    rows = Checks(probe.name)
    rows.run(
        "login-select-1",
        "reachable",
        lambda: check_login(probe.address(), user, password, db),
        fix="check `kbinfra status`; the password is postgres_password in secrets.yaml",
    )
    rows.run(
        "pg-stat-statements",
        "reachable",
        lambda: check_pg_stat_statements(probe.address(), user, password, db),
        fix="the init script creates it on a new data volume; run CREATE EXTENSION "
        "pg_stat_statements as the stack user",
        needs="login-select-1",
    )
    rows.run(
        "refuses-wrong-password",
        "locked-down",
        lambda: check_wrong_password(probe.address(), user, db),
        fix="pg_hba.conf must not trust anyone: re-apply the rendered pg_hba.conf",
    )
    rows.run(
        "refuses-non-scram",
        "locked-down",
        lambda: check_non_scram(probe.address(), user, password, db),
        fix="use scram-sha-256 in pg_hba.conf and re-set the password with "
        "password_encryption = scram-sha-256",
    )
    rows.run(
        "hba-rules-scram-only",
        "locked-down",
        lambda: check_hba(probe.address(), user, password, db),
        fix="re-apply the rendered pg_hba.conf (scram-sha-256 only)",
        needs="login-select-1",
    )
    rows.run(
        "passwords-stored-as-scram",
        "locked-down",
        lambda: check_stored_passwords(probe.address(), user, password, db),
        fix="SET password_encryption = 'scram-sha-256', then ALTER ROLE … PASSWORD for each role",
        needs="login-select-1",
    )
    tune: PgTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    expected = expected_settings(tune)
    rows.run(
        "running-settings-as-rendered",
        "configured",
        lambda: require_same(
            expected, running_settings(probe.address(), user, password, db, list(expected))
        ),
        fix="the server runs other settings than rendered: `kbinfra apply` recreates it",
        needs="login-select-1",
    )
    replica = probe.replica()
    if replica is not None:
        replica_checks(rows, probe, replica, (user, password, db))
    return rows.rows


# --------------------------------------------------------------------------- replica
#: How long a row written on the primary may take to be read on the replica.
REPLICATION_WAIT_S = 10.0
#: The table a row is written to on the primary and read from on the replica, then dropped.
REPLICATION_TABLE = f"{CHECK_PREFIX}replication"

Login = tuple[str, str, str]  # user, password, database


def check_in_recovery(address: tuple[str, int], login: Login) -> str:
    """In recovery with its WAL receiver streaming; a receiver that is not is given a few
    seconds (it retries every ``wal_retrieve_retry_interval``, 5 s, after its primary moved)."""
    from kbinfra.probing.probe import seen_within  # noqa: PLC0415

    row: list[Any] = []

    def streaming() -> bool:
        found = conn.execute(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
            " (SELECT status FROM pg_stat_wal_receiver)"
        ).fetchone()
        assert found is not None
        row[:] = found
        return not found[0] or found[2] == "streaming"

    with connect(address, *login) as conn:
        seen_within(streaming, REPLICATION_WAIT_S, every=0.5)
    recovering, replayed, receiver = row
    require(bool(recovering), "pg_is_in_recovery() is false: it runs as a primary")
    require(receiver == "streaming", f"WAL receiver {receiver or 'not running'}")
    return f"pg_is_in_recovery() true, WAL receiver streaming, replayed up to {replayed}"


def check_slot_active(address: tuple[str, int], login: Login) -> str:
    with connect(address, *login) as conn:
        row = conn.execute(
            "SELECT active, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (REPLICATION_SLOT,),
        ).fetchone()
    require(row is not None, f"no replication slot {REPLICATION_SLOT} on the primary")
    assert row is not None
    active, restart_lsn = row
    require(bool(active), f"slot {REPLICATION_SLOT} is not active: no replica streams from it")
    return f"slot {REPLICATION_SLOT} active, restart_lsn {restart_lsn}"


def check_replay_lag(address: tuple[str, int], login: Login) -> str:
    """The primary's view of its replica: state, bytes not yet replayed, replay lag."""
    with connect(address, *login) as conn:
        row = conn.execute(
            "SELECT application_name, state,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,"
            " COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8"
            " FROM pg_stat_replication WHERE state IS NOT NULL ORDER BY backend_start LIMIT 1"
        ).fetchone()
    require(row is not None, "pg_stat_replication is empty: no replica is connected")
    assert row is not None
    name, state, behind, lag = row
    require(state == "streaming", f"{name} is {state}, not streaming")
    return f"{name} streaming, {behind} bytes behind, replay lag {lag * 1000:.0f} ms"


def check_row_replicated(primary: tuple[str, int], replica: tuple[str, int], login: Login) -> str:
    """A row written on the primary is read on the replica; the table is dropped after."""
    from kbinfra.probing.probe import seen_within  # noqa: PLC0415

    token = secrets.token_hex(8)
    with connect(primary, *login) as writer, connect(replica, *login) as reader:
        writer.execute(f"CREATE TABLE IF NOT EXISTS {REPLICATION_TABLE} (token text PRIMARY KEY)")
        try:
            writer.execute(f"INSERT INTO {REPLICATION_TABLE} VALUES (%s)", (token,))

            def read() -> bool:
                try:
                    found = reader.execute(
                        f"SELECT 1 FROM {REPLICATION_TABLE} WHERE token = %s", (token,)
                    ).fetchone()
                except Exception:  # the table itself is not replayed yet
                    return False
                return found is not None

            took = seen_within(read, REPLICATION_WAIT_S)
        finally:
            writer.execute(f"DROP TABLE IF EXISTS {REPLICATION_TABLE}")
    require(
        took is not None,
        f"a row written on the primary was not read on the replica in {REPLICATION_WAIT_S:.0f} s",
    )
    assert took is not None
    return f"row written on the primary read on the replica after {took * 1000:.0f} ms"


def replica_checks(rows: Checks, probe: ProbeContext, replica: ProbeContext, login: Login) -> None:
    """The streaming replica is in recovery, streams from its slot, and has the primary's
    writes."""
    rows.run(
        "replica-in-recovery",
        "reachable",
        lambda: check_in_recovery(replica.address(), login),
        fix="see the replica's log (`docker service logs`): pg_basebackup must reach the "
        "primary by its stable name and log in as the replication role",
    )
    rows.run(
        "replication-slot-active",
        "reachable",
        lambda: check_slot_active(probe.address(), login),
        fix="the slot is created with a new primary data volume; see the replica's log",
        needs="login-select-1",
    )
    rows.run(
        "replica-replay-lag",
        "reachable",
        lambda: check_replay_lag(probe.address(), login),
        fix="the primary lists no streaming replica: see the replica's log",
        needs="replication-slot-active",
    )
    rows.run(
        "row-replicated",
        "reachable",
        lambda: check_row_replicated(probe.address(), replica.address(), login),
        fix="the replica does not replay the primary's writes: see both logs",
        needs="replica-in-recovery",
    )


# --------------------------------------------------------------------------- bench
def thresholds(cpus: float, disk: str) -> tuple[Threshold, ...]:
    """Sanity floors: every commit waits for a WAL flush, so the disk kind bounds TPS.

    A transaction touches four rows and commits once: SSD/NVMe flush in well under a
    millisecond, a spinning disk takes several. The floors are an order of magnitude below
    what a healthy host of the profile does, to catch a broken setup, not to grade hardware.
    """
    cores = max(1.0, cpus)
    if disk == "hdd":
        return (
            Threshold("throughput", ">=", 20 * cores, "sanity floor: 20 TPS per core on HDD"),
            Threshold("p95_s", "<", 0.5, "sanity ceiling for one short transaction on HDD"),
        )
    return (
        Threshold("throughput", ">=", 100 * cores, "sanity floor: 100 TPS per core on SSD/NVMe"),
        Threshold("p95_s", "<", 0.1, "sanity ceiling for one short transaction on SSD/NVMe"),
    )


def tpcb_script(prefix: str) -> str:
    """The transaction as a pgbench script (variables from ``-D``)."""
    header = (
        "\\set aid random(1, :naccounts)\n\\set bid random(1, :nbranches)\n"
        "\\set tid random(1, :ntellers)\n\\set delta random(-5000, 5000)\nBEGIN;\n"
    )
    body = "".join(
        statement.format(p=prefix, aid=":aid", bid=":bid", tid=":tid", delta=":delta") + ";\n"
        for statement in TRANSACTION
    )
    return header + body + "END;\n"


def parse_pgbench_log(text: str) -> list[float]:
    """Latencies (s) from pgbench's per-transaction log: ``client tx latency_us script …``."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and all(f.isdigit() for f in fields[:3]):
            found.append(int(fields[2]) / 1_000_000)
    return found


def parse_pgbench_summary(text: str) -> dict[str, float]:
    """``number of transactions actually processed: N`` and ``tps = X`` from pgbench."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("number of transactions actually processed:"):
            found["transactions"] = float(line.split(":")[1].split("/")[0])
        elif line.startswith("tps = "):
            found["tps"] = float(line.split()[2])
        elif line.startswith("number of failed transactions:"):
            found["failed"] = float(line.split(":")[1].split()[0])
    return found


def sweep_and_cleanup_sql(conn: psycopg.Connection[Any], like: str) -> list[str]:
    """Drop every bench table and role matching ``like`` (this run's or leftovers)."""
    removed = []
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE %s",
        (like,),
    )
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE %s",
            (like,),
        ).fetchall()
    ]
    for table in tables:
        conn.execute(f'DROP TABLE IF EXISTS public."{table}"')
        removed.append(f"table {table}")
    roles = [
        str(r[0])
        for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (like,)
        ).fetchall()
    ]
    for role in roles:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        removed.append(f"role {role}")
    return removed


def create_role(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """A login role for this run only (utility statements take no bound parameters), in the
    group pg_hba.conf lets in over TCP (``BENCH_GROUP``), which is created the first time."""
    from psycopg import sql  # noqa: PLC0415

    conn.execute(
        sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN"
            " CREATE ROLE {} NOLOGIN; END IF; END $$"
        ).format(sql.Literal(BENCH_GROUP), sql.Identifier(BENCH_GROUP))
    )
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(role), sql.Literal(password), sql.Identifier(BENCH_GROUP)
        )
    )


def _like(prefix: str) -> str:
    return prefix.replace("_", "\\_") + "%"


def setup_tables(conn: psycopg.Connection[Any], prefix: str, branches: int, per: int) -> None:
    p = prefix
    conn.execute(f"CREATE TABLE {p}_branches (bid int PRIMARY KEY, bbalance int, filler char(88))")
    conn.execute(
        f"CREATE TABLE {p}_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))"
    )
    conn.execute(
        f"CREATE TABLE {p}_accounts (aid int, bid int, abalance int, filler char(84))"
        " WITH (fillfactor = 100)"
    )
    conn.execute(
        f"CREATE TABLE {p}_history (tid int, bid int, aid int, delta int,"
        " mtime timestamp, filler char(22))"
    )
    conn.execute(f"INSERT INTO {p}_branches SELECT g, 0, '' FROM generate_series(1, {branches}) g")
    tellers = branches * TELLERS_PER_BRANCH
    conn.execute(
        f"INSERT INTO {p}_tellers SELECT g, (g - 1) / {TELLERS_PER_BRANCH} + 1, 0, ''"
        f" FROM generate_series(1, {tellers}) g"
    )
    conn.execute(
        f"INSERT INTO {p}_accounts SELECT g, (g - 1) / {per} + 1, 0, ''"
        f" FROM generate_series(1, {branches * per}) g"
    )
    conn.execute(f"ALTER TABLE {p}_accounts ADD PRIMARY KEY (aid)")
    for table in ("branches", "tellers", "accounts", "history"):
        conn.execute(f"ALTER TABLE {p}_{table} OWNER TO {p}")
        conn.execute(f"ANALYZE {p}_{table}")


def _client_bench(
    probe: ProbeContext,
    plan: BenchPlan,
    password: str,
    sizes: dict[str, int],
    limits: tuple[Threshold, ...],
) -> BenchResult:
    address = probe.address()
    db = probe.settings.database
    prefix = plan.prefix

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        conn = connect(address, prefix, password, db, autocommit=False)
        rng = random.Random(index)

        def operation() -> int:
            values = {
                "p": prefix,
                "aid": rng.randint(1, sizes["naccounts"]),
                "bid": rng.randint(1, sizes["nbranches"]),
                "tid": rng.randint(1, sizes["ntellers"]),
                "delta": rng.randint(-5000, 5000),
            }
            with conn.cursor() as cursor:
                for statement in TRANSACTION:
                    cursor.execute(statement.format(**values))
            conn.commit()
            return 1

        return operation, conn.close

    run = run_load(
        make_worker,
        concurrency=CONCURRENCY,
        budget=plan.budget(plan.scale(100_000, 2_000_000)),
        stop=plan.stop,
    )
    return BenchResult(
        service=probe.name,
        name="tpcb-like",
        workload=_workload(sizes),
        client="kbinfra (psycopg)",
        concurrency=CONCURRENCY,
        duration_s=run.elapsed_s,
        operations=run.operations,
        unit="tx",
        latency=latency_stats(run.samples),
        latency_of="per transaction",
        thresholds=limits,
        error=run.error,
    )


def _workload(sizes: dict[str, int]) -> str:
    return (
        f"pgbench's tpcb-like transaction on {sizes['naccounts']:,} accounts, "
        f"{sizes['nbranches']} branches"
    )


def _put_file(probe: ProbeContext, path: str, text: str) -> None:
    """Write ``text`` to ``path`` (in the container's tmpfs /tmp) from inside the container:
    its root file system is read-only, and ``put_archive`` cannot reach a tmpfs."""
    container = probe.container()
    if container is None:
        raise CheckFailedError(f"container {probe.container_name()} does not exist")
    code, output = container.exec_run(
        ["sh", "-c", 'printf "%s" "$KBINFRA_FILE_TEXT" > "$1"', "sh", path],
        environment={"KBINFRA_FILE_TEXT": text},
    )
    if code != 0:
        detail = output.decode("utf-8", "replace").strip() if isinstance(output, bytes) else ""
        raise CheckFailedError(f"could not write {path} in the container: {detail}")


def _pgbench(
    probe: ProbeContext,
    plan: BenchPlan,
    password: str,
    sizes: dict[str, int],
    limits: tuple[Threshold, ...],
) -> BenchResult:
    prefix = plan.prefix
    script = f"/tmp/{prefix}.sql"
    seconds = max(1, round(plan.seconds))
    workload = _workload(sizes)
    _put_file(probe, script, tpcb_script(prefix))
    container_port = probe.service.container_port or 5432
    argv = [
        *("timeout", "-s", "INT", str(seconds + 60)),
        *("pgbench", "-n", "-h", "127.0.0.1", "-p", str(container_port)),
        *("-U", prefix, "-d", probe.settings.database),
        *("-c", str(CONCURRENCY), "-j", str(PGBENCH_THREADS), "-T", str(seconds)),
        *(f"-Dnaccounts={sizes['naccounts']}", f"-Dnbranches={sizes['nbranches']}"),
        *(f"-Dntellers={sizes['ntellers']}", "-f", script),
        *("-l", f"--log-prefix=/tmp/{prefix}_log"),
    ]
    code, output = probe.exec(argv, environment={"PGPASSWORD": password})
    summary = parse_pgbench_summary(output)
    if code != 0 or "transactions" not in summary:
        last = (output.strip().splitlines() or ["no output"])[-1]
        if code == 127 or "not found" in output:
            last = "pgbench is not in the image"
        return failed_bench(probe.name, "tpcb-like", workload, f"pgbench exited {code}: {last}")
    _, log = probe.exec(["sh", "-c", f"cat /tmp/{prefix}_log.*"])
    samples = parse_pgbench_log(log)
    transactions = int(summary["transactions"])
    tps = summary.get("tps", 0.0)
    return BenchResult(
        service=probe.name,
        name="tpcb-like",
        workload=workload,
        client="pgbench (in the container)",
        concurrency=CONCURRENCY,
        duration_s=transactions / tps if tps else float(seconds),
        operations=transactions,
        unit="tx",
        latency=latency_stats(samples),
        latency_of="per transaction",
        thresholds=limits,
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    settings: PostgresSettings = probe.settings
    superuser = settings.user
    admin_password = probe.secret("postgres_password")
    db = settings.database
    prefix = plan.prefix
    password = secrets.token_urlsafe(24)
    per = ACCOUNTS_PER_BRANCH["quick" if plan.quick else "full"]
    sizes = {
        "nbranches": CONCURRENCY,
        "ntellers": CONCURRENCY * TELLERS_PER_BRANCH,
        "naccounts": CONCURRENCY * per,
    }
    limits = thresholds(probe.ctx.resources.cpus, probe.ctx.profile.host.disk)
    results: list[BenchResult] = []
    try:
        with connect(probe.address(), superuser, admin_password, db) as conn:
            removed = sweep_and_cleanup_sql(conn, _like("kbinfra_bench_"))
            if removed:
                probe.note(f"removed leftovers of an earlier bench: {', '.join(removed)}")
            probe.exec(["sh", "-c", "rm -f /tmp/kbinfra_bench_*"])
            create_role(conn, prefix, password)
            probe.note(f"loading {sizes['naccounts']:,} accounts into {prefix}_* tables")
            setup_tables(conn, prefix, sizes["nbranches"], per)
        probe.note("kbinfra client (psycopg), tpcb-like")
        results.append(_client_bench(probe, plan, password, sizes, limits))
        if not plan.stop.is_set():
            probe.note("pgbench in the container, tpcb-like")
            results.append(_pgbench(probe, plan, password, sizes, limits))
    finally:
        with uninterrupted():
            _cleanup(probe, superuser, admin_password, db, prefix)
    return results


def _cleanup(probe: ProbeContext, user: str, password: str, db: str, prefix: str) -> None:
    try:
        probe.exec(["sh", "-c", f"rm -f /tmp/{prefix}*"])
    except Exception as error:  # the container may be gone; the tables matter more
        probe.note(f"could not remove the pgbench files: {describe_error(error)}")
    with connect(probe.address(), user, password, db) as conn:
        removed = sweep_and_cleanup_sql(conn, _like(prefix))
    probe.note(f"removed {', '.join(removed) or 'nothing'}")


__all__ = ["bench", "checks"]
