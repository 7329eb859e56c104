"""Local TCP ports that reach ports on the target machine through the SSH connection.

Internal services publish on the target's 127.0.0.1 only, so ``kbinfra check``, ``bench``
and ``backup`` talk to them through a tunnel: a listener on this machine's loopback whose
every connection becomes an SSH channel to ``host:port`` on the target.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

_BUFFER = 64 * 1024


class Tunnel:
    """Forwards connections to ``127.0.0.1:local_port`` to ``remote_host:remote_port``.

    ``open_channel`` opens one connection to the remote end: a socket that OpenSSH forwards
    to ``remote_host:remote_port`` over the target's shared connection.
    """

    def __init__(self, open_channel: Callable[[], Any]) -> None:
        self._open_channel = open_channel
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept_loop, name="kbinfra-tunnel", daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            pump = threading.Thread(target=self._pump, args=(client,), daemon=True)
            pump.start()
            self._threads.append(pump)

    def _pump(self, client: socket.socket) -> None:
        try:
            channel = self._open_channel()
        except Exception:  # the remote refused: the client sees a closed connection
            client.close()
            return
        # a reset on either side (a refused port on the target resets the channel) ends
        # this one connection, never the tunnel
        with contextlib.closing(client), contextlib.closing(channel), contextlib.suppress(OSError):
            while not self._closed.is_set():
                readable, _, _ = select.select([client, channel], [], [], 0.5)
                if client in readable:
                    data = client.recv(_BUFFER)
                    if not data:
                        return
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(_BUFFER)
                    if not data:
                        return
                    client.sendall(data)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
