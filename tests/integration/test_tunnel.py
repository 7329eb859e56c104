"""Target.tunnel: a local port that reaches the target's loopback through real sshd."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from kbinfra.targets.local import LocalTarget
from kbinfra.targets.ssh import SSHAddress, SSHOptions
from kbinfra.targets.ssh import SSHTarget as KbinfraSSHTarget
from tests.integration.testbed_support import SSHTarget

pytestmark = pytest.mark.integration


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _get(host: str, port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def test_ssh_tunnel_reaches_the_targets_loopback(
    ssh_target: SSHTarget, loopback_server: int
) -> None:
    target = KbinfraSSHTarget(
        SSHAddress(ssh_target.user, ssh_target.host, ssh_target.port),
        SSHOptions(known_hosts=ssh_target.known_hosts_path, identity=ssh_target.key_path),
    )
    with target, target.tunnel(loopback_server) as (host, port):
        assert port != loopback_server  # a real forward, not the address itself
        # Several requests, some at once: each becomes its own SSH channel.
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(_get(host, port, f"/{i}")))
            for i in range(5)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert sorted(results) == [f"hello from /{i}" for i in range(5)]


def test_ssh_tunnel_to_a_closed_port_fails_cleanly(ssh_target: SSHTarget) -> None:
    target = KbinfraSSHTarget(
        SSHAddress(ssh_target.user, ssh_target.host, ssh_target.port),
        SSHOptions(known_hosts=ssh_target.known_hosts_path, identity=ssh_target.key_path),
    )
    with target, target.tunnel(1) as (host, port), pytest.raises(OSError):
        _get(host, port, "/")


def test_local_tunnel_is_the_address_itself(tmp_path: object, loopback_server: int) -> None:
    with LocalTarget(tmp_path).tunnel(loopback_server) as (host, port):  # type: ignore[arg-type]
        assert (host, port) == ("127.0.0.1", loopback_server)
        assert _get(host, port, "/x") == "hello from /x"
