"""Writing a file that holds secret values, or what is derived from them: atomically, and
0600 from its first byte (never a moment readable by others, never half written).

It imports nothing of kbinfra's, so the no-op record's fast path (:mod:`kbinfra.noop_fast`)
writes with it too: secrets.yaml and the rotation state, the render cache (rendered secrets)
and the no-op record (hashes of the secrets file) are all written here.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(
    path: Path, text: str, *, durable: bool = True, folder_mode: int | None = None
) -> None:
    """Write ``text`` to ``path`` through a 0600 temporary file renamed over it.

    ``durable``: fsync before the rename (what secrets.yaml and the rotation state need; a
    cache that is rebuilt when lost does not). ``folder_mode``: the mode of a folder it makes
    (0700 for kbinfra's own ``.kbinfra``); None leaves it to the umask."""
    if folder_mode is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temp, 0o600)  # a file left by an older run keeps its mode through O_TRUNC
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
