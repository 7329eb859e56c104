"""PostgreSQL's side of ``kbinfra upgrade``: a data directory belongs to one major version.

PostgreSQL reads a data directory only with the major version that wrote it (``PG_VERSION``
in it says which): a minor upgrade is a new image on the same volume; a major one moves the
data into a new data directory on a volume of its own (:func:`data_migration`), as
PostgreSQL's documentation recommends when ``pg_upgrade`` is not at hand (it needs both
versions' binaries in one image, and no official image has them):

1. the new major's ``pg_dumpall`` (a newer pg_dump reads an older server; the reverse is not
   supported) streams every role and database out of the serving server, straight into
   ``psql`` of a throwaway server of the new major on the new volume (``ON_ERROR_STOP``: the
   first statement the new major refuses stops it);
2. both servers are counted, each database in one snapshot: roles with their attributes,
   memberships and password verifiers, databases, and the rows of every table
   (:func:`compare_data`); any difference stops the upgrade;
3. then the service is switched to the new volume; the old one is kept, as it was when the
   copy was taken, until the user removes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from kbinfra.backup.handler import BackupError
from kbinfra.backup.streams import exec_run
from kbinfra.probing.probe import CheckFailedError, ProbeContext
from kbinfra.services.postgres.backup import (
    HANDLER,
    PORT,
    RolesFile,
    _count,
    _databases,
    _repeatable_read,
    _roles,
    _tables,
)
from kbinfra.services.postgres.service import DATA_DIR, DATA_VOLUME, INITDB_DIR
from kbinfra.upgrade import DataMigration, Refusal, image_version

if TYPE_CHECKING:
    from kbinfra.backup.handler import Instance
    from kbinfra.progress import Progress
    from kbinfra.service import ContainerSpec

#: The copy, run in the new major's throwaway container: its ``pg_dumpall`` reads the
#: serving server over the stack network, its ``psql`` writes into its own server over the
#: image's default socket (as the login check does). Two kinds of line are left out:
#: ``CREATE ROLE`` of the superuser both are initialised with, the one statement that must
#: fail (pg_dumpall says so: the role exists; its ``ALTER ROLE``, attributes and password
#: verifier, is kept); and the ``pg_attver`` column stamp that Debian's PostgreSQL 15.20 sets
#: on every column, which other builds refuse as an unknown column option (any other option
#: the new major refuses stops the copy). A row of data that happened to read exactly like
#: one of those lines would be left out too, and the row counts afterwards would stop it.
COPY_SCRIPT = r"""set -euo pipefail
# The superuser's password: a file on one host, the environment on a Swarm.
export PGPASSWORD="${POSTGRES_PASSWORD:-$(cat "${POSTGRES_PASSWORD_FILE:?}")}"
pg_dumpall --host="$KBINFRA_SOURCE_HOST" --port=5432 --username="$POSTGRES_USER" \
    --no-password --quote-all-identifiers \
  | grep -vxF "CREATE ROLE \"$POSTGRES_USER\";" \
  | grep -vxE 'ALTER TABLE ONLY "[^"]+"\."[^"]+" ALTER COLUMN "[^"]+" SET \(pg_attver=[0-9]+\);' \
  | psql -X -q -v ON_ERROR_STOP=1 --no-password --username="$POSTGRES_USER" \
      --dbname=postgres >/dev/null
"""


def running_version(probe: ProbeContext) -> str:
    """The major version that owns the data directory, from its ``PG_VERSION`` file."""
    code, output = probe.exec(["cat", f"{DATA_DIR}/PG_VERSION"])
    text = output.strip()
    if code != 0 or not text.isdigit():
        raise CheckFailedError(f"cannot read {DATA_DIR}/PG_VERSION: {text[:200]}")
    return text


def _new_major(new_image: str, settings: Any) -> int | Refusal:
    tagged = image_version(new_image)
    declared: int | None = getattr(settings, "version", None)
    if tagged is None and declared is None:
        return Refusal(
            f"cannot tell the PostgreSQL major version of {new_image} from its tag",
            "use a tag that starts with it (postgres:16.4) or set services.postgres.version",
        )
    if tagged is not None and declared is not None and tagged[0] != declared:
        return Refusal(
            f"the tag of {new_image} says PostgreSQL {tagged[0]}, "
            f"services.postgres.version says {declared}",
            "make them agree (or drop `version:` and let the tag say it)",
        )
    new_major = tagged[0] if tagged is not None else declared
    assert new_major is not None
    return new_major


def upgrade_refusal(running: str, new_image: str, settings: Any) -> Refusal | None:
    """None for the same major (a new image on the same volume) and for a newer one (by
    :func:`data_migration`); a refusal for a downgrade or an image whose major is unknown."""
    new_major = _new_major(new_image, settings)
    if isinstance(new_major, Refusal):
        return new_major
    if new_major < int(running):
        return Refusal(
            f"PostgreSQL {new_major} cannot read a data directory of PostgreSQL {running} "
            "(a downgrade)",
            "restore a backup taken on PostgreSQL "
            f"{new_major} into a new data volume instead, or stay on {running}",
        )
    return None


def data_migration(running: str, new_image: str, settings: Any) -> DataMigration | None:
    """A newer major: dump and restore into ``data-<major>``; None for the same major."""
    new_major = _new_major(new_image, settings)
    if isinstance(new_major, Refusal) or new_major <= int(running):
        return None
    volume = f"{DATA_VOLUME}-{new_major}"
    old_volume: str = getattr(settings, "volume", DATA_VOLUME)
    return DataMigration(
        summary=f"PostgreSQL {running} → {new_major} by dump and restore into a new volume",
        settings={"volume": volume},
        volume_purpose=volume,
        old_volume_purpose=old_volume,
        steps=(
            "pause the app's writers (its API and workers) until the switch is done",
            f"start PostgreSQL {new_major} on the new volume (purpose {volume}), beside {running}",
            f"copy every role and database: PostgreSQL {new_major}'s pg_dumpall into its psql",
            "count both: roles, memberships, passwords, databases, rows per table",
            f"switch postgres to PostgreSQL {new_major} on the new volume (health-gated; a "
            f"failure puts {running} back on its volume)",
            "keep the old volume as it was at the copy, until you remove it",
        ),
    )


def migration_container(spec: ContainerSpec) -> ContainerSpec:
    """The new major's throwaway server: initialised empty (only the image's own initdb with
    the stack's superuser and password; no database of the stack's, no init script), so the
    copy brings every role and database exactly as they are."""
    return spec._replace(
        env={**spec.env, "POSTGRES_DB": "postgres"},
        files=tuple(f for f in spec.files if not f.target.startswith(f"{INITDB_DIR}/")),
    )


def copy_data(source: Instance, copy: Instance, progress: Progress) -> None:
    """Every role and database of ``source`` into ``copy``'s empty server."""
    progress.note(source.service, "copying every role and database (pg_dumpall | psql)")
    done = exec_run(
        copy.api,
        copy.container_id,
        ["bash", "-c", COPY_SCRIPT],
        env={"KBINFRA_SOURCE_HOST": source.desired.service},
    )
    if done.exit_code != 0:
        lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line]
        raise BackupError(
            f"the copy into the new major version failed (exit {done.exit_code}): "
            + " / ".join(lines[-3:])[:400],
            where=copy.name,
            fix="make the old server's data acceptable to the new version (the line above "
            "names what it refused), then upgrade again",
        )


class Census(NamedTuple):
    """What must be the same on both sides of a major upgrade."""

    roles: RolesFile
    databases: dict[str, tuple[str, ...]]  # name -> encoding, collate, ctype
    rows: dict[str, dict[str, int]]  # database -> schema.table -> rows


def census(instance: Instance) -> Census:
    """Every role (with its password verifier), database and table's row count, each
    database read in one snapshot."""
    with instance.reach(PORT) as address:
        own = instance.settings.database
        with HANDLER._connect(instance, address, own) as connection:
            roles = _roles(connection, with_passwords=True)
            databases = _databases(connection)
        rows: dict[str, dict[str, int]] = {}
        for database in databases:
            with HANDLER._connect(instance, address, database.name) as connection:
                connection.isolation_level = _repeatable_read()
                connection.read_only = True
                rows[database.name] = {t.key: _count(connection, t) for t in _tables(connection)}
                connection.rollback()
    return Census(
        roles=roles,
        databases={d.name: (d.encoding, d.collate, d.ctype) for d in databases},
        rows=rows,
    )


def compare_data(source: Instance, copy: Instance) -> list[str]:
    """How ``copy`` differs from ``source`` (empty: the same); never a password's value."""
    before, after = census(source), census(copy)
    found: list[str] = []
    old_roles = {r.name: r for r in before.roles.roles}
    new_roles = {r.name: r for r in after.roles.roles}
    for name in sorted(old_roles.keys() | new_roles.keys()):
        old, new = old_roles.get(name), new_roles.get(name)
        if old is None or new is None:
            found.append(f"role {name}: {'missing' if new is None else 'not in the old server'}")
        elif old.password != new.password:
            found.append(f"role {name}: its password differs")
        elif old != new:
            found.append(f"role {name}: its attributes differ")
    if set(before.roles.memberships) != set(after.roles.memberships):
        found.append("role memberships differ")
    for name in sorted(before.databases.keys() | after.databases.keys()):
        if before.databases.get(name) != after.databases.get(name):
            found.append(f"database {name}: missing or of another encoding or locale")
            continue
        old_rows, new_rows = before.rows[name], after.rows[name]
        for table in sorted(old_rows.keys() | new_rows.keys()):
            if old_rows.get(table) != new_rows.get(table):
                found.append(
                    f"database {name}, table {table}: {old_rows.get(table)} rows before, "
                    f"{new_rows.get(table)} after"
                )
    return found
