"""Redis's side of ``kbinfra secrets rotate``: an ACL user accepts several passwords.

The ACL file, which is how kbinfra persists Redis's users (rendered by kbinfra, loaded at
start), holds each password as a ``#sha256`` rule; during a rotation the user has two, the
old and the new (what ``ACL SETUSER u >new`` then ``<old`` do at run time, but kept in the
file, so a restart midway keeps them). apply delivers a changed ACL file into the running
Redis and runs ``ACL LOAD`` (all or nothing): no restart, no failed request. Redis drops the
connections of a user whose rules changed; a client logs in again with what it holds.
"""

from kbinfra.probing.probe import ProbeContext
from kbinfra.services.redis.probe import connect
from kbinfra.services.redis.service import PASSWORD_USERS

#: The secrets this store takes two values of at once.
ROTATES = frozenset(PASSWORD_USERS.values())
#: Whether a backup of this store holds any of them (the RDB holds no ACL user): if not,
#: every backup restores with the new secrets.yaml.
IN_BACKUPS = False

_USERS = {secret: user for user, secret in PASSWORD_USERS.items()}


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether Redis lets the user of ``secret`` log in with ``value`` now."""
    from redis.exceptions import AuthenticationError, ResponseError  # noqa: PLC0415

    client = connect(probe.address(), _USERS[secret], value)
    try:
        client.ping()
    except AuthenticationError:
        return False
    except ResponseError as error:
        if "WRONGPASS" in str(error):
            return False
        raise
    finally:
        client.close()
    return True
