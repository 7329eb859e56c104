"""Qdrant's side of ``kbinfra secrets rotate``: nginx's key gate takes two values of each
client key.

Qdrant reads its keys at start (kbinfra gives them as environment variables), and one Qdrant
container owns its storage: a restart fails the requests in flight. Its second read-write key
(``service.alt_api_key``, Qdrant 1.17 and later) would need a restart per phase, and it has
no second read-only key at all. So its clients do not hold Qdrant's own keys: they send
``qdrant_api_key`` or ``qdrant_read_only_api_key`` to nginx, Qdrant's key gate
(:class:`kbinfra.service.KeyGate`), which accepts each value of its keys file and sends
Qdrant its own key for the same access. A rotation changes that keys file (the old and the
new client keys, then the new ones alone), which apply delivers into the running nginx and
reloads in place: Qdrant is never restarted and no request is refused. Its clients (the app
tier's env, ``check``, ``bench``) move to the new keys in the ``moved`` phase.

Qdrant's own keys are not rotated by this command (changing them restarts Qdrant); without
nginx or on a Swarm there is no gate, and the clients' keys are Qdrant's own: refused, with
the reason. The gate checks REST and gRPC alike (one map of the keys, two listeners).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kbinfra.probing.probe import ProbeContext
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.qdrant.probe import client
from kbinfra.services.qdrant.service import (
    API_KEY,
    READ_ONLY_KEY,
    SERVICE,
    UPSTREAM_API_KEY,
    UPSTREAM_READ_ONLY_KEY,
)
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    from kbinfra.stack import Stack

#: The secrets its clients hold two values of at once (through nginx's key gate).
ROTATES = frozenset({API_KEY, READ_ONLY_KEY})
_RESTARTS = (
    "Qdrant reads its own keys at start: changing one restarts Qdrant and fails the "
    "requests in flight (only nginx, Qdrant and kbinfra hold it)"
)
REFUSED = {UPSTREAM_API_KEY: _RESTARTS, UPSTREAM_READ_ONLY_KEY: _RESTARTS}


def refused(stack: Stack) -> dict[str, str]:
    """Where there is no key gate, the clients' keys are Qdrant's own, read at start."""
    ctx = stack.contexts[SERVICE.name]
    if gated(ctx):
        return {}
    if stack.spec.target == SWARM_TARGET:
        reason = "on a Swarm, nginx is not Qdrant's key gate"
    else:
        reason = (
            "without nginx, Qdrant checks this key itself and reads it at start only: "
            "enable nginx, its key gate, to rotate it with no failed request"
        )
    return {API_KEY: reason, READ_ONLY_KEY: reason}


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether Qdrant's key gate (its host port is nginx's) lets a read through with
    ``value`` as the key: ``GET /collections`` is read access, which both keys give."""
    del secret
    with client(probe.url(), value) as http:
        response = http.get("/collections")
    if response.status_code == 401:
        return False
    response.raise_for_status()
    return True
