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

The superuser kbinfra itself logs in as (``postgres_password``) is the image's
``POSTGRES_USER``: one role, which ``pg_dump``, restores, checks, the healthcheck and the
Swarm replica's derived password all use; it stays refused until it has two roles too.
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
ROTATES = frozenset({MONITOR_SECRET, "postgres_app_password"})
#: A backup holds the roles (``roles.json``, verifiers only with ``--include-secrets``), but
#: a restore leaves every role kbinfra manages as it is now (``managed_roles``): every backup
#: restores with the new secrets.yaml.
IN_BACKUPS = False
REFUSED = {
    "postgres_password": (
        "it is the image's superuser, one role that kbinfra's backups, restores, checks and "
        "the Swarm replica's password all use; two alternating superusers are not built"
    ),
}
_SWARM = (
    "on a Swarm the exporter's role is made once at initdb from its Docker secret; the "
    "alternating login roles are built for one host (local, SSH) only"
)


def refused(stack: "Stack") -> dict[str, str]:
    """Why this stack cannot rotate a secret of :data:`ROTATES` (a Swarm: no login roles)."""
    return {MONITOR_SECRET: _SWARM} if stack.spec.target == SWARM_TARGET else {}


def checked(stack: "Stack") -> set[str]:
    """The secrets PostgreSQL checks besides its own: every service role's password."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415 (it imports us)

    context = stack.contexts.get(SERVICE.name)
    if context is None:
        return set()
    return {role.password_secret for role in SERVICE.service_roles(context)}


def fresh_value(old: str, generate: Callable[[], str]) -> str:
    """A new value that opens the login role ``old`` does not (one in two draws does)."""
    while slot(value := generate()) == slot(old):
        pass
    return value


def owners(stack: "Stack") -> Mapping[str, tuple[str, str]]:
    """Each rotating secret's owner role, and the database its login roles may open."""
    from kbinfra.services.postgres.service import SERVICE  # noqa: PLC0415

    context = stack.contexts[SERVICE.name]
    return {
        MONITOR_SECRET: (MONITOR_ROLE, context.settings.database),
        **{r.password_secret: (r.role, r.database) for r in SERVICE.service_roles(context)},
    }


#: What PostgreSQL says to a login it refuses for its password or its NOLOGIN.
REFUSALS = ("password authentication failed", "is not permitted to log in")


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether PostgreSQL lets a client holding ``value`` of ``secret`` log in now: as the
    login role the value names, as the other one, or as the owner (an older stack's)."""
    import psycopg  # noqa: PLC0415

    from kbinfra.services.postgres.probe import connect  # noqa: PLC0415

    owner, database = owners(probe.stack)[secret]
    # The role the value names first; each role tried once (it is one of the two).
    for role in dict.fromkeys((login_role(owner, value), *login_roles(owner), owner)):
        try:
            with connect(probe.address(), role, value, database) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            if any(refusal in str(error) for refusal in REFUSALS):
                continue
            raise
        return True
    return False
