"""PostgreSQL: PGTune-derived settings, scram-only access, pg_stat_statements and views."""

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import Field

from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    Service,
    ServiceContext,
    ServiceSettings,
    VolumeMount,
)
from kbinfra.services.postgres.exporter import SERVICE as EXPORTER

if TYPE_CHECKING:
    from kbinfra.validation import CheckResult

Workload = Literal["web", "oltp", "dw", "mixed"]
DiskKind = Literal["ssd", "nvme", "hdd"]

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
CONFIG_DIR = "/etc/postgresql"
DATA_DIR = "/var/lib/postgresql/data"
CONF_FILE = "postgres/postgresql.conf"
HBA_FILE = "postgres/pg_hba.conf"
FILES = (CONF_FILE, HBA_FILE)
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
        wal_compression="lz4" if version >= 15 else "on",
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
        raise ValueError(
            f"cannot tell the PostgreSQL major version of image {image!r}; "
            "set services.postgres.version in kbinfra.yaml"
        )
    return int(match.group(1))


class Postgres(Service):
    name = "postgres"
    allocation = "postgres"
    settings_model = PostgresSettings
    default_image = "postgres:17.6-bookworm"
    container_port = 5432
    default_host_port = 5432
    secrets = ("postgres_password", "postgres_monitor_password")
    stage = "data"

    def tuning(self, ctx: ServiceContext) -> PgTune:
        settings: PostgresSettings = ctx.settings
        return pgtune(
            memory_kb=ctx.resources.memory_mb * MB,
            cpus=max(1, math.floor(ctx.resources.cpus)),
            workload=ctx.stack.workload,
            disk=ctx.profile.host.disk,
            version=major_version(ctx.image, settings.version),
            max_connections=settings.max_connections,
        )

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        tune = self.tuning(ctx)
        memory = {
            key.removesuffix("_kb"): format_kb(value)
            for key, value in tune._asdict().items()
            if key.endswith("_kb")
        }
        return {"tune": tune, "memory": memory, "settings": ctx.settings}

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: PostgresSettings = ctx.settings
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
            env={"POSTGRES_DB": settings.database, "POSTGRES_USER": settings.user},
            secret_env={
                "POSTGRES_PASSWORD": "postgres_password",
                "KBINFRA_MONITOR_PASSWORD": "postgres_monitor_password",
            },
            ports=ctx.loopback_port(5432),
            volumes=[VolumeMount(volume=ctx.volume(), target=DATA_DIR)],
            files=[
                FileMount(
                    source="postgres/postgresql.conf", target=f"{CONFIG_DIR}/postgresql.conf"
                ),
                FileMount(source="postgres/pg_hba.conf", target=f"{CONFIG_DIR}/pg_hba.conf"),
                FileMount(
                    source="postgres/initdb/10-monitoring.sql",
                    target="/docker-entrypoint-initdb.d/10-monitoring.sql",
                ),
                FileMount(
                    source="postgres/initdb/20-monitor-role.sh",
                    target="/docker-entrypoint-initdb.d/20-monitor-role.sh",
                ),
            ],
            healthcheck=HealthCheck(
                test=["CMD-SHELL", 'pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'],
                interval_s=5,
                retries=12,
                start_period_s=20,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            # Parallel queries use POSIX dynamic shared memory in /dev/shm (64 MB by default).
            shm_size_mb=max(256, ctx.resources.memory_mb // 8),
            stop_timeout_s=60,
        )

    def check_rendered(self, ctx: ServiceContext, out: Path) -> list["CheckResult"]:
        """Read every tuned setting back with the real ``postgres -C``, then start a server.

        ``-C`` parses the file and prints one setting without starting anything, so the
        large profile's 16 GB of shared_buffers is never allocated. pg_hba.conf is only read
        by a running postmaster: a short start on a unix socket (no TCP, 16 MB of
        shared_buffers) loads it, and psql without a password must then be refused.
        """
        from kbinfra.validation import CheckResult, find_tool, skipped  # noqa: PLC0415

        postgres = find_tool("postgres", *postgres_bin_dirs())
        if postgres is None:
            return [skipped(path, "postgres") for path in FILES]
        if not _can_run_server():
            reason = "running as root, and there is no postgres OS user to run the server as"
            return [CheckResult(path, "postgres", "skipped", reason) for path in FILES]
        settings: PostgresSettings = ctx.settings
        return run_postgres_checks(
            Path(postgres).resolve().parent,  # initdb and psql sit next to the real binary
            out,
            expected_settings(self.tuning(ctx)),
            rendered_major=major_version(ctx.image, settings.version),
        )


SERVICE = Postgres()
SERVICES = (SERVICE, EXPORTER)


# --- ``kbinfra render --check`` helpers ---------------------------------------------------


def postgres_bin_dirs() -> list[str]:
    """Debian's per-version bin folders, newest major first."""
    import glob  # noqa: PLC0415

    def major(folder: str) -> int:
        version = Path(folder).parent.name
        return int(version) if version.isdigit() else 0

    return sorted(glob.glob(BIN_DIRS_GLOB), key=major, reverse=True)


def _can_run_server() -> bool:
    """PostgreSQL refuses root: as root we need the ``postgres`` OS user to switch to."""
    import os  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


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


def _setting_line(conf_text: str, name: str) -> int | None:
    """The last line that sets ``name`` (the one PostgreSQL keeps)."""
    found = None
    for number, line in enumerate(conf_text.splitlines(), start=1):
        if re.match(rf"\s*{re.escape(name)}\s*=", line):
            found = number
    return found


def _value_line(conf_text: str, value: str) -> int | None:
    """The first setting line (not a comment) that mentions ``value``."""
    for number, line in enumerate(conf_text.splitlines(), start=1):
        setting = line.split("#", 1)[0]
        if "=" in setting and value in setting:
            return number
    return None


def config_errors(output: str, conf_text: str, scratch: Path) -> list["CheckResult"]:
    """PostgreSQL's complaints about the rendered file, each pointed at its line."""
    from kbinfra.validation import CheckResult  # noqa: PLC0415

    messages: list[str] = []
    kept = False
    for row in output.replace(f"{scratch}/", "").splitlines():
        match = re.search(r"\b(LOG|ERROR|FATAL|HINT):\s+(.*)", row)
        if match is None:
            continue
        level, message = match.groups()
        if level == "HINT":
            if kept:
                messages[-1] += f" ({message})"
            continue
        # A start logs plenty of LOG lines: only those naming a parameter or a line are errors.
        kept = "contains errors" not in message and (
            level != "LOG" or re.search(r'parameter "|\bline \d+', message) is not None
        )
        if kept:
            messages.append(message)
    results = []
    for message in messages:
        line_match = re.search(r"\bline (\d+)", message)
        param = re.search(r'parameter "([^"]+)"', message)
        quoted = re.search(r'"([^"]+)"', message)
        if line_match:
            line: int | None = int(line_match[1])
        elif param:
            line = _setting_line(conf_text, param[1])
        else:  # e.g. a library named in shared_preload_libraries that does not exist
            line = _value_line(conf_text, quoted[1]) if quoted else None
        results.append(CheckResult(CONF_FILE, "postgres", "failed", message, line))
    if not results:
        last = output.strip().splitlines()[-1:] or ["no output"]
        results.append(CheckResult(CONF_FILE, "postgres", "failed", last[0]))
    return results


class Scratch(NamedTuple):
    """One check's copies of the rendered files, the binaries, and the user to run them as."""

    bin_dir: Path
    folder: Path
    data: Path
    user: str | None

    @property
    def conf(self) -> Path:
        return self.folder / "postgresql.conf"

    @property
    def hba(self) -> Path:
        return self.folder / "pg_hba.conf"

    def postgres(self, *options: str) -> list[str]:
        """``postgres -D <scratch cluster> -c config_file=<rendered copy> options...``."""
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-c",
            f"config_file={self.conf}",
            *options,
        ]


def run_postgres_checks(
    bin_dir: Path, out: Path, expected: dict[str, str], *, rendered_major: int
) -> list["CheckResult"]:
    """``postgres -C`` for every tuned setting, then a short start that loads pg_hba.conf."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from kbinfra.validation import CheckResult, run_tool  # noqa: PLC0415

    user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
    version = run_tool([str(bin_dir / "postgres"), "--version"]).output
    local = re.search(r"\) (\d+)", version)
    local_major = int(local[1]) if local else 0
    with tempfile.TemporaryDirectory(prefix="kbinfra-pg-") as folder_name:
        folder = Path(folder_name)
        for name in FILES:
            shutil.copyfile(out / name, folder / Path(name).name)
        _give_to(user, folder, *folder.iterdir())
        data = scratch_cluster(bin_dir, user)
        if isinstance(data, str):
            return [CheckResult(CONF_FILE, "initdb", "failed", f"initdb failed: {data}")]
        scratch = Scratch(bin_dir, folder, data, user)
        conf_text = scratch.conf.read_text(encoding="utf-8")
        problems = read_back_settings(scratch, expected, conf_text)
        if problems:
            return problems
        older = f" (PostgreSQL {local_major} here; the stack runs {rendered_major})"
        read_back = CheckResult(
            CONF_FILE,
            "postgres",
            "ok",
            f"postgres -C read all {len(expected)} tuned settings back as rendered"
            + (older if local_major < rendered_major else ""),
        )
        return [read_back, start_with_hba(scratch, conf_text)]


def read_back_settings(
    scratch: Scratch, expected: dict[str, str], conf_text: str
) -> list["CheckResult"]:
    """Each tuned setting as PostgreSQL reads it, compared with what kbinfra rendered."""
    from kbinfra.validation import CheckResult, run_tool  # noqa: PLC0415

    problems = []
    for name, want in expected.items():
        run = run_tool(scratch.postgres("-C", name), user=scratch.user, timeout=30)
        if not run.ok:
            return config_errors(run.output, conf_text, scratch.folder)
        got = normalise_setting(name, run.output.splitlines()[0])
        if got != want:
            problems.append(
                CheckResult(
                    CONF_FILE,
                    "postgres",
                    "failed",
                    f"PostgreSQL reads {name} as {got}, kbinfra tuned it to {want}",
                    _setting_line(conf_text, name),
                )
            )
    return problems


def _give_to(user: str | None, *paths: Path) -> None:
    """Hand scratch files to the OS user the server runs as (root's temp folders are 0700)."""
    import shutil  # noqa: PLC0415

    if user is not None:
        for path in paths:
            shutil.chown(path, user, user)


_CLUSTERS: dict[tuple[Path, str | None], Path] = {}


def scratch_cluster(bin_dir: Path, user: str | None) -> Path | str:
    """An initdb'd data folder, made once per process and reused; or initdb's error.

    ``-C`` only reads it, and the short start leaves it cleanly shut down, so every check in
    the process (three profiles in the tests) shares one instead of paying ~1 s of initdb each.
    """
    import atexit  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from kbinfra.validation import run_tool  # noqa: PLC0415

    key = (bin_dir, user)
    if key in _CLUSTERS:
        return _CLUSTERS[key]
    root = Path(tempfile.mkdtemp(prefix="kbinfra-pgdata-"))
    atexit.register(shutil.rmtree, root, True)
    _give_to(user, root)
    data = root / "data"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    run = run_tool([*initdb, "--no-sync"], user=user, timeout=120)
    if not run.ok:
        return (run.output.strip().splitlines() or ["no output"])[-1]
    _CLUSTERS[key] = data
    return data


def start_with_hba(scratch: Scratch, conf_text: str) -> "CheckResult":
    """Start the postmaster on a unix socket with both files; psql must need a password."""
    import signal  # noqa: PLC0415

    from kbinfra.validation import (  # noqa: PLC0415
        CheckResult,
        free_port,
        run_tool,
        server_process,
        wait_until,
    )

    socket_dir = scratch.folder / "socket"
    socket_dir.mkdir()
    _give_to(scratch.user, socket_dir)
    port = str(free_port())
    argv = scratch.postgres(
        *("-c", f"hba_file={scratch.hba}", "-c", f"port={port}", "-c", "listen_addresses="),
        *("-c", f"unix_socket_directories={socket_dir}"),
        # Only for this start: the rendered shared memory may be more than this machine has.
        *("-c", "shared_buffers=16MB", "-c", "huge_pages=off"),
    )
    log = scratch.folder / "postgres.log"
    stop = signal.SIGINT  # fast shutdown
    with server_process(argv, log=log, user=scratch.user, stop_signal=stop) as process:
        if not wait_until(
            lambda: "ready to accept connections" in log.read_text(errors="replace"),
            process,
            timeout=60,
        ):
            return start_failure(log.read_text(errors="replace"), conf_text, scratch.folder)
        psql = scratch.bin_dir / "psql"
        if not psql.is_file():
            return CheckResult(HBA_FILE, "postgres", "ok", "the server started and loaded it")
        login = run_tool(
            [
                str(psql),
                "-h",
                str(socket_dir),
                "-p",
                port,
                "-U",
                "postgres",
                "-w",
                "-c",
                "select 1",
            ],
            user=scratch.user,
            timeout=30,
        )
    if login.ok:
        detail = "psql logged in without a password: pg_hba.conf must not trust anyone"
        return CheckResult(HBA_FILE, "postgres", "failed", detail)
    if "password" not in login.output:
        return CheckResult(HBA_FILE, "postgres", "failed", f"psql: {login.output}")
    detail = "the server started with it and refused psql without a password"
    return CheckResult(HBA_FILE, "postgres", "ok", detail)


def start_failure(log: str, conf_text: str, folder: Path) -> "CheckResult":
    """Why the postmaster did not start: a pg_hba.conf line, or a postgresql.conf problem."""
    from kbinfra.validation import CheckResult  # noqa: PLC0415

    text = log.replace(f"{folder}/", "")
    hba = re.search(
        r'LOG:\s+(.*)\n.*CONTEXT:\s+line (\d+) of configuration file "pg_hba\.conf"', text
    )
    if hba:
        return CheckResult(HBA_FILE, "postgres", "failed", hba[1], int(hba[2]))
    if "could not load pg_hba.conf" in text:
        return CheckResult(HBA_FILE, "postgres", "failed", "could not load pg_hba.conf")
    return config_errors(text, conf_text, folder)[0]
