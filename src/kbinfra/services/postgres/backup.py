"""PostgreSQL: ``pg_dump -Fc`` per database plus the roles, counted inside the dump's snapshot.

Backup: for each database, one connection opens a REPEATABLE READ transaction and exports
its snapshot; the row counts and sample digests are read in that transaction, and
``pg_dump --snapshot`` dumps exactly that snapshot. So the counts describe the dump even
while the application keeps writing. The dump is streamed out of the container through
``docker exec`` straight into the file, hashed on the way.

The roles are read from the catalog into ``postgres/roles.json`` (names, attributes,
memberships and, with ``--include-secrets``, SCRAM verifiers): structured data, never a script.
Every database is dumped (a copy to restore by hand with ``pg_restore``), but a restore puts
back only the stack's: its own (``services.postgres.database``) and those of the roles the
enabled services log in as (``Service.database_roles``: the app tier's ``kb_app``), each into
a database owned by its role.

Restore: the roles first, each statement built from the validated ``roles.json`` with quoted
identifiers and literals (the roles kbinfra manages are left exactly as they are now); a
``globals.sql`` of an older backup is never run; the roles kbinfra manages (the stack's user,
the exporter's, every service's) keep the attributes and the password kbinfra gave them, so a
restore never locks the app out with an old password. Then each of the stack's databases' dump
is streamed into ``pg_restore --clean --if-exists --single-transaction`` through the exec's
stdin: a failure leaves that database exactly as it was.

Trade-off of the restore transport: writing to the exec's stdin needs the engine to pass a
half-close through (it does, locally and over ``docker system dial-stdio``); the
alternative, ``put_archive`` of the dump into the container and ``pg_restore`` from that
file, is simpler to retry but needs the dump's size free on the target's disk, twice the
I/O, and a temporary copy of the data that must be cleaned up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kbinfra.backup.handler import (
    BackupError,
    BackupHandler,
    BackupOutput,
    Instance,
    Observed,
    ServiceBackup,
    artifact_of,
)
from kbinfra.backup.manifest import Artifact, ArtifactKind, ServiceRecord, not_older
from kbinfra.backup.streams import exec_run, exec_with_stdin, file_chunks
from kbinfra.progress import Progress
from kbinfra.services.postgres.exporter import MONITOR_ROLE
from kbinfra.services.postgres.roles import login_roles

if TYPE_CHECKING:
    import psycopg

    from kbinfra.service import ServiceContext

PORT = 5432
SAMPLE_ROWS = 20
ROLES_PATH = "postgres/roles.json"
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

ROLES_SQL = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
       rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil
FROM pg_roles
WHERE rolname !~ '^pg_'
ORDER BY rolname
"""

PASSWORDS_SQL = """
SELECT rolname, rolpassword FROM pg_authid WHERE rolname !~ '^pg_' AND rolpassword IS NOT NULL
"""

MEMBERSHIPS_SQL = """
SELECT r.rolname, m.rolname, a.admin_option
FROM pg_auth_members a
JOIN pg_roles r ON r.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member
WHERE m.rolname !~ '^pg_'
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
def stack_databases(ctx: ServiceContext) -> dict[str, str | None]:
    """The databases a restore puts back, each with the role that must own it (None: the
    stack's own, owned by the stack's user)."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415 (it imports us)

    owned: dict[str, str | None] = {ctx.settings.database: None}
    for role in SERVICE.service_roles(ctx):
        owned.setdefault(role.database, role.role)
    return owned


def managed_roles(ctx: ServiceContext) -> set[str]:
    """The roles whose attributes and password come from kbinfra, never from a backup."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415

    owners = [MONITOR_ROLE, *(r.role for r in SERVICE.service_roles(ctx))]
    # and each one's two login roles (:mod:`kbinfra.services.postgres.roles`)
    return {ctx.settings.user, *owners, *(login for o in owners for login in login_roles(o))}


def conninfo_dbname(name: str) -> str:
    """``dbname='…'`` for ``-d``: a plain name containing ``=`` would be read as a conninfo."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def dump_path(database: str) -> str:
    """``postgres/<db>.dump``; names that are not file-safe get a hash instead."""
    if _SAFE.match(database) and not database.startswith("."):
        return f"postgres/{database}.dump"
    return f"postgres/db-{hashlib.sha256(database.encode()).hexdigest()[:16]}.dump"


#: A role name as PostgreSQL stores it: 1 to 63 bytes, no NUL; ``pg_`` is reserved.
_ROLE_NAME = r"^[^\x00]{1,63}$"
#: A SCRAM-SHA-256 verifier (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``):
#: the only password form restored; PostgreSQL stores it as given, never as a plain password.
_B64 = "[A-Za-z0-9+/=]{1,100}"
_SCRAM = rf"^SCRAM-SHA-256\$[0-9]{{1,7}}:{_B64}\${_B64}:{_B64}$"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleRecord(_Data):
    """One role as ``pg_roles`` describes it; each field becomes one keyword or literal."""

    name: str = Field(pattern=_ROLE_NAME)
    superuser: bool
    inherit: bool
    createrole: bool
    createdb: bool
    login: bool
    replication: bool
    bypassrls: bool
    connection_limit: int = Field(ge=-1, le=1_000_000)
    valid_until: dt.datetime | None = None
    password: str | None = Field(None, pattern=_SCRAM)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("pg_"):
            raise ValueError(f"{value!r} is a name PostgreSQL reserves for its own roles")
        return value


class Membership(_Data):
    role: str = Field(pattern=r"^[^\x00]{1,63}$")  # may be a predefined pg_ role
    member: str = Field(pattern=_ROLE_NAME)
    admin: bool = False

    @field_validator("member")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        return RoleRecord._not_reserved(value)


class RolesFile(_Data):
    """``postgres/roles.json``."""

    roles: list[RoleRecord] = Field(default_factory=list, max_length=10_000)
    memberships: list[Membership] = Field(default_factory=list, max_length=100_000)


def parse_roles(data: bytes, where: str) -> RolesFile:
    """The roles of a backup, validated by type; anything else is refused in one line."""
    try:
        return RolesFile.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BackupError(
            f"{ROLES_PATH}: {field}: {first['msg']}",
            where=where,
            fix="nothing was changed; this backup cannot be restored, use another",
        ) from None


_ATTRIBUTES = (
    ("superuser", "SUPERUSER"),
    ("inherit", "INHERIT"),
    ("createrole", "CREATEROLE"),
    ("createdb", "CREATEDB"),
    ("login", "LOGIN"),
    ("replication", "REPLICATION"),
    ("bypassrls", "BYPASSRLS"),
)


def role_options(role: RoleRecord) -> list[str]:
    """The fixed keywords of ``ALTER ROLE … WITH``: chosen from booleans, never copied."""
    return [keyword if getattr(role, field) else f"NO{keyword}" for field, keyword in _ATTRIBUTES]


def sample_digest(row_hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()


def major(version: str) -> str:
    return version.split(".", 1)[0]


# ---------------------------------------------------------------- the handler
class PostgresBackup(BackupHandler):
    service = "postgres"
    required_meta: ClassVar[dict[ArtifactKind, tuple[str, ...]]] = {"pg_dump": ("database",)}
    unchecked_kinds: ClassVar[frozenset[ArtifactKind]] = frozenset({"pg_globals", "pg_roles"})

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
        own = instance.settings.database
        with instance.reach(PORT) as address:
            with self._connect(instance, address, own) as connection:
                version = _server_version(connection)
                databases = _databases(connection)
                roles = _roles(connection, with_passwords=out.include_secrets)
            artifacts = [self._write_roles(out, roles)]
            for database in databases:
                out.progress.note(self.service, f"dumping database {database.name}")
                artifacts.append(self._dump_database(instance, out, address, database))
        return ServiceBackup(
            record=instance.record(version, {"databases": [d.name for d in databases]}),
            artifacts=artifacts,
        )

    def _write_roles(self, out: BackupOutput, roles: RolesFile) -> Artifact:
        data = json.dumps(roles.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        with out.file(ROLES_PATH, quiet=True) as handle:
            handle.write(data.encode())
        with_passwords = any(r.password for r in roles.roles)
        return artifact_of(
            handle,
            ROLES_PATH,
            self.service,
            "pg_roles",
            counts={"roles": len(roles.roles)},
            meta={"role_passwords": "yes" if with_passwords else "no"},
            secret=with_passwords,
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
    def restorable(
        self, ctx: ServiceContext, artifacts: list[Artifact], backup_dir: Path
    ) -> tuple[list[Artifact], list[str]]:
        """The roles (validated here, before anything is touched) and the dumps of the stack's
        databases (:func:`stack_databases`); the others are left out."""
        own = ctx.settings.database
        databases = stack_databases(ctx)
        chosen: list[Artifact] = []
        notes: list[str] = []
        for artifact in artifacts:
            if artifact.kind == "pg_roles":
                parse_roles((backup_dir / artifact.path).read_bytes(), str(backup_dir))
                chosen.append(artifact)
            elif artifact.kind == "pg_dump" and artifact.meta["database"] in databases:
                chosen.append(artifact)
            elif artifact.kind == "pg_dump":
                notes.append(
                    f"{artifact.path} not restored: database {artifact.meta['database']!r} is "
                    f"not one of the stack's ({', '.join(sorted(databases))}); restore it by "
                    "hand with pg_restore if needed"
                )
            elif artifact.kind == "pg_globals":
                notes.append(
                    f"{artifact.path} not run: kbinfra never runs a script from a backup, so "
                    "the roles of this older backup were not restored (recreate them by hand)"
                )
        if not any(a.kind == "pg_dump" and a.meta["database"] == own for a in chosen):
            raise BackupError(
                f"the backup holds no dump of database {own!r}, the stack's own",
                fix="nothing was changed; set services.postgres.database to the backup's "
                "database, or leave postgres out with --only",
            )
        return chosen, notes

    def restore(
        self,
        instance: Instance,
        record: ServiceRecord,
        artifacts: list[Artifact],
        backup_dir: Path,
        progress: Progress,
    ) -> list[str]:
        notes: list[str] = []
        owners = stack_databases(instance.ctx)
        roles = [
            parse_roles((backup_dir / a.path).read_bytes(), str(backup_dir))
            for a in artifacts
            if a.kind == "pg_roles"
        ]
        with instance.reach(PORT) as address:
            for found in roles:
                progress.note(self.service, "restoring roles")
                notes += self._restore_roles(instance, address, found)
            for artifact in artifacts:
                if artifact.kind != "pg_dump":
                    continue
                database = str(artifact.meta["database"])
                if self._ensure_database(instance, address, artifact, owners.get(database)):
                    notes.append(f"created database {database}")
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
                            conninfo_dbname(database),
                        ],
                        file_chunks(backup_dir / artifact.path, advance),
                        env=self._env(instance),
                    )
                if result.exit_code != 0:
                    raise BackupError(
                        f"pg_restore into database {database!r} failed, so it rolled back and that "
                        f"database is unchanged: {result.last_error_line()}",
                        where=instance.name,
                    )
        return notes

    def _restore_roles(
        self, instance: Instance, address: tuple[str, int], found: RolesFile
    ) -> list[str]:
        """Create or alter each role from its record, with quoted identifiers and literals.

        The roles kbinfra manages (:func:`managed_roles`) are left as they are: their
        attributes and passwords come from the stack's files and secrets.
        """
        from psycopg import errors, sql  # noqa: PLC0415

        managed = managed_roles(instance.ctx)
        failed: list[str] = []
        with self._connect(instance, address, instance.settings.database) as connection:
            connection.autocommit = True
            existing = {str(row[0]) for row in connection.execute("SELECT rolname FROM pg_roles")}
            statements: list[tuple[str, sql.Composed]] = []
            for role in found.roles:
                if role.name in managed:
                    continue
                name = sql.Identifier(role.name)
                if role.name not in existing:
                    statements.append((role.name, sql.SQL("CREATE ROLE {}").format(name)))
                options: list[sql.Composable] = [sql.SQL(k) for k in role_options(role)]
                options.append(
                    sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role.connection_limit))
                )
                valid = role.valid_until.isoformat() if role.valid_until else "infinity"
                options.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(valid)))
                if role.password is not None:
                    options.append(sql.SQL("PASSWORD {}").format(sql.Literal(role.password)))
                statements.append(
                    (
                        role.name,
                        sql.SQL("ALTER ROLE {} WITH {}").format(name, sql.SQL(" ").join(options)),
                    )
                )
            for membership in found.memberships:
                if membership.member in managed:
                    continue
                grant = sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(membership.role), sql.Identifier(membership.member)
                )
                if membership.admin:
                    grant += sql.SQL(" WITH ADMIN OPTION")
                statements.append((membership.member, grant))
            for role_name, statement in statements:
                try:
                    connection.execute(statement)
                except errors.Error as error:
                    failed.append(f"{role_name}: {str(error).strip().splitlines()[0]}")
        if failed:
            return [f"roles: {len(failed)} statement(s) failed; first: {failed[0]}"]
        return []

    def _ensure_database(
        self, instance: Instance, address: tuple[str, int], artifact: Artifact, owner: str | None
    ) -> bool:
        """Create the dump's database when it is missing, owned by ``owner`` (a service's
        role; None: the stack's user). Whether it had to."""
        from psycopg import errors, sql  # noqa: PLC0415

        name = str(artifact.meta["database"])
        with self._connect(instance, address, "postgres") as connection:
            connection.autocommit = True
            found = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if found:
                return False
            create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            if owner is not None:
                create += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
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


def _roles(connection: psycopg.Connection[Any], *, with_passwords: bool) -> RolesFile:
    passwords: dict[str, str] = {}
    if with_passwords:
        passwords = {
            str(name): str(password)
            for name, password in connection.execute(PASSWORDS_SQL).fetchall()
            if str(password).startswith("SCRAM-SHA-256$")
        }
    roles = [
        RoleRecord(
            name=str(row[0]),
            superuser=row[1],
            inherit=row[2],
            createrole=row[3],
            createdb=row[4],
            login=row[5],
            replication=row[6],
            bypassrls=row[7],
            connection_limit=row[8],
            valid_until=row[9] if row[9] is None or row[9].year < 9999 else None,
            password=passwords.get(str(row[0])),
        )
        for row in connection.execute(ROLES_SQL).fetchall()
    ]
    memberships = [
        Membership(role=str(role), member=str(member), admin=bool(admin))
        for role, member, admin in connection.execute(MEMBERSHIPS_SQL).fetchall()
    ]
    return RolesFile(roles=roles, memberships=memberships)


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
