"""ssh trust and known_hosts: a port without SSH, markers OpenSSH knows, broken lines."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from kbinfra.targets.ssh import read_known_hosts
from tests.conftest import write_stack_dir
from tests.unit.error_checks import assert_one_line_error, kbinfra


@pytest.fixture
def not_ssh_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that answers every connection with garbage, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_ssh_trust_to_a_port_that_does_not_speak_ssh(not_ssh_port: int, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    done = kbinfra("ssh", "trust", f"127.0.0.1:{not_ssh_port}", "--known-hosts", str(known_hosts))
    assert_one_line_error(done, f"127.0.0.1:{not_ssh_port}: no SSH server answered")
    assert not known_hosts.exists()


class _KeyOnlyServer(paramiko.ServerInterface):
    """Enough of an SSH server to offer its host key; it lets nobody in."""


@pytest.fixture
def ssh_host_key() -> Iterator[tuple[int, paramiko.PKey]]:
    """An SSH server on 127.0.0.1 (paramiko) that offers a fresh RSA host key."""
    key = paramiko.RSAKey.generate(2048)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            transport = paramiko.Transport(connection)
            transport.add_server_key(key)
            try:
                transport.start_server(server=_KeyOnlyServer())
                transport.accept(timeout=2)
            except (paramiko.SSHException, EOFError, OSError):
                pass
            finally:
                transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], key
    stop.set()
    thread.join()
    server.close()


def test_ssh_trust_refuses_a_key_marked_revoked(
    ssh_host_key: tuple[int, paramiko.PKey], tmp_path: Path
) -> None:
    port, key = ssh_host_key
    known_hosts = tmp_path / "known_hosts"
    revoked = f"@revoked [127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n"
    known_hosts.write_text(revoked)
    done = kbinfra("ssh", "trust", f"127.0.0.1:{port}", "--known-hosts", str(known_hosts), "-y")
    assert_one_line_error(done, "is marked @revoked")
    assert known_hosts.read_text() == revoked


def test_ssh_trust_reads_a_known_hosts_with_markers(
    ssh_host_key: tuple[int, paramiko.PKey], tmp_path: Path
) -> None:
    port, key = ssh_host_key
    other = paramiko.RSAKey.generate(1024)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"@revoked * {other.get_name()} {other.get_base64()}\n"
        f"@cert-authority *.example.org {other.get_name()} {other.get_base64()}\n"
    )
    done = kbinfra("ssh", "trust", f"127.0.0.1:{port}", "--known-hosts", str(known_hosts), "-y")
    assert done.returncode == 0, done.stderr
    assert known_hosts.read_text().splitlines()[-1].endswith(key.get_base64())


def test_a_broken_known_hosts_line_is_named(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# mine\nexample.org ssh-ed25519 not*base64\n")
    done = kbinfra("ssh", "trust", "127.0.0.1:1", "--known-hosts", str(known_hosts))
    assert_one_line_error(done, f"{known_hosts}:2: not a known_hosts line")


def test_a_revoked_key_is_never_trusted_even_when_listed(tmp_path: Path) -> None:

    key = paramiko.RSAKey.generate(1024)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"[h]:2222 {key.get_name()} {key.get_base64()}\n"
        f"@revoked [h]:2222 {key.get_name()} {key.get_base64()}\n"
    )
    known = read_known_hosts(known_hosts)
    assert known.keys_for("h", 2222) == {}
    assert key.get_base64() in known.revoked


def test_an_identity_that_is_a_directory_is_refused_before_connecting(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra(
        "plan", "--dir", str(stack), "--target", "ssh://deploy@127.0.0.1:1",
        "--identity", str(tmp_path), "--known-hosts", str(tmp_path / "known_hosts"),
    )  # fmt: skip
    assert_one_line_error(done, f"{tmp_path}: SSH private key file is a directory")


def test_ssh_trust_into_a_known_hosts_it_cannot_write(
    ssh_host_key: tuple[int, paramiko.PKey], tmp_path: Path
) -> None:
    port, _ = ssh_host_key
    (tmp_path / "a-file").write_text("")
    known_hosts = tmp_path / "a-file" / "known_hosts"
    done = kbinfra("ssh", "trust", f"127.0.0.1:{port}", "--known-hosts", str(known_hosts), "-y")
    assert_one_line_error(done, f"{known_hosts}: cannot add the key to the known_hosts file")
