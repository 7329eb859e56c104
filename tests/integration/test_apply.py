"""plan / apply / status / destroy against the real Docker Engine, locally and over SSH.

Every claim here runs the real CLI (a subprocess) against real containers: nothing is mocked.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from kbinfra.registry import all_services
from kbinfra.targets.engine import Engine

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import KBINFRA, SECRET_MARK, fixed_secret, free_port
    from .stack_support import Deployment as StackDeployment
    from .testbed_support import SSHTarget, Testbed
except ImportError:
    from stack_support import KBINFRA, SECRET_MARK, fixed_secret, free_port  # type: ignore[no-redef]
    from stack_support import Deployment as StackDeployment  # type: ignore[no-redef]
    from testbed_support import SSHTarget, Testbed  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


@dataclass
class Deployment(StackDeployment):
    """A stack folder deployed to one target, with the images it was given."""

    images: dict[str, str] = field(default_factory=dict)

    def container(self, service: str) -> str:
        return f"{self.name}-{service}"


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _created_since(since: int, stack: str) -> list[str]:
    """Names of the stack's containers (and its lock) the engine created since ``since``."""
    events = _docker(
        "events", "--since", str(since), "--until", str(int(time.time()) + 1),
        "--filter", "type=container", "--filter", "event=create",
        "--format", "{{.Actor.Attributes.name}}",
    )  # fmt: skip
    return [name for name in events.split() if name.startswith(f"{stack}-")]


def _inspect(name: str) -> dict[str, Any] | None:
    proc = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(proc.stdout)[0]
    return data


# The test bed (tests/integration/conftest.py) gives `image_map_path` (its images for every
# service it can build) and `ssh_target` (an sshd on loopback, its host key pinned in a
# known_hosts file, a user in the docker group).

# The tests of failure paths deploy a few services: a data store, another one and an exporter.
SMALL = ("postgres", "redis", "node-exporter")


# ---------------------------------------------------------------- deployments
def _new_deployment(
    kind: str,
    folder: Path,
    image_map_path: Path,
    ssh: SSHTarget | None,
    only: tuple[str, ...] | None = None,
) -> Deployment:
    name = f"kbt{kind[0]}{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    target = "local"
    if ssh is not None:
        target = f"ssh://{ssh.user}@{ssh.host}:{ssh.port}"
        env["KBINFRA_KNOWN_HOSTS"] = str(ssh.known_hosts_path)
        env["KBINFRA_SSH_IDENTITY"] = str(ssh.key_path)
    deployment = Deployment(folder, name, kind, env, {})
    run = subprocess.run(
        [
            *KBINFRA,
            "init",
            "--profile",
            "minimum",
            "--images",
            str(image_map_path),
            "--target",
            target,
            "--dir",
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    mapped = yaml.safe_load(image_map_path.read_text())["images"]
    # The image map also names the reference app (`app`), which is no service of its own:
    # a stack deploys it only when its app: section says so.
    deployment.images = {
        s: i for s, i in mapped.items() if (only is None or s in only) and s in all_services()
    }

    def configure(data: dict[str, Any]) -> None:
        data["name"] = name
        for service, settings in data["services"].items():
            # A service without a test bed image cannot run here.
            settings["enabled"] = service in deployment.images
            for key in ("port", "grpc_port", "http_port", "https_port"):
                if settings.get(key):
                    settings[key] = free_port()  # local and SSH stacks share one engine

    deployment.edit(configure)
    secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
    pinned = yaml.safe_dump({k: fixed_secret(k) for k in secrets})
    (folder / "secrets.yaml").write_text(pinned)
    return deployment


def _deployment(
    request: pytest.FixtureRequest, folder: Path, image_map_path: Path, only: tuple[str, ...] | None
) -> Iterator[Deployment]:
    ssh = request.getfixturevalue("ssh_target") if request.param == "ssh" else None
    created = _new_deployment(request.param, folder, image_map_path, ssh, only)
    yield created
    created.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", created.name, "--force-unlock"
    )


@pytest.fixture(params=["local", "ssh"])
def full_deployment(
    request: pytest.FixtureRequest, tmp_path: Path, image_map_path: Path
) -> Iterator[Deployment]:
    """Every service that has a test bed image."""
    yield from _deployment(request, tmp_path / "stack", image_map_path, None)


@pytest.fixture(params=["local", "ssh"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, image_map_path: Path
) -> Iterator[Deployment]:
    """A few services, for the failure paths."""
    yield from _deployment(request, tmp_path / "stack", image_map_path, SMALL)


def _published_on(service: str, port: str) -> str:
    """The host address a published ``port`` (``HOST:PORT->CONTAINER/tcp``) must be bound
    to: nginx's web ports face the network; every other door, nginx's key-gated one in
    front of Unstructured included, is loopback only."""
    container_port = port.split("->", 1)[1]
    web = service == "nginx" and container_port in ("80/tcp", "443/tcp")
    return "0.0.0.0" if web else "127.0.0.1"


def _services(deployment: Deployment) -> list[str]:
    return sorted(deployment.images)


def _psql(deployment: Deployment, sql: str) -> str:
    return _docker(
        "exec",
        "-e",
        f"PGPASSWORD={fixed_secret('postgres_password')}",
        deployment.container("postgres"),
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "kb",
        "-d",
        "kb",
        "-At",
        "-c",
        sql,
    )


def _node_root_size(deployment: Deployment) -> float:
    """node_filesystem_size_bytes of mount point "/" as node-exporter reports it."""
    metrics = _docker(
        "exec",
        deployment.container("node-exporter"),
        "wget",
        "-qO-",
        "http://127.0.0.1:9100/metrics",
    )
    for line in metrics.splitlines():
        if line.startswith("node_filesystem_size_bytes{") and 'mountpoint="/"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("node-exporter reports no file system mounted at /")


def _host_root_size() -> float:
    stat = os.statvfs("/")
    return float(stat.f_blocks * stat.f_frsize)


def _status_once_docker_checked(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """``status`` rows once Docker's own health check has run on every container."""
    deadline = time.monotonic() + 120
    while True:
        status = deployment.run("status", "--output", "json")
        assert status.code == 0, status.err
        rows = {r["service"]: r for r in status.json()["services"]}
        assert all(r["health"] != "unhealthy" for r in rows.values()), rows
        if all(r["health"] != "starting" for r in rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def _assert_read_only_roots(deployment: Deployment) -> None:
    """Every service runs with a read-only root, its files in a volume of its own."""
    for service in _services(deployment):
        name = deployment.container(service)
        info = _inspect(name)
        assert info is not None
        assert info["HostConfig"]["ReadonlyRootfs"] is True, service
        written = subprocess.run(
            ["docker", "exec", name, "sh", "-c", "echo x > /kbinfra-probe"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert written.returncode != 0, service
        assert "Read-only file system" in written.stderr, (service, written.stderr)
    # PostgreSQL and Redis start as their own user: their first process was never root.
    for service in ("postgres", "redis"):
        status = _docker("exec", deployment.container(service), "cat", "/proc/1/status")
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert uids[1:] == ["999"] * 4, (service, uids)
        caps = next(line for line in status.splitlines() if line.startswith("CapBnd:"))
        assert int(caps.split()[1], 16) == 0, (service, caps)  # no capability at all
    postgres = _inspect(deployment.container("postgres"))
    assert postgres is not None
    mounts = {m["Destination"]: m for m in postgres["Mounts"]}
    assert mounts["/etc/postgresql"]["Type"] == "volume"
    assert mounts["/var/lib/postgresql/data"]["Name"] == f"{deployment.name}-postgres-data"


def _imported_by_a_no_op(deployment: Deployment) -> set[str]:
    """The top-level packages a no-op ``kbinfra apply`` imports (``-X importtime``)."""
    command = deployment.command("apply", "--yes")
    proc = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        capture_output=True, text=True, env=deployment.env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "0 created, 0 recreated, 0 started, 0 removed, 0 files uploaded" in proc.stdout
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


# ---------------------------------------------------------------- the tests
def test_apply_status_reapply_and_one_change(full_deployment: Deployment) -> None:
    deployment = full_deployment
    before = deployment.run("plan", "--output", "json")
    assert before.code == 3, before.err
    assert {a["action"] for a in before.json()["services"]} == {"create"}

    first = deployment.run("apply", "--yes", "--output", "json")
    assert first.code == 0, first.err
    result = first.json()
    assert sorted(r["service"] for r in result["services"] if r["outcome"] == "created") == (
        _services(deployment)
    )
    assert ".env" in result["files_uploaded"]

    # kbinfra's gate passes before Docker's own first check (one interval after start):
    # Docker says "starting" until then, and healthy once its check has run.
    rows = _status_once_docker_checked(deployment)
    for service in _services(deployment):
        row = rows[service]
        assert row["state"] == "running"
        assert row["health"] in ("healthy", None)
        assert row["drift"] == []
        assert row["running_image"] == deployment.images[service]
        for port in row["ports"]:
            host_ip = port.split(":", 1)[0]
            assert host_ip == _published_on(service, port), port
    text_status = deployment.run("status")
    assert "postgres" in text_status.out and "healthy" in text_status.out

    info = _inspect(deployment.container("postgres"))
    assert info is not None
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["HostConfig"]["NanoCpus"] > 0 and info["HostConfig"]["Memory"] > 0
    assert deployment.name + "-net" in info["NetworkSettings"]["Networks"]
    aliases = info["NetworkSettings"]["Networks"][deployment.name + "-net"]["Aliases"]
    assert "postgres" in aliases
    assert SECRET_MARK not in json.dumps(info["Config"]["Labels"])
    # The test bed's engine runs on this machine (over SSH too): node-exporter's "/" is ours.
    assert _node_root_size(deployment) == _host_root_size()
    _assert_read_only_roots(deployment)

    since = int(time.time())
    again = deployment.run("apply", "--yes")
    assert again.code == 0, again.err
    assert "0 created, 0 recreated, 0 started, 0 removed, 0 files uploaded" in again.out
    assert deployment.run("plan").code == 0
    # A no-op needs no lock: the lock is a container, and none was created.
    assert _created_since(since, deployment.name) == []
    # Its reads go over the engine's socket (locally, or forwarded by the shared OpenSSH
    # connection), without docker-py or paramiko; its files come from the render cache,
    # without Jinja; its table is plain text off a terminal, without rich.
    heavy = {"docker", "requests", "paramiko", "jinja2", "rich"}
    assert _imported_by_a_no_op(deployment) & heavy == set()
    # ... but it still respects one held by another apply (here: this test's process).
    with Engine(docker.from_env(), deployment.name).locked():
        held = deployment.run("apply", "--yes")
    assert held.code == 2, held.err
    assert f"stack {deployment.name} is locked by" in held.err

    # One changed setting recreates exactly that service.
    ids = {s: _inspect(deployment.container(s))["Id"] for s in _services(deployment)}  # type: ignore[index]

    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 77))
    plan = deployment.run("plan")
    assert plan.code == 3
    assert "~ postgres: recreate (file postgres/postgresql.conf changed)" in plan.out
    assert "+max_connections = 77" in plan.out

    applied = deployment.run("apply", "--yes", "--output", "json")
    assert applied.code == 0, applied.err
    outcomes = {r["service"]: r["outcome"] for r in applied.json()["services"]}
    assert outcomes.pop("postgres") == "recreated"
    assert set(outcomes.values()) <= {"unchanged"}
    assert applied.json()["files_uploaded"] == ["postgres/postgresql.conf"]
    for service, old_id in ids.items():
        new_id = _inspect(deployment.container(service))["Id"]  # type: ignore[index]
        assert (new_id != old_id) == (service == "postgres")
    assert _psql(deployment, "show max_connections") == "77"
    assert _inspect(deployment.container("postgres") + ".kbinfra-old") is None

    # --only: two services changed, one converged; the other stays pending.
    ids = {s: _inspect(deployment.container(s))["Id"] for s in _services(deployment)}  # type: ignore[index]
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 78))
    deployment.edit(
        lambda d: d["services"]["redis"].update(
            maxmemory_policy="volatile-lru", allow_eviction_of_queues=True
        )
    )
    only = deployment.run("apply", "--yes", "--only", "postgres", "--output", "json")
    assert only.code == 0, only.err
    outcomes = {r["service"]: r["outcome"] for r in only.json()["services"]}
    assert outcomes.pop("postgres") == "recreated"
    assert set(outcomes.values()) <= {"unchanged"}
    assert only.json()["files_uploaded"] == ["postgres/postgresql.conf"]
    for service, old_id in ids.items():
        new_id = _inspect(deployment.container(service))["Id"]  # type: ignore[index]
        assert (new_id != old_id) == (service == "postgres")
    pending = deployment.run("plan", "--output", "json")
    assert pending.code == 3
    changed = {a["service"] for a in pending.json()["services"] if a["action"] != "nothing"}
    assert changed == {"redis"}
    assert deployment.run("apply", "--yes", "--only", "redsi").code == 2


def test_failed_health_check_rolls_back_and_keeps_data(
    deployment: Deployment, base_image: str
) -> None:
    assert deployment.run("apply", "--yes").code == 0
    _psql(deployment, "create table keep (n int); insert into keep values (1), (2), (3)")
    old_id = _inspect(deployment.container("postgres"))["Id"]  # type: ignore[index]

    before = _psql(deployment, "show max_connections")

    # An image that has no PostgreSQL, and a changed configuration: the new container exits
    # at once; the previous one comes back with its own configuration file.
    broken = base_image
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("image", broken))
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("version", 15))
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 91))
    failed = deployment.run("apply", "--yes", "--timeout", "60")
    assert failed.code == 1, failed.out + failed.err
    assert "postgres did not become healthy" in failed.err
    assert "previous container was restored" in failed.err

    current = _inspect(deployment.container("postgres"))
    assert current is not None and current["Id"] == old_id
    assert current["State"]["Running"]
    assert _inspect(deployment.container("postgres") + ".kbinfra-old") is None
    assert _psql(deployment, "select count(*) from keep") == "3"
    assert _psql(deployment, "show max_connections") == before != "91"
    conf = _docker(
        "exec", deployment.container("postgres"), "cat", "/etc/postgresql/postgresql.conf"
    )
    assert "max_connections = 91" not in conf
    # The deployed copy still describes what runs: the plan still wants the change.
    assert deployment.run("plan").code == 3


def test_kill_midway_then_apply_converges(deployment: Deployment) -> None:
    def kill_when(marker: str) -> None:
        proc = deployment.popen("apply", "--yes")
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL

    kill_when("waiting until healthy")  # the first service has started
    assert _inspect(f"{deployment.name}-kbinfra-lock") is not None  # the dead run's lock
    converged = deployment.run("apply", "--yes")
    assert converged.code == 0, converged.err
    assert "broke the lock" in converged.err
    assert deployment.run("plan").code == 0

    # Killed in the middle of a recreate: the old container is renamed and stopped.
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 66))
    kill_when("waiting until healthy")
    assert _inspect(deployment.container("postgres") + ".kbinfra-old") is not None
    converged = deployment.run("apply", "--yes")
    assert converged.code == 0, converged.err
    assert deployment.run("plan").code == 0
    assert _inspect(deployment.container("postgres") + ".kbinfra-old") is None
    assert _psql(deployment, "show max_connections") == "66"


def test_destroy_keeps_data_unless_confirmed(deployment: Deployment, testbed: Testbed) -> None:
    assert deployment.run("apply", "--yes").code == 0
    volume = f"{deployment.name}-postgres-data"
    assert deployment.run("destroy", "--yes").code == 0
    assert _inspect(deployment.container("postgres")) is None
    assert _docker("volume", "inspect", volume)
    refused = deployment.run("destroy", "--yes", "--delete-data")
    assert refused.code == 2 and "--confirm-name" in refused.err
    wrong = deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", "nope")
    assert wrong.code == 2
    assert _docker("volume", "inspect", volume)
    gone = deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)
    assert gone.code == 0, gone.err
    # no folder of the stack is left where its files were deployed (over SSH: the user's home)
    if deployment.kind == "ssh":
        deployed = Path(pwd.getpwnam(testbed.ssh.user).pw_dir) / ".kbinfra" / deployment.name
    else:
        deployed = deployment.dir / ".kbinfra" / "deployed"
    assert deployed.parent.is_dir() and not deployed.exists()
    assert subprocess.run(
        ["docker", "volume", "inspect", volume], capture_output=True, check=False
    ).returncode


def _known_hosts_with_another_key(ssh_target: SSHTarget, folder: Path) -> Path:
    """A known_hosts file that trusts a fresh key, not the test bed's, for its sshd."""
    other = folder / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = folder / "known_hosts_wrong"
    other_key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    wrong.write_text(f"[{ssh_target.host}]:{ssh_target.port} {other_key}\n")
    return wrong


def test_unknown_or_changed_host_key_is_refused(
    ssh_target: SSHTarget, tmp_path: Path, image_map_path: Path
) -> None:
    deployment = _new_deployment("ssh", tmp_path / "stack", image_map_path, ssh_target)
    offered = subprocess.run(
        ["ssh-keygen", "-lf", str(ssh_target.known_hosts_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    address = f"{ssh_target.host}:{ssh_target.port}"

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    deployment.env["KBINFRA_KNOWN_HOSTS"] = str(empty)
    refused = deployment.run("plan")
    assert refused.code == 2
    line = refused.err.strip()
    assert len(line.splitlines()) == 1
    assert "unknown SSH host key ssh-ed25519" in line and offered in line
    assert address in line and f"kbinfra ssh trust {address}" in line

    deployment.env["KBINFRA_KNOWN_HOSTS"] = str(_known_hosts_with_another_key(ssh_target, tmp_path))
    changed = deployment.run("plan")
    assert changed.code == 2
    assert "host key CHANGED" in changed.err and offered in changed.err

    trusted = subprocess.run(
        [*KBINFRA, "ssh", "trust", address, "--yes", "--known-hosts", str(empty)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert trusted.returncode == 0, trusted.stderr
    assert offered in trusted.stdout
    deployment.env["KBINFRA_KNOWN_HOSTS"] = str(empty)
    assert deployment.run("plan").code == 3


def _master_sockets(runtime: Path) -> list[Path]:
    """The master sockets kbinfra made under ``runtime`` (forwards and locks have a suffix)."""
    folder = runtime / "kbinfra-ssh"
    return [p for p in folder.iterdir() if p.is_socket() and "." not in p.name]


def _ssh_control(socket_path: Path, operation: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-o", f"ControlPath={socket_path}", "-O", operation, "kbinfra"],
        capture_output=True,
        text=True,
        check=False,
    )


def _master(runtime: Path) -> str | None:
    """``ssh -O check`` of the one master under ``runtime``: its answer, or None."""
    sockets = _master_sockets(runtime)
    assert len(sockets) <= 1, sockets
    done = _ssh_control(sockets[0], "check") if sockets else None
    return done.stderr.strip() if done is not None and done.returncode == 0 else None


def test_a_second_plan_rides_on_the_first_ones_ssh_master(
    ssh_target: SSHTarget, tmp_path: Path, image_map_path: Path
) -> None:
    deployment = _new_deployment("ssh", tmp_path / "stack", image_map_path, ssh_target)
    runtime = Path(tempfile.mkdtemp(prefix="kbt-"))  # short: a socket path has a limit
    try:
        deployment.env["XDG_RUNTIME_DIR"] = str(runtime)
        assert deployment.run("plan").code == 3
        first = _master(runtime)
        assert first is not None and first.startswith("Master running (pid=")
        assert stat.S_IMODE((runtime / "kbinfra-ssh").stat().st_mode) == 0o700
        assert deployment.run("plan").code == 3
        assert _master(runtime) == first  # the same master process, no new handshake

        # Another known_hosts that does not trust this key: never the master verified
        # against the first file, but a new connection, refused.
        wrong = _known_hosts_with_another_key(ssh_target, tmp_path)
        deployment.env["KBINFRA_KNOWN_HOSTS"] = str(wrong)
        changed = deployment.run("plan")
        assert changed.code == 2
        assert "host key CHANGED" in changed.err and len(changed.err.strip().splitlines()) == 1

        # With sharing off, the master ends with the command.
        deployment.env["KBINFRA_KNOWN_HOSTS"] = str(ssh_target.known_hosts_path)
        deployment.env["KBINFRA_SSH_PERSIST"] = "0"
        for socket_path in _master_sockets(runtime):
            _ssh_control(socket_path, "exit")
        assert deployment.run("plan").code == 3
        assert _master(runtime) is None
    finally:
        for socket_path in _master_sockets(runtime):
            _ssh_control(socket_path, "exit")
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_master_killed_without_cleaning_up_is_replaced_not_an_error(
    ssh_target: SSHTarget, tmp_path: Path, image_map_path: Path
) -> None:
    """A reboot, the OOM killer or ``kill -9`` ends a master without removing its socket:
    the next run must start a new master, not fail on the dead one's socket (it did: ssh
    would not bind over the old file, and ``-O forward`` failed with "Connection refused")."""
    deployment = _new_deployment("ssh", tmp_path / "stack", image_map_path, ssh_target)
    runtime = Path(tempfile.mkdtemp(prefix="kbt-"))
    try:
        deployment.env["XDG_RUNTIME_DIR"] = str(runtime)
        assert deployment.run("plan").code == 3
        answer = _master(runtime)
        assert answer is not None
        match = re.search(r"pid=(\d+)", answer)
        assert match is not None, answer
        os.kill(int(match[1]), signal.SIGKILL)
        (socket_path,) = _master_sockets(runtime)
        deadline = time.monotonic() + 10
        while _ssh_control(socket_path, "check").returncode == 0:
            assert time.monotonic() < deadline, "the killed master still answers"
            time.sleep(0.05)
        assert socket_path.is_socket()  # left behind, as a crash leaves it

        again = deployment.run("plan")
        assert again.code == 3, again.err
        replaced = _master(runtime)
        assert replaced is not None and replaced != answer
    finally:
        for socket_path in _master_sockets(runtime):
            _ssh_control(socket_path, "exit")
        shutil.rmtree(runtime, ignore_errors=True)


def _container_ids(deployment: Deployment) -> dict[str, str]:
    return {
        service: (_inspect(deployment.container(service)) or {}).get("Id", "") for service in SMALL
    }


def test_a_plan_file_is_applied_exactly_or_refused_when_anything_moved(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert deployment.run("apply", "--yes").code == 0
    saved = tmp_path / "postgres.plan"

    # Two services changed, the plan names one: applying it changes that one alone.
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 66))
    deployment.edit(
        lambda d: d["services"]["redis"].update(
            allow_eviction_of_queues=True, maxmemory_policy="allkeys-lru"
        )
    )
    planned = deployment.run("plan", "--only", "postgres", "--out", str(saved))
    assert planned.code == 3, planned.err
    assert saved.stat().st_mode & 0o777 == 0o600
    document = json.loads(saved.read_text())
    assert document["only"] == ["postgres"]
    assert [s["service"] for s in document["plan"]["services"] if s["action"] != "nothing"] == [
        "postgres"
    ]
    before = _container_ids(deployment)
    applied = deployment.run("apply", str(saved), "-o", "json")  # no question asked
    assert applied.code == 0, applied.err
    actions = {s["service"]: s["action"] for s in applied.json()["services"]}
    assert actions["postgres"] == "recreate"
    after = _container_ids(deployment)
    assert after["postgres"] != before["postgres"]
    assert after["redis"] == before["redis"]  # changed in kbinfra.yaml, not in the plan
    assert _psql(deployment, "show max_connections") == "66"

    # The same plan again: the target moved (postgres was recreated), so it is refused.
    stale = deployment.run("apply", str(saved))
    assert stale.code == 2
    assert "changed since the plan was made" in stale.err and "target" in stale.err

    # The stack changed after the plan was made: refused before anything changes.
    planned = deployment.run("plan", "--out", str(saved))
    assert planned.code == 3, planned.err
    deployment.edit(lambda d: d["services"]["postgres"].__setitem__("max_connections", 67))
    before = _container_ids(deployment)
    refused = deployment.run("apply", str(saved))
    assert refused.code == 2
    assert "the stack changed since the plan was made" in refused.err
    assert _container_ids(deployment) == before

    # The target changed after the plan was made (a container stopped by hand): refused.
    planned = deployment.run("plan", "--out", str(saved))
    assert planned.code == 3, planned.err
    _docker("stop", deployment.container("node-exporter"))
    refused = deployment.run("apply", str(saved))
    assert refused.code == 2
    assert f"the target {document['target']} changed" in refused.err
    assert _container_ids(deployment) == before
    both = deployment.run("apply", str(saved), "--only", "redis")
    assert both.code == 2 and "--only cannot be given with a plan file" in both.err

    # A fresh plan of the current state applies, and the next plan has nothing to do.
    planned = deployment.run("plan", "--out", str(saved))
    assert planned.code == 3, planned.err
    assert deployment.run("apply", str(saved)).code == 0
    assert deployment.run("plan").code == 0
