"""The embedding service's side of ``kbinfra secrets rotate``: it accepts every key of its
keys file.

The keys file (rendered by kbinfra, 0600 for the service's user) holds the key clients use
and, during a rotation, the other one. apply delivers a changed keys file into the running
service and runs ``reload_keys.py`` there, which sends SIGHUP and returns once the service
has loaded the file: no restart, no refused request. Its clients (the app tier's env,
``check``, ``bench``) move to the new key in the ``moved`` phase.
"""

from kbinfra.probing.probe import ProbeContext
from kbinfra.services.embeddings.probe import SECRET, client

#: The secrets this service takes two values of at once.
ROTATES = frozenset({SECRET})
#: No backup holds the key (the models volume is not backed up, and no store keeps it).
IN_BACKUPS = False


def accepts(probe: ProbeContext, secret: str, value: str) -> bool:
    """Whether the service answers an embed request sent with ``value`` as its key now."""
    with client(probe.url(), value) as http:
        response = http.post("/embed", json={"texts": ["kbinfra checks a key."]})
    if response.status_code in (401, 403):
        return False
    response.raise_for_status()
    return True
