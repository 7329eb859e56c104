"""PostgreSQL: PGTune-derived settings, scram-only access, pg_stat_statements and views."""

import math
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from pydantic import Field

from kbinfra.errors import SpecError
from kbinfra.registry import enabled_services
from kbinfra.service import (
    ContainerSpec,
    DatabaseRole,
    FileMount,
    HealthCheck,
    LoginCheck,
    Reload,
    RenderedFile,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.replication import derived_password
from kbinfra.services.postgres.exporter import MONITOR_ROLE, MONITOR_SECRET
from kbinfra.services.postgres.exporter import SERVICE as EXPORTER
from kbinfra.services.postgres.roles import (
    ConsumerRole,
    consumer_sql,
    login_role,
    login_roles,
    scram_verifier,
)
from kbinfra.spec.values import SWARM_TARGET

Workload = Literal["web", "oltp", "dw", "mixed"]
DiskKind = Literal["ssd", "nvme", "hdd"]
WalCompression = Literal["lz4", "zstd", "pglz", "on", "off"]

KB = 1
MB = 1024 * KB
GB = 1024 * MB

MAX_CONNECTIONS = {"web": 200, "oltp": 300, "dw": 40, "mixed": 100}
WAL_SIZE = {
    "web": (1 * GB, 4 * GB),
    "oltp": (2 * GB, 8 * GB),
    "dw": (4 * GB, 16 * GB),
    "mixed": (1 * GB, 4 * GB),
}
IO_CONCURRENCY = {"ssd": 200, "nvme": 1000, "hdd": 2}
#: Processes besides the connection backends: postmaster, checkpointer, WAL writer,
#: autovacuum and parallel workers, and the entrypoint's own while it initialises.
PIDS_BESIDES_BACKENDS = 128
#: The group of the short-lived roles ``kbinfra bench`` creates (``kbinfra_bench_<token>``):
#: pg_hba.conf lets its members in over TCP (``+kbinfra_bench``) only while they exist.
BENCH_GROUP = "kbinfra_bench"
#: The data volume's purpose (``<stack>-postgres-data``) until a major upgrade moves it.
DATA_VOLUME = "data"
#: The image's postgres user (the official image's and the test bed's, both Debian's).
POSTGRES_UID = 999
CONFIG_DIR = "/etc/postgresql"
DATA_DIR = "/var/lib/postgresql/data"
#: A streaming replica (Swarm, ``swarm.services.postgres.replica``): its login role, its
#: physical slot on the primary (WAL is kept until the replica has it), and its files.
REPLICATION_ROLE = "kbinfra_replicator"
REPLICATION_SLOT = "kbinfra_replica"
REPLICATION_SCRIPT = "postgres/initdb/30-replication.sh"
REPLICA_START = "postgres/replica/start.sh"
REPLICA_PGPASS = "postgres/replica/pgpass"
REPLICA_DIR = "/etc/postgresql/replica"
#: The primary's stable name on the stack network, which the replica streams from.
PRIMARY_HOST = "postgres"
CONF_FILE = "postgres/postgresql.conf"
HBA_FILE = "postgres/pg_hba.conf"
FILES = (CONF_FILE, HBA_FILE)
#: The consumers' roles (the exporter's, and those other services ask for:
#: ``Service.database_roles``), created at the first start and made so again after every
#: (re)start of the container and whenever the file changes (``Reload``: a rotation's phase):
#: a kept data volume from a stack without them lacks them, and their passwords follow
#: secrets.yaml (:mod:`kbinfra.services.postgres.roles`).
ROLES_FILE = "postgres/roles/roles.sh"
#: It is 0600 and the server's own, so in a folder of its own; the image's entrypoint runs it
#: at initialisation through this one-line script (sourced, as it sources every ``.sh``).
ROLES_DIR = "/etc/postgresql/roles"
ROLES_INITDB = "postgres/initdb/30-service-roles.sh"
#: The superuser's password (``postgres_password``), 0600 and the server's own, beside the
#: roles script. The image's entrypoint sets it at initialisation (``POSTGRES_PASSWORD_FILE``)
#: and the roles script logs in with it, then sets it (``ALTER ROLE``). It is a file, not an
#: environment variable, so ``docker inspect`` does not show it and a rotation delivers it
#: into the running server (``Reload``) instead of recreating it.
SUPERUSER_FILE = "postgres/roles/superuser"
#: During a rotation, the superuser's other value (empty otherwise): the one the server may
#: still hold until the roles script has set the value of ``SUPERUSER_FILE``.
SUPERUSER_OTHER_FILE = "postgres/roles/superuser-other"
INITDB_DIR = "/docker-entrypoint-initdb.d"
#: A login as the superuser over the server's own socket, with ``PGPASSWORD``: the login
#: check's, and the roles script's test of which password the server holds.
SUPERUSER_LOGIN = 'psql -X -w -q -A -t -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "SELECT 1"'
#: The exporter's role on a Swarm, made once at initdb from its Docker secret.
MONITOR_SCRIPT = "postgres/initdb/20-monitor-role.sh"
MONITOR_SCRIPT_TEXT = """#!/bin/sh
# Runs once, when the data directory is initialised: a least-privilege role for the
# postgres exporter. The password comes from the Docker secret file that
# KBINFRA_MONITOR_PASSWORD_FILE names, never from this file.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \\
    -v monitor_password="$(cat "$KBINFRA_MONITOR_PASSWORD_FILE")" <<'SQL'
SELECT format('CREATE ROLE kbinfra_monitor LOGIN PASSWORD %L', :'monitor_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbinfra_monitor')\\gexec
GRANT pg_monitor TO kbinfra_monitor;
SQL
"""
#: Where Debian puts the server binaries when they are not on PATH.
BIN_DIRS_GLOB = "/usr/lib/postgresql/*/bin"
#: ``postgres -C`` prints memory settings as bare numbers in each setting's base unit
#: (PostgreSQL's guc_tables.c): 8kB pages for the buffers, kB for work memory, MB for WAL.
BASE_UNIT_KB = {
    "shared_buffers": 8,
    "effective_cache_size": 8,
    "wal_buffers": 8,
    "maintenance_work_mem": 1,
    "work_mem": 1,
    "min_wal_size": 1024,
    "max_wal_size": 1024,
}
_UNIT_KB = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}


class PostgresSettings(ServiceSettings):
    database: str = Field("kb", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    user: str = Field("kb", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    version: int | None = Field(
        None, ge=13, le=30, description="Major version; read from the image tag when absent"
    )
    max_connections: int | None = Field(None, ge=10, le=10000)
    volume: str = Field(
        DATA_VOLUME,
        pattern=r"^data(-[a-z0-9]{1,20})?$",
        description="The data volume, after `<stack>-postgres-`: `data`, or `data-<major>` "
        "once `kbinfra upgrade` moved the data to a new major version's own volume",
    )
    wal_compression: WalCompression | None = Field(
        None,
        description="Default: lz4 on PostgreSQL 15 and later (PGTune); pglz for a build "
        "without lz4",
    )


class PgTune(NamedTuple):
    """PGTune's settings; memory values in kB."""

    max_connections: int
    shared_buffers_kb: int
    effective_cache_size_kb: int
    maintenance_work_mem_kb: int
    checkpoint_completion_target: float
    wal_buffers_kb: int
    default_statistics_target: int
    random_page_cost: float
    effective_io_concurrency: int
    work_mem_kb: int
    huge_pages: Literal["try", "off"]
    min_wal_size_kb: int
    max_wal_size_kb: int
    max_worker_processes: int | None
    max_parallel_workers_per_gather: int | None
    max_parallel_workers: int | None
    max_parallel_maintenance_workers: int | None
    wal_compression: str | None
    jit: Literal["on", "off"] | None


def pgtune(
    *,
    memory_kb: int,
    cpus: int,
    workload: Workload,
    disk: DiskKind,
    version: int,
    max_connections: int | None = None,
    wal_compression: WalCompression | None = None,
) -> PgTune:
    """PGTune's formulas (FACTS.md) for ``memory_kb`` of RAM and ``cpus`` cores."""
    connections = max_connections or MAX_CONNECTIONS[workload]
    shared_buffers = memory_kb // 4
    maintenance = memory_kb // (8 if workload == "dw" else 16)
    maintenance = min(maintenance, 8 * GB)
    wal_buffers = min(shared_buffers * 3 // 100, 16 * MB)
    if 14 * MB < wal_buffers < 16 * MB:
        wal_buffers = 16 * MB  # PGTune rounds "nearly 16MB" up to the WAL segment size
    wal_buffers = max(wal_buffers, 32)

    parallel = cpus >= 4
    gather = min(math.ceil(cpus / 2), 4) if parallel else None
    workers_for_memory = cpus if parallel else 8
    work_mem = (memory_kb - shared_buffers) // ((connections + workers_for_memory) * 3)
    if workload in ("dw", "mixed"):
        work_mem //= 2
    work_mem = max(work_mem, 4 * MB)

    min_wal, max_wal = WAL_SIZE[workload]
    return PgTune(
        max_connections=connections,
        shared_buffers_kb=shared_buffers,
        effective_cache_size_kb=memory_kb * 3 // 4,
        maintenance_work_mem_kb=maintenance,
        checkpoint_completion_target=0.9,  # PGTune's value for every workload
        wal_buffers_kb=wal_buffers,
        default_statistics_target=500 if workload == "dw" else 100,
        random_page_cost=4.0 if disk == "hdd" else 1.1,
        effective_io_concurrency=IO_CONCURRENCY[disk],
        work_mem_kb=work_mem,
        huge_pages="try" if shared_buffers >= 2 * GB else "off",
        min_wal_size_kb=min_wal,
        max_wal_size_kb=max_wal,
        max_worker_processes=cpus if parallel else None,
        max_parallel_workers_per_gather=gather,
        max_parallel_workers=cpus if parallel else None,
        max_parallel_maintenance_workers=gather,
        wal_compression=wal_compression or ("lz4" if version >= 15 else "on"),
        jit=None if workload == "dw" else "off",
    )


def format_kb(kb: int) -> str:
    """PostgreSQL's units: 2097152 → ``2GB``, 16384 → ``16MB``, 1000 → ``1000kB``."""
    if kb % GB == 0:
        return f"{kb // GB}GB"
    if kb % MB == 0:
        return f"{kb // MB}MB"
    return f"{kb}kB"


def major_version(image: str, override: int | None) -> int:
    """The major version from ``postgres:17.6-bookworm``-like tags, unless set explicitly."""
    if override is not None:
        return override
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    match = re.match(r"^(\d+)", tag)
    if match is None:
        raise SpecError(
            f"cannot tell the PostgreSQL major version of image {image!r} from its tag",
            where="kbinfra.yaml: services.postgres",
            fix="set services.postgres.version (e.g. `version: 16`) or use a tag that starts "
            "with it (postgres:16.4)",
        )
    return int(match.group(1))


def expected_settings(tune: PgTune) -> dict[str, str]:
    """Every rendered setting, normalised as :func:`normalise_setting` prints it."""
    expected = {}
    for key, value in tune._asdict().items():
        if value is None:
            continue
        name = key.removesuffix("_kb")
        expected[name] = normalise_setting(
            name, f"{value}kB" if key.endswith("_kb") else str(value)
        )
    return expected


def normalise_setting(name: str, value: str) -> str:
    """One spelling per value: memory in kB, numbers as floats, words lower-case."""
    value = value.strip().strip("'")
    if name in BASE_UNIT_KB:
        match = re.fullmatch(r"(\d+)\s*(B|kB|MB|GB|TB)?", value)
        if match is None:
            return value
        number, unit = match.groups()
        kb = int(number) * (_UNIT_KB[unit] if unit else BASE_UNIT_KB[name])
        return f"{int(kb)}kB"
    try:
        return repr(float(value))
    except ValueError:
        return value.lower()


class Postgres(Service):
    name = "postgres"
    allocation = "postgres"
    settings_model = PostgresSettings
    default_image = "postgres:17.6-bookworm"
    container_port = 5432
    default_host_port = 5432
    secrets = ("postgres_password", "postgres_monitor_password")
    stage = "data"

    def secret_file_env(self, env_var: str) -> str | None:
        """The image's entrypoint reads ``POSTGRES_PASSWORD_FILE``; the monitor role's initdb
        script reads ``KBINFRA_MONITOR_PASSWORD_FILE`` when rendered for a Swarm."""
        return f"{env_var}_FILE"

    def tuning(self, ctx: ServiceContext) -> PgTune:
        settings: PostgresSettings = ctx.settings
        return pgtune(
            memory_kb=ctx.resources.memory_mb * MB,
            cpus=max(1, math.floor(ctx.resources.cpus)),
            workload=ctx.stack.workload,
            disk=ctx.profile.host.disk,
            version=major_version(ctx.image, settings.version),
            max_connections=settings.max_connections,
            wal_compression=settings.wal_compression,
        )

    def data_volume(self, ctx: ServiceContext) -> str:
        """``<stack>-postgres-data``, or the volume a major upgrade moved the data to."""
        settings: PostgresSettings = ctx.settings
        return ctx.volume(settings.volume)

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        tune = self.tuning(ctx)
        memory = {
            key.removesuffix("_kb"): format_kb(value)
            for key, value in tune._asdict().items()
            if key.endswith("_kb")
        }
        return {
            "tune": tune,
            "memory": memory,
            "settings": ctx.settings,
            "tcp_roles": self.tcp_roles(ctx),
            "service_roles": self.service_roles(ctx),
            "login_roles": login_roles,
            "replication_role": REPLICATION_ROLE if self.has_replica(ctx) else None,
        }

    def service_roles(self, ctx: ServiceContext) -> list[DatabaseRole]:
        """The roles the enabled services log in as, each owner of its own database."""
        return [role for s, own in enabled_services(ctx) for role in s.database_roles(own)]

    def consumer_roles(self, ctx: ServiceContext) -> list[ConsumerRole]:
        """The consumers that log in through two alternating login roles: the exporter and
        every service role; none on a Swarm, where the exporter's role is made at initdb
        from its Docker secret (``20-monitor-role.sh``) and no service asks for one."""
        if not alternating_roles(ctx):
            return []
        return [
            ConsumerRole(MONITOR_ROLE, MONITOR_SECRET, grants=("pg_monitor",)),
            *(
                ConsumerRole(role.role, role.password_secret, role.database)
                for role in self.service_roles(ctx)
            ),
        ]

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """The consumers' roles (0600: SCRAM verifiers), the superuser's password files (0600),
        and the replica's files."""
        roles = self.consumer_roles(ctx)
        accepted = ctx.accepted("postgres_password")
        role_files = (
            [
                RenderedFile(ROLES_FILE, roles_script(ctx, roles), mode=0o600, secret=True),
                RenderedFile(ROLES_INITDB, f"#!/bin/sh\nsh {roles_path()}\n"),
                RenderedFile(SUPERUSER_FILE, accepted[0], mode=0o600, secret=True),
                RenderedFile(SUPERUSER_OTHER_FILE, "".join(accepted[1:]), mode=0o600, secret=True),
            ]
            if roles
            else [RenderedFile(MONITOR_SCRIPT, MONITOR_SCRIPT_TEXT)]
        )
        return role_files + self.replica_files(ctx)

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        roles = self.service_roles(ctx)
        if len(roles) != 1:
            return {}
        role = roles[0]
        value = ctx.secrets[role.password_secret]
        login = login_role(role.role, value)
        password = quote(value, safe="")
        return {"DATABASE_URL": f"postgresql://{login}:{password}@{self.address()}/{role.database}"}

    def tcp_roles(self, ctx: ServiceContext) -> list[str]:
        """The roles pg_hba.conf lets in over TCP. The stack user is the image's superuser
        (``POSTGRES_USER``): the app logs in as it, and so do kbinfra's checks (``kbinfra
        check``) and backups (``pg_dump`` needs to read every table); the exporter logs in
        as a login role of its ``pg_monitor`` role (:mod:`.roles`), and ``kbinfra bench`` as
        members of its group. Every other role connects only over the socket."""
        settings: PostgresSettings = ctx.settings
        # The owner too: an older stack's clients log in as it until their next apply.
        logins = login_roles(MONITOR_ROLE) if alternating_roles(ctx) else ()
        return [settings.user, MONITOR_ROLE, *logins, f"+{BENCH_GROUP}"]

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: PostgresSettings = ctx.settings
        roles = self.consumer_roles(ctx)
        swarm = not alternating_roles(ctx)
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            command=[
                "postgres",
                "-c",
                f"config_file={CONFIG_DIR}/postgresql.conf",
                "-c",
                f"hba_file={CONFIG_DIR}/pg_hba.conf",
            ],
            env={
                "POSTGRES_DB": settings.database,
                "POSTGRES_USER": settings.user,
                **({"POSTGRES_PASSWORD_FILE": in_roles_dir(SUPERUSER_FILE)} if roles else {}),
            },
            # No password is here on one host (a rotation would recreate the server): the
            # superuser's is a file (``SUPERUSER_FILE``); on a Swarm each is a Docker secret.
            secret_env=(
                {
                    "POSTGRES_PASSWORD": "postgres_password",
                    "KBINFRA_MONITOR_PASSWORD": MONITOR_SECRET,
                }
                if swarm
                else {}
            ),
            ports=ctx.loopback_port(5432),
            volumes=[VolumeMount(volume=self.data_volume(ctx), target=DATA_DIR)],
            files=[
                FileMount(
                    source="postgres/postgresql.conf", target=f"{CONFIG_DIR}/postgresql.conf"
                ),
                FileMount(source="postgres/pg_hba.conf", target=f"{CONFIG_DIR}/pg_hba.conf"),
                FileMount(
                    source="postgres/initdb/10-monitoring.sql",
                    target="/docker-entrypoint-initdb.d/10-monitoring.sql",
                ),
                *(
                    [
                        FileMount(
                            source=MONITOR_SCRIPT,
                            target=f"{INITDB_DIR}/{MONITOR_SCRIPT.rsplit('/', 1)[-1]}",
                        )
                    ]
                    if swarm
                    else []
                ),
                *(
                    [
                        FileMount(
                            source=ROLES_FILE,
                            target=roles_path(),
                            uid=POSTGRES_UID,
                            gid=POSTGRES_UID,
                        ),
                        FileMount(
                            source=ROLES_INITDB,
                            target=f"{INITDB_DIR}/{ROLES_INITDB.rsplit('/', 1)[-1]}",
                        ),
                        *(
                            FileMount(
                                source=source,
                                target=in_roles_dir(source),
                                uid=POSTGRES_UID,
                                gid=POSTGRES_UID,
                            )
                            for source in (SUPERUSER_FILE, SUPERUSER_OTHER_FILE)
                        ),
                    ]
                    if roles
                    else []
                ),
                *(
                    [
                        FileMount(
                            source=REPLICATION_SCRIPT,
                            target="/docker-entrypoint-initdb.d/30-replication.sh",
                        ),
                        FileMount(
                            source=REPLICA_PGPASS,
                            target=f"{REPLICA_DIR}/pgpass",
                            uid=POSTGRES_UID,
                            gid=POSTGRES_UID,
                        ),
                    ]
                    if self.has_replica(ctx)
                    else []
                ),
            ],
            healthcheck=HealthCheck(
                test=["CMD-SHELL", 'pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'],
                interval_s=5,
                retries=12,
                start_period_s=20,
            ),
            # A changed roles script or superuser password (a rotation's phase) is run in the
            # running server.
            reload=(
                Reload(
                    files=(ROLES_FILE, SUPERUSER_FILE, SUPERUSER_OTHER_FILE),
                    test=("sh", "-n", roles_path()),
                    command=("sh", roles_path()),
                )
                if roles
                else None
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            # Parallel queries use POSIX dynamic shared memory in /dev/shm (64 MB by default).
            shm_size_mb=max(256, ctx.resources.memory_mb // 8),
            stop_timeout_s=60,
            # It starts as postgres: the entrypoint chowns PGDATA and the socket folder and
            # drops to postgres (gosu) only when started as root. A kept PGDATA that postgres
            # does not own is handed to it first by a one-shot container (``data_owner``), and
            # the socket folder is a tmpfs of its own: PostgreSQL needs no capability at all.
            user=f"{POSTGRES_UID}:{POSTGRES_UID}",
            data_owner=f"{POSTGRES_UID}:{POSTGRES_UID}",
            tmpfs=(
                TmpfsMount(
                    "/var/run/postgresql",
                    size_mb=8,
                    options=f"noexec,nosuid,nodev,uid={POSTGRES_UID},gid={POSTGRES_UID},mode=2775",
                ),
                TmpfsMount("/tmp"),
            ),
            # One process per connection, plus the background workers.
            pids_limit=max(
                ctx.resources.pids, self.tuning(ctx).max_connections + PIDS_BESIDES_BACKENDS
            ),
        )

    def has_replica(self, ctx: ServiceContext) -> bool:
        return ctx.stack.placement(self.name).replica is not None

    def replication_password(self, ctx: ServiceContext) -> str:
        return derived_password(ctx.secrets["postgres_password"], "kbinfra postgres replication")

    def replica_files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """With a replica: the primary's initdb script that creates the replication role and
        slot (0600: it holds the role's password), the replica's start script and its
        pgpass file (0600)."""
        if not self.has_replica(ctx):
            return []
        password = self.replication_password(ctx)
        create = (
            "#!/bin/sh\n"
            "# Runs once, when the primary's data directory is initialised: the role a streaming\n"
            "# replica logs in as (REPLICATION, nothing else) and its physical slot. The password\n"
            "# is read from the replica's pgpass file (0600), never written here.\n"
            "set -eu\n"
            f'password="$(cut -d: -f5 {REPLICA_DIR}/pgpass)"\n'
            'psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" '
            "-v replication_password=\"$password\" <<'SQL'\n"
            f"SELECT format('CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN PASSWORD %L',\n"
            "              :'replication_password')\n"
            f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_ROLE}')\\gexec\n"
            f"SELECT pg_create_physical_replication_slot('{REPLICATION_SLOT}')\n"
            "WHERE NOT EXISTS (SELECT FROM pg_replication_slots\n"
            f"                  WHERE slot_name = '{REPLICATION_SLOT}');\n"
            "SQL\n"
        )
        conninfo = (
            f"host={PRIMARY_HOST} port=5432 user={REPLICATION_ROLE} "
            f"passfile={REPLICA_DIR}/pgpass application_name={ctx.stack.name}_replica"
        )
        start = (
            "#!/bin/sh\n"
            f"# Streaming replica of PostgreSQL in stack {ctx.stack.name!r}: an empty data\n"
            "# directory is filled from the primary by pg_basebackup, then it follows the\n"
            "# primary read-only (hot standby). No automatic failover: docs/swarm.md.\n"
            "set -eu\n"
            f'if [ ! -s "{DATA_DIR}/PG_VERSION" ]; then\n'
            f"  pg_basebackup --host={PRIMARY_HOST} --port=5432 --username={REPLICATION_ROLE} "
            f"--no-password --pgdata={DATA_DIR} --wal-method=stream --slot={REPLICATION_SLOT} "
            "--checkpoint=fast\n"
            f"  chmod 0700 {DATA_DIR}\n"
            "fi\n"
            f"touch {DATA_DIR}/standby.signal\n"
            f"exec postgres -c config_file={CONFIG_DIR}/postgresql.conf "
            f"-c hba_file={CONFIG_DIR}/pg_hba.conf "
            f"-c primary_conninfo='{conninfo}' -c primary_slot_name={REPLICATION_SLOT} "
            "-c hot_standby=on\n"
        )
        return [
            RenderedFile(REPLICATION_SCRIPT, create),
            RenderedFile(REPLICA_START, start),
            RenderedFile(
                REPLICA_PGPASS,
                f"{PRIMARY_HOST}:5432:replication:{REPLICATION_ROLE}:{password}\n",
                mode=0o600,
                secret=True,
            ),
        ]

    def replica_container(self, ctx: ServiceContext) -> ContainerSpec | None:
        """The primary's container, started by the replica's script instead of the image's
        entrypoint (which would initdb an empty volume), on a volume of its own."""
        if not self.has_replica(ctx):
            return None
        primary = self.container(ctx)
        return primary._replace(
            service=f"{self.name}-replica",
            entrypoint=["/bin/sh", f"{REPLICA_DIR}/start.sh"],
            command=None,
            env={"PGPASSFILE": f"{REPLICA_DIR}/pgpass"},
            secret_env={},
            ports=[],
            volumes=[VolumeMount(volume=ctx.volume("replica"), target=DATA_DIR)],
            files=[
                *[f for f in primary.files if "initdb" not in f.source],
                FileMount(source=REPLICA_START, target=f"{REPLICA_DIR}/start.sh"),
            ],
            healthcheck=HealthCheck(
                test=["CMD-SHELL", "pg_isready -h 127.0.0.1 -d postgres"],
                interval_s=5,
                retries=12,
                start_period_s=120,
            ),
        )

    def login_check(self, ctx: ServiceContext) -> LoginCheck:
        """``pg_isready`` needs no password, and the image sets the password only when it
        initializes an empty volume: log in as the stack's user, over the local socket, with
        the stack's password (from the container's environment, never on a command line)."""
        settings: PostgresSettings = ctx.settings
        volume = self.data_volume(ctx)
        login = f'PGPASSWORD="$POSTGRES_PASSWORD" exec {SUPERUSER_LOGIN}'
        if self.consumer_roles(ctx):
            # (Re)make the consumers' roles and the superuser's password (idempotent, as at
            # initialisation), then log in with the password clients use.
            login = (
                f'sh {roles_path()} && PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")" '
                f"exec {SUPERUSER_LOGIN}"
            )
        return LoginCheck(
            command=["sh", "-c", login],
            failure=(
                f"the stack's postgres_password does not open database {settings.database!r} "
                f"as role {settings.user!r}: volume {volume} keeps the password of the stack "
                "that initialized it"
            ),
            fix=(
                "put that stack's postgres_password back in secrets.yaml (from your safe copy "
                "of its secrets) and apply again; or, if its data is not needed, run "
                f"`kbinfra destroy --delete-data --confirm-name {ctx.stack.name}` and apply"
            ),
        )


def in_roles_dir(source: str) -> str:
    """Where the rendered file ``source`` of ``postgres/roles/`` is in the container."""
    return f"{ROLES_DIR}/{source.rsplit('/', 1)[-1]}"


def roles_path() -> str:
    return in_roles_dir(ROLES_FILE)


def alternating_roles(ctx: ServiceContext) -> bool:
    """Whether the consumers log in through alternating login roles (not on a Swarm)."""
    return ctx.stack.target != SWARM_TARGET


def roles_script(ctx: ServiceContext, roles: list[ConsumerRole]) -> str:
    """A shell script that makes each consumer's roles and the superuser's password as they
    should be: run at initialisation, after every start, and whenever it or a superuser
    password file changes. It logs in with the superuser's password file, or during a
    rotation with its other value (the server holds that one until this script has run); the
    passwords are in it as SCRAM verifiers only (the file is 0600)."""
    settings: PostgresSettings = ctx.settings
    superuser = ctx.secrets["postgres_password"]
    lines = [
        "#!/bin/sh",
        "# Rendered by kbinfra: each consumer's owner role (NOLOGIN, not a superuser, no",
        "# CREATEDB, no CREATEROLE) and its two alternating login roles, and the superuser's",
        "# password (docs/operations.md, Secrets rotation). Idempotent: it runs when the data",
        "# directory is initialised, after every start of the container and whenever it or a",
        "# superuser password file changes.",
        "set -eu",
        f'PGPASSWORD="$(cat {in_roles_dir(SUPERUSER_FILE)})"',
        "export PGPASSWORD",
        f"if ! {SUPERUSER_LOGIN} >/dev/null 2>&1; then",
        f'  other="$(cat {in_roles_dir(SUPERUSER_OTHER_FILE)})"',
        '  if [ -z "$other" ]; then',
        '    echo "postgres_password (secrets.yaml) does not open the server as $POSTGRES_USER:'
        " it keeps the password it was initialized or last rotated with; put that value back"
        ' in secrets.yaml, and change it only with: kbinfra secrets rotate postgres_password" >&2',
        "    exit 1",
        "  fi",
        '  PGPASSWORD="$other"',
        "fi",
        'psql -v ON_ERROR_STOP=1 -X -q -w --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" '
        "<<'SQL'",
    ]
    for role in roles:
        lines += consumer_sql(role, ctx.accepted(role.password_secret))
    lines.append(
        f"ALTER ROLE {settings.user} WITH PASSWORD '{scram_verifier(settings.user, superuser)}';"
    )
    lines.append("SQL")
    return "\n".join(lines) + "\n"


SERVICE = Postgres()
SERVICES = (SERVICE, EXPORTER)
