"""The ssh argument vectors kbinfra runs, the shared connection's socket name and folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbinfra.errors import KbinfraError
from kbinfra.targets.openssh import (
    DEFAULT_PERSIST_S,
    OpenSSH,
    base_arguments,
    control_dir,
    engine_endpoint,
    master_name,
    persist_seconds,
)
from kbinfra.targets.ssh import SSHAddress, SSHOptions

ADDRESS = SSHAddress("deploy", "10.0.0.5", 2222)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short folder, as XDG_RUNTIME_DIR is (pytest's own are too deep for a socket)."""
    folder = Path(tempfile.mkdtemp(prefix="kb-"))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def options(tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> SSHOptions:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("KBINFRA_SSH_PERSIST", raising=False)
    known = tmp_path / "known_hosts"
    known.write_text("[10.0.0.5]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n")
    key = tmp_path / "id_ed25519"
    key.write_text("not read by these tests")
    return SSHOptions(known_hosts=known, identity=key)


def _option(args: list[str], name: str) -> list[str]:
    return [
        args[i + 1] for i, arg in enumerate(args) if arg == "-o" and args[i + 1].startswith(name)
    ]


def test_every_ssh_checks_host_keys_strictly_against_kbinfras_file(options: SSHOptions) -> None:
    args = base_arguments(ADDRESS, options, Path("/run/x/m"))
    assert _option(args, "StrictHostKeyChecking=") == ["StrictHostKeyChecking=yes"]
    assert _option(args, "UserKnownHostsFile=") == [f"UserKnownHostsFile={options.known_hosts}"]
    assert _option(args, "GlobalKnownHostsFile=") == ["GlobalKnownHostsFile=/dev/null"]
    assert _option(args, "BatchMode=") == ["BatchMode=yes"]
    assert _option(args, "UpdateHostKeys=") == ["UpdateHostKeys=no"]
    assert _option(args, "HostKeyAlgorithms=") == ["HostKeyAlgorithms=-*-cert-v01@openssh.com"]
    assert _option(args, "IdentitiesOnly=") == ["IdentitiesOnly=yes"]
    assert args[args.index("-i") + 1] == str(options.identity)
    assert args[args.index("-p") + 1] == "2222" and args[args.index("-l") + 1] == "deploy"
    assert _option(args, "ControlPath=") == ["ControlPath=/run/x/m"]
    assert _option(base_arguments(ADDRESS, options, None), "ControlPath=") == ["ControlPath=none"]


def test_a_remote_command_is_one_fixed_argument_after_the_destination(
    options: SSHOptions,
) -> None:
    ssh = OpenSSH(SSHAddress("deploy", "-oProxyCommand=evil", 22), options)
    argv = ssh.command_argv("sh -c 'true'")
    # the host follows `--`: a host that looks like an option is never read as one
    assert argv[-3:] == ["--", "-oProxyCommand=evil", "sh -c 'true'"]
    assert argv[0].endswith("ssh") and "ControlMaster=no" in argv


def test_the_master_socket_is_private_and_named_by_everything_it_was_verified_with(
    options: SSHOptions, runtime_dir: Path
) -> None:
    folder = control_dir()
    assert folder == runtime_dir / "kbinfra-ssh"
    assert folder.stat().st_mode & 0o777 == 0o700
    name = master_name(ADDRESS, options)
    assert name == master_name(ADDRESS, options)
    assert name != master_name(SSHAddress("deploy", "10.0.0.5", 22), options)
    assert name != master_name(SSHAddress("root", "10.0.0.5", 2222), options)
    assert name != master_name(ADDRESS, SSHOptions(known_hosts=options.known_hosts))
    # a key taken out of (or added to) known_hosts: a new master, verified again
    options.known_hosts.write_text("")
    assert name != master_name(ADDRESS, options)
    ssh = OpenSSH(ADDRESS, options)
    assert ssh.control_path is not None and ssh.control_path.parent == folder


def test_a_folder_others_can_enter_is_refused(options: SSHOptions, tmp_path: Path) -> None:
    folder = control_dir()
    os.chmod(folder, 0o755)
    with pytest.raises(KbinfraError, match="not a private folder"):
        control_dir()


def test_a_too_long_socket_path_runs_without_sharing(
    options: SSHOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 80)
    deep.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert OpenSSH(ADDRESS, options).control_path is None


def test_persist_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBINFRA_SSH_PERSIST", raising=False)
    assert persist_seconds() == DEFAULT_PERSIST_S
    monkeypatch.setenv("KBINFRA_SSH_PERSIST", "0")
    assert persist_seconds() == 0
    monkeypatch.setenv("KBINFRA_SSH_PERSIST", "soon")
    with pytest.raises(KbinfraError, match="KBINFRA_SSH_PERSIST"):
        persist_seconds()


def test_no_ssh_client_is_one_clear_error(
    options: SSHOptions, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KbinfraError, match="openssh-client"):
        OpenSSH(ADDRESS, options)


@pytest.mark.parametrize(
    ("docker_host", "destination"),
    [
        ("", "/var/run/docker.sock"),
        ("unix:///run/node1/docker.sock", "/run/node1/docker.sock"),
        ("tcp://127.0.0.1:2375", "127.0.0.1:2375"),
    ],
)
def test_the_engine_forward_follows_the_hosts_docker_host(
    docker_host: str, destination: str
) -> None:
    assert engine_endpoint(docker_host, "h").destination == destination


@pytest.mark.parametrize("docker_host", ["ssh://elsewhere", "unix://relative.sock", "tcp://"])
def test_an_engine_address_it_cannot_forward_is_refused(docker_host: str) -> None:
    with pytest.raises(KbinfraError, match="DOCKER_HOST"):
        engine_endpoint(docker_host, "h")
