"""PostgreSQL: ``pg_dump -Fc`` per database plus the roles, counted inside the dump's snapshot.

Backup: for each database, one connection opens a REPEATABLE READ transaction and exports
its snapshot; the row counts and sample digests are read in that transaction, and
``pg_dump --snapshot`` dumps exactly that snapshot. So the counts describe the dump even
while the application keeps writing. The dump is streamed out of the container through
``docker exec`` straight into the file, hashed on the way.

Restore: the roles first (passwords of the roles kbinfra manages are left as they are now),
then each dump is streamed into ``pg_restore --clean --if-exists --single-transaction``
through the exec's stdin: a failure leaves that database exactly as it was.

Trade-off of the restore transport: writing to the exec's stdin needs the engine to pass a
half-close through (it does, locally and over ``docker system dial-stdio``); the
alternative, ``put_archive`` of the dump into the container and ``pg_restore`` from that
file, is simpler to retry but needs the dump's size free on the target's disk, twice the
I/O, and a temporary copy of the data that must be cleaned up.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.backup.handler import (
    BackupError,
    BackupHandler,
    BackupOutput,
    Instance,
    Observed,
    ServiceBackup,
    artifact_of,
)
from kbinfra.backup.manifest import Artifact, ServiceRecord, not_older
from kbinfra.backup.streams import exec_run, exec_with_stdin, file_chunks
from kbinfra.progress import Progress
from kbinfra.services.postgres.exporter import MONITOR_ROLE

if TYPE_CHECKING:
    import psycopg

PORT = 5432
SAMPLE_ROWS = 20
GLOBALS_PATH = "postgres/globals.sql"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")

#: Every user table: plain, partitioned and (populated) materialized views, not the ones an
#: extension owns (pg_dump does not dump their rows), with the primary key's columns.
TABLES_SQL = """
SELECT n.nspname, c.relname,
       ARRAY(SELECT a.attname::text
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary
             ORDER BY k.ord) AS pk
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND (c.relkind <> 'm' OR c.relispopulated)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

DATABASES_SQL = """
SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype
FROM pg_database
WHERE datallowconn AND NOT datistemplate
ORDER BY datname
"""


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    primary_key: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Database:
    name: str
    encoding: str
    collate: str
    ctype: str


# ---------------------------------------------------------------- pure helpers
def conninfo_dbname(name: str) -> str:
    """``dbname='…'`` for ``-d``: a plain name containing ``=`` would be read as a conninfo."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def dump_path(database: str) -> str:
    """``postgres/<db>.dump``; names that are not file-safe get a hash instead."""
    if _SAFE.match(database) and not database.startswith("."):
        return f"postgres/{database}.dump"
    return f"postgres/db-{hashlib.sha256(database.encode()).hexdigest()[:16]}.dump"


_PASSWORD = re.compile(r" PASSWORD '(?:[^']|'')*'")


def without_passwords_of(sql: str, roles: Sequence[str]) -> str:
    """The globals script minus the ``PASSWORD`` of ``roles``: kbinfra sets those from the
    stack's secrets, and a restore must not replace them with the backup's."""
    prefixes = tuple(f"ALTER ROLE {role} WITH " for role in roles) + tuple(
        f'ALTER ROLE "{role}" WITH ' for role in roles
    )
    return "".join(
        _PASSWORD.sub("", line) if line.startswith(prefixes) else line
        for line in sql.splitlines(keepends=True)
    )


def restore_errors(stderr: str) -> list[str]:
    """psql errors of a globals restore, minus the expected 'role … already exists'."""
    return [
        line.strip()
        for line in stderr.splitlines()
        if "ERROR:" in line and "already exists" not in line
    ]


def sample_digest(row_hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()


def major(version: str) -> str:
    return version.split(".", 1)[0]


# ---------------------------------------------------------------- the handler
class PostgresBackup(BackupHandler):
    service = "postgres"

    def _env(self, instance: Instance, database: str | None = None) -> dict[str, str]:
        env = {
            "PGPASSWORD": instance.secrets["postgres_password"],
            "PGUSER": instance.settings.user,
        }
        if database is not None:
            env["PGDATABASE"] = database
        return env

    @contextmanager
    def _connect(
        self, instance: Instance, address: tuple[str, int], database: str
    ) -> Iterator[psycopg.Connection[Any]]:
        import psycopg  # noqa: PLC0415

        host, port = address
        try:
            connection = psycopg.connect(
                host=host,
                port=port,
                user=instance.settings.user,
                password=instance.secrets["postgres_password"],
                dbname=database,
                connect_timeout=20,
                application_name="kbinfra-backup",
            )
        except psycopg.OperationalError as error:
            raise BackupError(
                f"cannot connect to PostgreSQL database {database!r}: "
                f"{str(error).strip().splitlines()[-1]}",
                where=instance.name,
                fix="check that the service is healthy (`kbinfra status`)",
            ) from None
        with connection:
            yield connection

    # ------------------------------------------------------------ versions
    def version(self, instance: Instance) -> str:
        with (
            instance.reach(PORT) as address,
            self._connect(instance, address, instance.settings.database) as connection,
        ):
            return _server_version(connection)

    def incompatibility(self, backup_version: str, current_version: str) -> str | None:
        if not_older(backup_version, current_version, 1):
            return None
        return (
            f"the backup is of PostgreSQL {backup_version}; this server runs {current_version}, "
            "an older major version that cannot read its dumps"
        )

    def samples_comparable(self, backup_version: str, current_version: str) -> bool:
        """Row text can change between major versions (float output did in 12)."""
        return major(backup_version) == major(current_version)

    # ------------------------------------------------------------ backup
    def backup(self, instance: Instance, out: BackupOutput) -> ServiceBackup:
        with instance.reach(PORT) as address:
            with self._connect(instance, address, instance.settings.database) as connection:
                version = _server_version(connection)
                databases = _databases(connection)
            artifacts = [self._dump_globals(instance, out)]
            for database in databases:
                out.progress.note(self.service, f"dumping database {database.name}")
                artifacts.append(self._dump_database(instance, out, address, database))
        return ServiceBackup(
            record=instance.record(version, {"databases": [d.name for d in databases]}),
            artifacts=artifacts,
        )

    def _dump_globals(self, instance: Instance, out: BackupOutput) -> Artifact:
        command = ["pg_dumpall", "--globals-only", "--no-password"]
        if not out.include_secrets:
            command.append("--no-role-passwords")
        command += ["-l", instance.settings.database]
        with out.file(GLOBALS_PATH) as handle:
            result = exec_run(
                instance.api,
                instance.container_id,
                command,
                env=self._env(instance),
                sink=handle.write,
            )
        if result.exit_code != 0:
            raise BackupError(
                f"pg_dumpall --globals-only failed: {result.last_error_line()}",
                where=instance.name,
            )
        return artifact_of(
            handle,
            GLOBALS_PATH,
            self.service,
            "pg_globals",
            meta={"role_passwords": "yes" if out.include_secrets else "no"},
            secret=out.include_secrets,
        )

    def _dump_database(
        self,
        instance: Instance,
        out: BackupOutput,
        address: tuple[str, int],
        database: Database,
    ) -> Artifact:
        path = dump_path(database.name)
        with self._connect(instance, address, database.name) as connection:
            connection.isolation_level = _repeatable_read()
            connection.read_only = True
            row = connection.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snapshot = str(row[0])
            tables = _tables(connection)
            counts = {t.key: _count(connection, t) for t in tables}
            samples = {
                t.key: _sample(connection, t) for t in tables if t.primary_key and counts[t.key]
            }
            # pg_dump joins the exported snapshot: it dumps exactly what was counted.
            with out.file(path) as handle:
                result = exec_run(
                    instance.api,
                    instance.container_id,
                    [
                        "pg_dump",
                        "--format=custom",
                        f"--snapshot={snapshot}",
                        "--no-password",
                        "-d",
                        conninfo_dbname(database.name),
                    ],
                    env=self._env(instance),
                    sink=handle.write,
                )
            connection.rollback()
        if result.exit_code != 0:
            raise BackupError(
                f"pg_dump of database {database.name!r} failed: {result.last_error_line()}",
                where=instance.name,
            )
        return artifact_of(
            handle,
            path,
            self.service,
            "pg_dump",
            counts=counts,
            samples=samples,
            meta={
                "database": database.name,
                "encoding": database.encoding,
                "collate": database.collate,
                "ctype": database.ctype,
            },
        )

    # ------------------------------------------------------------ restore
    def restore(
        self,
        instance: Instance,
        record: ServiceRecord,
        artifacts: list[Artifact],
        backup_dir: Path,
        progress: Progress,
    ) -> list[str]:
        notes: list[str] = []
        managed = (instance.settings.user, MONITOR_ROLE)
        for artifact in artifacts:
            if artifact.kind != "pg_globals":
                continue
            progress.note(self.service, "restoring roles")
            sql = (backup_dir / artifact.path).read_text(encoding="utf-8")
            script = without_passwords_of(sql, managed).encode("utf-8")
            result = exec_with_stdin(
                instance.api,
                instance.container_id,
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", "postgres", "-f", "-"],
                iter([script]),
                env=self._env(instance),
            )
            errors = restore_errors(result.error_text)
            if result.exit_code != 0 or errors:
                first = errors[0] if errors else result.last_error_line()
                notes.append(f"roles: {len(errors) or 1} statement(s) failed; first: {first}")
        with instance.reach(PORT) as address:
            for artifact in artifacts:
                if artifact.kind != "pg_dump":
                    continue
                name = artifact.meta["database"]
                if self._ensure_database(instance, address, artifact):
                    notes.append(f"created database {name}")
                with progress.transfer(f"{artifact.path} → pg_restore", artifact.size) as advance:
                    result = exec_with_stdin(
                        instance.api,
                        instance.container_id,
                        [
                            "pg_restore",
                            "--clean",
                            "--if-exists",
                            "--single-transaction",
                            "--exit-on-error",
                            "--no-password",
                            "-d",
                            conninfo_dbname(name),
                        ],
                        file_chunks(backup_dir / artifact.path, advance),
                        env=self._env(instance),
                    )
                if result.exit_code != 0:
                    raise BackupError(
                        f"pg_restore into database {name!r} failed, so it rolled back and that "
                        f"database is unchanged: {result.last_error_line()}",
                        where=instance.name,
                    )
        return notes

    def _ensure_database(
        self, instance: Instance, address: tuple[str, int], artifact: Artifact
    ) -> bool:
        from psycopg import errors, sql  # noqa: PLC0415

        name = artifact.meta["database"]
        with self._connect(instance, address, instance.settings.database) as connection:
            connection.autocommit = True
            found = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if found:
                return False
            create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            detailed = create + sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(artifact.meta.get("encoding", "UTF8")),
                sql.Literal(artifact.meta.get("collate", "C")),
                sql.Literal(artifact.meta.get("ctype", "C")),
            )
            try:
                connection.execute(detailed)
            except errors.Error:  # that locale is not on this server: its defaults then
                connection.execute(create)
        return True

    # ------------------------------------------------------------ observe
    def observe(
        self, instance: Instance, record: ServiceRecord, artifacts: list[Artifact]
    ) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        with instance.reach(PORT) as address:
            with self._connect(instance, address, instance.settings.database) as connection:
                present = {d.name for d in _databases(connection)}
            for artifact in artifacts:
                if artifact.kind != "pg_dump":
                    continue
                name = artifact.meta["database"]
                if name not in present:
                    found[artifact.path] = Observed()
                    continue
                with self._connect(instance, address, name) as connection:
                    connection.isolation_level = _repeatable_read()
                    connection.read_only = True
                    tables = _tables(connection)
                    counts = {t.key: _count(connection, t) for t in tables}
                    wanted = set(artifact.samples)
                    samples = {
                        t.key: _sample(connection, t)
                        for t in tables
                        if t.key in wanted and t.primary_key
                    }
                    connection.rollback()
                found[artifact.path] = Observed(counts, samples)
        return found


# ---------------------------------------------------------------- queries
def _repeatable_read() -> Any:
    from psycopg import IsolationLevel  # noqa: PLC0415

    return IsolationLevel.REPEATABLE_READ


def _server_version(connection: psycopg.Connection[Any]) -> str:
    row = connection.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0]).split()[0]


def _databases(connection: psycopg.Connection[Any]) -> list[Database]:
    return [Database(*map(str, row)) for row in connection.execute(DATABASES_SQL).fetchall()]


def _tables(connection: psycopg.Connection[Any]) -> list[Table]:
    return [
        Table(str(schema), str(name), tuple(pk or ()))
        for schema, name, pk in connection.execute(TABLES_SQL).fetchall()
    ]


def _count(connection: psycopg.Connection[Any], table: Table) -> int:
    from psycopg import sql  # noqa: PLC0415

    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(table.schema), sql.Identifier(table.name)
    )
    row = connection.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _sample(connection: psycopg.Connection[Any], table: Table) -> str:
    """The first rows by primary key, each as md5 of its text form, hashed together."""
    from psycopg import sql  # noqa: PLC0415

    order = sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key)
    outer = sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in table.primary_key)
    query = sql.SQL(
        "SELECT md5(t::text) FROM (SELECT * FROM {}.{} ORDER BY {} LIMIT {}) AS t ORDER BY {}"
    ).format(
        sql.Identifier(table.schema),
        sql.Identifier(table.name),
        order,
        sql.Literal(SAMPLE_ROWS),
        outer,
    )
    return sample_digest([str(row[0]) for row in connection.execute(query).fetchall()])


HANDLER = PostgresBackup()
