"""Unstructured's side of ``kbinfra secrets rotate``: nginx's key gate takes two client keys.

The Unstructured API takes one key: it compares the ``unstructured-api-key`` header with the
``UNSTRUCTURED_API_KEY`` environment variable (prepline_general/api/endpoints.py), read by a
container at start. So its clients do not hold that key: they send ``unstructured_api_key``
to nginx, the API's key gate (:class:`kbinfra.service.KeyGate`), which accepts each value of
its keys file and sends the API its own key, ``unstructured_upstream_key``. A rotation changes
that keys file (the old and the new client key, then the new one alone), which apply delivers
into the running nginx and reloads in place: the API is never restarted and no request is
refused. Its clients (the app tier's env, ``check``, ``bench``) move to the new key in the
``moved`` phase.

The API's own key is not rotated by this command (changing it restarts the API, which would
refuse the requests in flight); without nginx, or on a Swarm, there is no gate and the
clients' key is the API's own: refused, with the reason.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from kbinfra.probing.probe import ProbeContext
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.unstructured.probe import client, document, partition
from kbinfra.services.unstructured.service import CLIENT_SECRET, SERVICE, UPSTREAM_SECRET
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    from kbinfra.stack import Stack

#: The secrets its clients hold two values of at once (through nginx's key gate).
ROTATES = frozenset({CLIENT_SECRET})
#: No backup holds the key (Unstructured keeps no data).
IN_BACKUPS = False
REFUSED = {
    UPSTREAM_SECRET: (
        "the Unstructured API reads its own key at start: changing it restarts the API and "
        "fails the requests in flight (only nginx and the API hold it)"
    ),
}


def refused(stack: Stack) -> dict[str, str]:
    """Where there is no key gate, the clients' key is the API's own, read at start."""
    if stack.spec.target == SWARM_TARGET:
        return {CLIENT_SECRET: "on a Swarm, nginx is not the Unstructured API's key gate"}
    if not gated(stack.contexts[SERVICE.name]):
        return {
            CLIENT_SECRET: (
                "without nginx, the Unstructured API checks this key itself and reads it at "
                "start only: enable nginx, its key gate, to rotate it with no failed request"
            )
        }
    return {}


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether a partition request sent with ``value`` as its key is answered now, through
    the API's key gate (its host port is nginx's)."""
    with client(probe.url(), value) as http:
        response = partition(http, document(random.Random(0), 1))
    if response.status_code == 401:
        return False
    response.raise_for_status()
    return True
