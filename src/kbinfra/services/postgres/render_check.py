"""``kbinfra render --check`` for PostgreSQL: every tuned setting read back with ``postgres -C``,
then a short-lived scratch cluster that loads pg_hba.conf and must refuse a password-less login.
"""

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import NamedTuple

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.services.postgres.service import (
    BIN_DIRS_GLOB,
    CONF_FILE,
    FILES,
    HBA_FILE,
    SERVICE,
    PostgresSettings,
    expected_settings,
    major_version,
    normalise_setting,
)
from kbinfra.validation import (
    find_tool,
    free_port,
    run_tool,
    server_process,
    skipped,
    wait_until,
)


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """Read every tuned setting back with the real ``postgres -C``, then start a server.

    ``-C`` parses the file and prints one setting without starting anything, so the
    large profile's 16 GB of shared_buffers is never allocated. pg_hba.conf is only read
    by a running postmaster: a short start on a unix socket (no TCP, 16 MB of
    shared_buffers) loads it, and psql without a password must then be refused.
    """
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
        expected_settings(SERVICE.tuning(ctx)),
        rendered_major=major_version(ctx.image, settings.version),
    )


# --- ``kbinfra render --check`` helpers ---------------------------------------------------


def postgres_bin_dirs() -> list[str]:
    """Debian's per-version bin folders, newest major first."""

    def major(folder: str) -> int:
        version = Path(folder).parent.name
        return int(version) if version.isdigit() else 0

    return sorted(glob.glob(BIN_DIRS_GLOB), key=major, reverse=True)


def _can_run_server() -> bool:
    """PostgreSQL refuses root: as root we need the ``postgres`` OS user to switch to."""
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


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


def config_errors(output: str, conf_text: str, scratch: Path) -> list[CheckResult]:
    """PostgreSQL's complaints about the rendered file, each pointed at its line."""
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
) -> list[CheckResult]:
    """``postgres -C`` for every tuned setting, then a short start that loads pg_hba.conf."""

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
) -> list[CheckResult]:
    """Each tuned setting as PostgreSQL reads it, compared with what kbinfra rendered."""

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
    if user is not None:
        for path in paths:
            shutil.chown(path, user, user)


_CLUSTERS: dict[tuple[Path, str | None], Path] = {}


def scratch_cluster(bin_dir: Path, user: str | None) -> Path | str:
    """An initdb'd data folder, made once per process and reused; or initdb's error.

    ``-C`` only reads it, and the short start leaves it cleanly shut down, so every check in
    the process (three profiles in the tests) shares one instead of paying ~1 s of initdb each.
    """

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


def start_with_hba(scratch: Scratch, conf_text: str) -> CheckResult:
    """Start the postmaster on a unix socket with both files; psql must need a password."""

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


def start_failure(log: str, conf_text: str, folder: Path) -> CheckResult:
    """Why the postmaster did not start: a pg_hba.conf line, or a postgresql.conf problem."""
    text = log.replace(f"{folder}/", "")
    hba = re.search(
        r'LOG:\s+(.*)\n.*CONTEXT:\s+line (\d+) of configuration file "pg_hba\.conf"', text
    )
    if hba:
        return CheckResult(HBA_FILE, "postgres", "failed", hba[1], int(hba[2]))
    if "could not load pg_hba.conf" in text:
        return CheckResult(HBA_FILE, "postgres", "failed", "could not load pg_hba.conf")
    return config_errors(text, conf_text, folder)[0]
