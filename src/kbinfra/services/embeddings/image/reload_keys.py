"""Make the running embedding service re-read its keys file, and wait until it has.

apply runs this inside the container (``kbinfra secrets rotate`` changes the keys file): it
sends SIGHUP to the service (PID 1, ``app.py``) and waits until the service has written the
digest of the file as delivered into its marker. Exit 0 once it has; 1 with one line if the
service did not load it (its log says why: it keeps the keys it had). Standard library only:
it starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

CONFIG_ENV = "KBINFRA_EMBEDDINGS_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/kbinfra/embeddings/config.json"
#: The same path as app.py's LOADED_KEYS_MARKER.
MARKER = Path("/tmp/kbinfra-embeddings-keys.loaded")
SERVICE_PID = 1
WAIT_S = 15.0


def loaded_digest(marker: Path) -> str:
    try:
        return marker.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def main() -> int:
    config = json.loads(Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)).read_text())
    keys_file = config.get("api_key", {}).get("file")
    if not keys_file:
        print("reload_keys: config.json names no api_key.file", file=sys.stderr)
        return 1
    wanted = hashlib.sha256(Path(keys_file).read_bytes()).hexdigest()
    os.kill(SERVICE_PID, signal.SIGHUP)
    deadline = time.monotonic() + WAIT_S
    while loaded_digest(MARKER) != wanted:
        if time.monotonic() > deadline:
            print(
                f"reload_keys: the service did not load {keys_file} within {WAIT_S:.0f} s "
                "(its log says why; it keeps the keys it had)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
