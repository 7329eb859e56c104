"""PostgreSQL's side of ``kbinfra secrets rotate``: two login roles per consumer, in turn.

A role has one password, so ``ALTER ROLE ... PASSWORD`` alone fails every new login of a
client that still holds the old one. Each consumer (the exporter's ``kbinfra_monitor``, the
app tier's ``kb_app``) is an owner role with two login roles (:mod:`.roles`); which one a
value opens is a function of the value, and a rotation draws its new value until it opens
the idle one (:func:`fresh_value`). Through the phases, the roles script (delivered into the
running server and run: no restart) gives:

=========  ========================================================================
added      the idle role LOGIN with the new password; clients still use the old role
moved      the clients (the exporter's env, the app's ``DATABASE_URL``) get the idle
           role's name and the new password, each through its health-gated apply
revoked    the role they left NOLOGIN with no password, and its sessions ended
=========  ========================================================================

The superuser (``postgres_password``, the image's ``POSTGRES_USER``) has one role, and needs no
second one: kbinfra alone logs in as it (backups, restores, checks, upgrades, the roles script
itself), and holds the stack's lock through the rotation. Its password is a file in the
server's container (``SUPERUSER_FILE``, read by the roles script), delivered without a
restart like the roles script; during a rotation a second file holds its other value:

=========  ========================================================================
added      the file keeps the old value; the other file holds the new one
moved      the file holds the new value and the other file the old one: the roles
           script logs in with whichever the server holds, and sets the new one
           (``ALTER ROLE``); kbinfra logs in with the new one from then on
revoked    the other file is emptied: only the new value logs in
=========  ========================================================================

A kill -9 between the files' delivery and the ``ALTER ROLE`` is mended by the rerun's apply,
whose roles script logs in with the other value again. On a Swarm the superuser's password is
a Docker secret, which no running task re-reads, and the replica's replication password is
derived from it: refused there.
"""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from kbinfra.probing.probe import ProbeContext
from kbinfra.services.postgres.exporter import MONITOR_ROLE, MONITOR_SECRET
from kbinfra.services.postgres.roles import login_role, login_roles, slot
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    from kbinfra.stack import Stack

#: The secrets this store takes two values of at once (through two login roles).
SUPERUSER_SECRET = "postgres_password"
ROTATES = frozenset({MONITOR_SECRET, "postgres_app_password", SUPERUSER_SECRET})
#: A backup holds the roles (``roles.json``, verifiers only with ``--include-secrets``), but
#: a restore leaves every role kbinfra manages as it is now (``managed_roles``): every backup
#: restores with the new secrets.yaml.
IN_BACKUPS = False
_SWARM = (
    "on a Swarm the exporter's role is made once at initdb from its Docker secret; the "
    "alternating login roles are built for one host (local, SSH) only"
)
_SWARM_SUPERUSER = (
    "on a Swarm it is a Docker secret no running task re-reads, and the replica's "
    "replication password is derived from it; it rotates on one host (local, SSH) only"
)


def refused(stack: "Stack") -> dict[str, str]:
    """Why this stack cannot rotate a secret of :data:`ROTATES` (a Swarm: no login roles, the
    superuser's password a Docker secret)."""
    if stack.spec.target != SWARM_TARGET:
        return {}
    return {MONITOR_SECRET: _SWARM, SUPERUSER_SECRET: _SWARM_SUPERUSER}


def checked(stack: "Stack") -> set[str]:
    """The secrets PostgreSQL checks besides its own: every service role's password."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415 (it imports us)

    context = stack.contexts.get(SERVICE.name)
    if context is None:
        return set()
    return {role.password_secret for role in SERVICE.service_roles(context)}


def fresh_value(old: str, generate: Callable[[], str]) -> str:
    """A new value that opens the login role ``old`` does not (one in two draws does). The
    superuser's is drawn so too: it has no login roles, and any value serves it."""
    while slot(value := generate()) == slot(old):
        pass
    return value


def owners(stack: "Stack") -> Mapping[str, tuple[str, str]]:
    """Each consumer's secret, its owner role, and the database its login roles may open."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415

    context = stack.contexts[SERVICE.name]
    return {
        MONITOR_SECRET: (MONITOR_ROLE, context.settings.database),
        **{r.password_secret: (r.role, r.database) for r in SERVICE.service_roles(context)},
    }


def roles_to_try(stack: "Stack", secret: str, value: str) -> tuple[tuple[str, str], ...]:
    """The (role, database) pairs a client holding ``value`` of ``secret`` may log in as: the
    superuser itself; for a consumer, the login role the value names first, then the other
    one, then the owner (an older stack's login), each once."""
    if secret == SUPERUSER_SECRET:
        settings = stack.contexts["postgres"].settings
        return ((settings.user, settings.database),)
    owner, database = owners(stack)[secret]
    roles = dict.fromkeys((login_role(owner, value), *login_roles(owner), owner))
    return tuple((role, database) for role in roles)


#: What PostgreSQL says to a login it refuses for its password or its NOLOGIN.
REFUSALS = ("password authentication failed", "is not permitted to log in")


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether PostgreSQL lets a client holding ``value`` of ``secret`` log in now, as any
    role of :func:`roles_to_try`."""
    import psycopg  # noqa: PLC0415

    from kbinfra.services.postgres.probe import connect  # noqa: PLC0415

    for role, database in roles_to_try(probe.stack, secret, value):
        try:
            with connect(probe.address(), role, value, database) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            if any(refusal in str(error) for refusal in REFUSALS):
                continue
            raise
        return True
    return False
