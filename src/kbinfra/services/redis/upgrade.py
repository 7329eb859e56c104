"""Redis's side of ``kbinfra upgrade``: a newer Redis loads an older RDB, never the reverse.

Each Redis release line may raise the RDB format version (7.0 writes RDB 10, 7.2 RDB 11,
7.4 RDB 12); Redis refuses to load an RDB newer than its own, so moving to an older release
line loses the dump at start. Patch releases of one line share the format.
"""

from typing import Any

from kbinfra.probing.probe import CheckFailedError, ProbeContext
from kbinfra.services.redis.probe import ADMIN, connect
from kbinfra.services.redis.service import PASSWORD_USERS
from kbinfra.upgrade import Refusal, image_version, shown, version_tuple


def running_version(probe: ProbeContext) -> str:
    """``INFO server``'s ``redis_version``."""
    client = connect(probe.address(), ADMIN, probe.secret(PASSWORD_USERS[ADMIN]))
    try:
        version = client.info("server").get("redis_version")
    finally:
        client.close()
    if not isinstance(version, str) or version_tuple(version) is None:
        raise CheckFailedError(f"INFO server reports no redis_version: {version!r}")
    return version


def upgrade_refusal(running: str, new_image: str, settings: Any) -> Refusal | None:
    del settings
    new = image_version(new_image)
    now = version_tuple(running)
    assert now is not None
    if new is None or (len(new) == 1 and new[0] == now[0]):
        return Refusal(
            f"cannot tell the Redis release line of {new_image} from its tag",
            "use a tag that names it (redis:7.2.5): an older line cannot load a newer RDB",
        )
    if new[:2] >= now[: len(new[:2])]:
        return None
    return Refusal(
        f"Redis {shown(new)} cannot load the RDB that Redis {running} writes (a downgrade "
        "to an older release line)",
        f"stay on {shown(now[:2])} or later; to go back, restore a backup taken on "
        f"{shown(new)} into a new stack",
    )
