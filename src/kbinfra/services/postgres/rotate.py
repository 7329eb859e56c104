"""PostgreSQL's side of ``kbinfra secrets rotate``: not built yet, and why.

A role has one password, so ``ALTER ROLE ... PASSWORD`` fails every new login of a client that
still holds the old one. The way is two login roles per client, members of one role that owns
its objects, used in turn: the client moves to the idle role with a fresh password, then the
one it left gets a new password (issue #16). Those roles are not created yet.
"""

ROTATES: frozenset[str] = frozenset()
_WHY = (
    "a PostgreSQL role has one password; the alternating login roles that would let clients "
    "move without a failed login are not built"
)
REFUSED = {
    "postgres_password": _WHY,
    "postgres_monitor_password": _WHY,
    "postgres_app_password": _WHY,
}
