"""``kbinfra secrets rotate`` against a real Redis and a real PostgreSQL 15 under a request
loop, on the local engine.

One stack (Redis, PostgreSQL and its exporter) is shared by the tests of this module, which
run in order:

- ``rotate --all`` while a client loops logins and requests as the ``app`` and the ``admin``
  ACL users, and PostgreSQL logins and a query as the exporter's consumer (the login role its
  password opens), a new connection each time: zero failed requests, the old passwords
  refused afterwards (by every role of the consumer, an older stack's owner login included),
  the new ones in secrets.yaml, ``secrets list`` showing their new date, the next plan empty,
  Redis and PostgreSQL never recreated (the ACL file and the roles script are run in place),
  the exporter moved to the other login role, PostgreSQL's superuser (kbinfra's own login)
  opened by its new password only and no longer in the server's environment;
- a rotation killed (kill -9) once its first phase is done: the state file holds the phase,
  apply refuses in one line, the client still gets every answer, and a rerun of the same
  command finishes it;
- the superuser's rotation killed after its first phase, and its ``moved`` files then put
  into the server as an apply killed before its roles script ran would leave them (the
  server still holding the old password): the rerun's roles script logs in with the old
  value, sets the new one, and the rotation finishes, the server never recreated;
- an offsite repository's restic password, on a real local repository beside the stack
  holding one snapshot: rotated, the snapshot lists and restores with the new password, the
  old one is refused by restic, one key is left; and a run killed right after ``restic key
  add`` finished by a rerun (never a second new key, never the repository without a key
  kbinfra holds).

The client stands for a consumer kbinfra moves (the app's replicas, the exporter): it holds
the old value until the rotation says it moves the clients (``phase moved``), then the new one.
A store that accepted the new value late, or revoked the old one early, fails its requests.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import redis
import yaml
from psycopg import sql

from kbinfra.services.postgres.roles import login_role, login_roles

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import (
        OFFSITE_SNAPSHOT_FILE,
        ROTATION_STATE,
        Deployment,
        add_offsite_repository,
        new_deployment,
        pending_new_values,
        restic,
        rotate_following,
    )
    from .stack_support import stack_secrets as secrets_of
    from .testbed_support import Testbed
    from .traffic import BackgroundTraffic
except ImportError:
    from stack_support import (  # type: ignore[no-redef]
        OFFSITE_SNAPSHOT_FILE,
        ROTATION_STATE,
        Deployment,
        add_offsite_repository,
        new_deployment,
        pending_new_values,
        restic,
        rotate_following,
    )
    from stack_support import stack_secrets as secrets_of  # type: ignore[no-redef]
    from testbed_support import Testbed  # type: ignore[no-redef]
    from traffic import BackgroundTraffic  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

USERS = {"app": "redis_app_password", "admin": "redis_admin_password"}
#: PostgreSQL's consumers the client stands for: owner role -> its secret.
MONITOR = "postgres_monitor_password"
PG_CONSUMERS = {"kbinfra_monitor": MONITOR}
STATE = ROTATION_STATE
MAX_SECONDS = 300.0


@pytest.fixture(scope="module")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("rotation") / "stack"
    services = ["redis", "postgres", "postgres-exporter"]
    deployment = new_deployment("local", folder, testbed, services, prefix="kbs")
    applied = deployment.run("apply", "--yes", "-o", "json")
    try:
        assert applied.code == 0, applied.err
        yield deployment
    finally:
        deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)


def pg_logs_in(stack: Deployment, role: str, password: str) -> bool:
    try:
        with stack.postgres(user=role, password=password) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as error:
        words = ("password authentication failed", "is not permitted to log in")
        assert any(w in str(error) for w in words), error
        return False
    return True


def pg_request(stack: Deployment, owner: str, password: str) -> str | None:
    """Log in as the login role ``password`` opens and query as ``owner``: None, or why not."""
    role = login_role(owner, password)
    try:
        with stack.postgres(user=role, password=password) as conn:
            row = conn.execute("SELECT current_user, session_user, count(*) FROM pg_stat_activity")
            found = row.fetchone()
    except psycopg.Error as error:
        return f"{role}: {type(error).__name__}: {str(error).strip()[:160]}"
    if found is None or found[:2] != (owner, role):  # its objects would be the owner's
        return f"{role}: logged in as {found}"
    return None


def logs_in(port: int, user: str, password: str) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, username=user, password=password)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


class Client(BackgroundTraffic):
    """Logs in as each user and sets and reads a key, a new connection each time, in a
    thread, with the value it holds; :meth:`move` gives it the new ones."""

    max_seconds = MAX_SECONDS
    join_timeout_s = 30

    def __init__(
        self, port: int, held: dict[str, str], pg: tuple[Deployment, dict[str, str]] | None = None
    ) -> None:
        super().__init__()
        self.port = port
        self.held = dict(held)
        self.pg, self.pg_held = pg if pg is not None else (None, {})

    def move(self, new: dict[str, str]) -> None:
        self.held = {user: new.get(USERS[user], held) for user, held in self.held.items()}
        self.pg_held = {o: new.get(PG_CONSUMERS[o], held) for o, held in self.pg_held.items()}

    def send(self) -> None:
        for _ in self.rounds():
            for user, password in list(self.held.items()):
                self.sent += 1
                client = redis.Redis(
                    host="127.0.0.1", port=self.port, username=user, password=password
                )
                try:
                    key = f"rotation-{user}"
                    client.set(key, str(self.sent))
                    if client.get(key) is None:
                        self.failures.append(f"{user}: the key it set is gone")
                except redis.RedisError as error:
                    self.failures.append(f"{user}: {type(error).__name__}: {error}")
                finally:
                    client.close()
            for owner, password in list(self.pg_held.items()) if self.pg else ():
                self.sent += 1
                failed = pg_request(self.pg, owner, password)
                if failed is not None:
                    self.failures.append(failed)


def redis_id(docker_client: docker.DockerClient, stack: Deployment) -> str:
    found: str = docker_client.api.inspect_container(stack.container("redis"))["Id"]
    return found


def pg_held(values: dict[str, str]) -> dict[str, str]:
    return {owner: values[secret] for owner, secret in PG_CONSUMERS.items()}


def test_rotate_all_under_a_request_loop_fails_no_request_and_refuses_the_old_values(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    port = stack.port("redis")
    old = secrets_of(stack)
    before = redis_id(docker_client, stack)
    pg_before = docker_client.api.inspect_container(stack.container("postgres"))["Id"]
    exporter = stack.container("postgres-exporter")
    old_monitor = old[PG_CONSUMERS["kbinfra_monitor"]]
    assert (
        f"DATA_SOURCE_USER={login_role('kbinfra_monitor', old_monitor)}"
        in (docker_client.api.inspect_container(exporter)["Config"]["Env"])
    )
    # an older stack's consumer logged in as the owner role itself, with the same password:
    # made so here as its initdb did; it keeps logging in until the first rotation
    with stack.postgres() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE kbinfra_monitor LOGIN PASSWORD {}").format(sql.Literal(old_monitor))
        )
    assert pg_logs_in(stack, "kbinfra_monitor", old_monitor)
    started = datetime.now(UTC)
    users = {user: old[secret] for user, secret in USERS.items()}
    with Client(port, users, (stack, pg_held(old))) as client:
        time.sleep(0.5)
        code, err, out = rotate_following(stack, client.move, "--all", "--yes", "-o", "json")
        time.sleep(0.5)
    print(client.report())
    assert code == 0, err
    assert client.sent >= 20 and client.failures == [], client.report()
    assert set(client.held.values()) != {old[s] for s in USERS.values()}  # it was moved
    rotated = json.loads(out)["rotated"]
    assert {*USERS.values(), "redis_exporter_password", "backup_hmac_key"} <= set(rotated)
    assert set(PG_CONSUMERS.values()) <= set(rotated)
    assert "postgres_password" in rotated
    assert "postgres: the new values open it, the old ones are refused" in err
    assert "refresh your safe copy" in err
    new = secrets_of(stack)
    for user, secret in USERS.items():
        assert new[secret] != old[secret]
        assert not logs_in(port, user, old[secret]), f"{user}'s old password still opens Redis"
        assert logs_in(port, user, new[secret])
    assert new["backup_hmac_keys_previous"].split()[0] == old["backup_hmac_key"]
    assert not (stack.dir / STATE).exists()
    assert redis_id(docker_client, stack) == before  # reloaded in place, never recreated
    for owner, secret in PG_CONSUMERS.items():
        assert new[secret] != old[secret]
        assert login_role(owner, new[secret]) != login_role(owner, old[secret])
        for role in (*login_roles(owner), owner):
            assert not pg_logs_in(stack, role, old[secret]), f"{role} takes the old password"
        assert pg_logs_in(stack, login_role(owner, new[secret]), new[secret])
    server = docker_client.api.inspect_container(stack.container("postgres"))
    assert server["Id"] == pg_before
    assert not pg_logs_in(stack, "kb", old["postgres_password"]), "the old superuser opens it"
    assert pg_logs_in(stack, "kb", new["postgres_password"])
    assert all(not v.startswith("POSTGRES_PASSWORD=") for v in server["Config"]["Env"])
    assert old["postgres_password"] not in json.dumps(server)
    assert new["postgres_password"] not in json.dumps(server)
    moved_to = (
        f"DATA_SOURCE_USER={login_role('kbinfra_monitor', new[PG_CONSUMERS['kbinfra_monitor']])}"
    )
    assert moved_to in docker_client.api.inspect_container(exporter)["Config"]["Env"]
    listed = stack.run("secrets", "list", "-o", "json")
    dates = {s["name"]: s["generated"] for s in listed.json()["secrets"]}
    assert datetime.fromisoformat(dates["redis_app_password"]) >= started.replace(microsecond=0)
    plan = stack.run("plan", "-o", "json")
    assert plan.code == 0 and not plan.json()["changes"], plan.out


def test_a_rotation_killed_midway_is_finished_by_a_rerun_and_apply_waits_for_it(
    stack: Deployment,
) -> None:
    port = stack.port("redis")
    old = secrets_of(stack)
    names = ("redis_app_password", "postgres_monitor_password")
    users = {user: old[secret] for user, secret in USERS.items()}
    with Client(port, users, (stack, pg_held(old))) as client:
        code, err, _ = rotate_following(
            stack, client.move, *names, "--yes", kill_after="phase added done"
        )
        assert code == -signal.SIGKILL, err
        state = json.loads((stack.dir / STATE).read_text())
        # killed when it printed "phase added done": on a loaded machine the kill may land
        # once the next phase is done too; in either both values are accepted
        assert state["phase"] in ("added", "moved"), state["phase"]
        assert (stack.dir / STATE).stat().st_mode & 0o777 == 0o600
        new_value = state["new"]["redis_app_password"]
        monitor = {"old": old["postgres_monitor_password"]}
        monitor["new"] = state["new"]["postgres_monitor_password"]
        # the overlap holds: both values open Redis and PostgreSQL while the rotation waits
        assert logs_in(port, "app", old["redis_app_password"])
        assert logs_in(port, "app", new_value)
        for value in monitor.values():
            assert pg_logs_in(stack, login_role("kbinfra_monitor", value), value)
        refused = stack.run("apply", "--yes")
        assert refused.code == 2
        assert (
            "apply: a rotation of postgres_monitor_password, redis_app_password is unfinished"
            in refused.err
        )
        code, err, _ = rotate_following(stack, client.move, "--yes")
        assert code == 0, err
        assert f"it stopped at {state['phase']}" in err
    print(client.report())
    assert client.failures == [], client.report()
    assert secrets_of(stack)["redis_app_password"] == new_value
    assert not logs_in(port, "app", old["redis_app_password"])
    assert logs_in(port, "app", new_value)
    assert secrets_of(stack)["redis_admin_password"] == old["redis_admin_password"]
    assert secrets_of(stack)["postgres_monitor_password"] == monitor["new"]
    assert not pg_logs_in(stack, login_role("kbinfra_monitor", monitor["old"]), monitor["old"])
    assert pg_logs_in(stack, login_role("kbinfra_monitor", monitor["new"]), monitor["new"])


def put_superuser_files(
    docker_client: docker.DockerClient, stack: Deployment, current: str, other: str
) -> None:
    """Write the superuser's password files into the running server as apply delivers them
    (0600, the server's own), without running its roles script."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, value in (("superuser", current), ("superuser-other", other)):
            data = value.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, 999, 999
            tar.addfile(info, io.BytesIO(data))
    container = stack.container("postgres")
    assert docker_client.api.put_archive(container, "/etc/postgresql/roles", archive.getvalue())


def test_a_superuser_rotation_killed_before_its_alter_role_is_finished_by_a_rerun(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    old = secrets_of(stack)
    server = docker_client.api.inspect_container(stack.container("postgres"))["Id"]
    with Client(stack.port("redis"), {}, (stack, pg_held(old))) as client:
        # stopped exactly after phase added (a kill -9 at that line could land a phase later
        # on a loaded machine); the kill inside the next phase is then made by hand below
        code, err, _ = rotate_following(
            stack, client.move, "postgres_password", "--yes", "--stop-after", "added"
        )
        assert code == 0, err
        assert "stopped after phase added" in err
        new = json.loads((stack.dir / STATE).read_text())["new"]["postgres_password"]
        # phase added: kbinfra still logs in with the old value; the server holds only it
        assert pg_logs_in(stack, "kb", old["postgres_password"])
        assert not pg_logs_in(stack, "kb", new)
        # the next phase's files, delivered by an apply killed before its roles script ran
        put_superuser_files(docker_client, stack, new, old["postgres_password"])
        code, err, _ = rotate_following(stack, client.move, "--yes")
        assert code == 0, err
        assert "it stopped at added" in err
    print(client.report())
    assert client.failures == [], client.report()
    assert secrets_of(stack)["postgres_password"] == new
    assert not pg_logs_in(stack, "kb", old["postgres_password"])
    assert pg_logs_in(stack, "kb", new)
    assert docker_client.api.inspect_container(stack.container("postgres"))["Id"] == server
    check = stack.run("check", "--only", "postgres,postgres-exporter", "-o", "json")
    assert check.code == 0, check.out + check.err


def test_a_superuser_password_changed_by_hand_fails_apply_in_one_line_and_nothing_moves(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    """Only a rotation changes the server's password: a new value typed into secrets.yaml is
    refused by the reload, which puts the running server's files back, and says how to fix
    it; the server keeps its password and its container."""
    held = secrets_of(stack)
    server = docker_client.api.inspect_container(stack.container("postgres"))["Id"]
    edited = {**held, "postgres_password": f"{held['postgres_password']}-typed-by-hand"}
    (stack.dir / "secrets.yaml").write_text(yaml.safe_dump(edited))
    try:
        refused = stack.run("apply", "--yes")
        assert refused.code != 0, refused.out
        assert "postgres_password (secrets.yaml) does not open the server as kb" in refused.err
        assert "kbinfra secrets rotate postgres_password" in refused.err
        assert "its previous files were put back and reloaded" in refused.err
        assert edited["postgres_password"] not in refused.err + refused.out
        assert "Traceback" not in refused.err
        assert pg_logs_in(stack, "kb", held["postgres_password"])
        assert not pg_logs_in(stack, "kb", edited["postgres_password"])
        assert docker_client.api.inspect_container(stack.container("postgres"))["Id"] == server
    finally:
        (stack.dir / "secrets.yaml").write_text(yaml.safe_dump(held))
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err


def test_a_backup_from_before_a_rotation_restores_and_the_consumers_still_log_in(
    stack: Deployment,
) -> None:
    """A backup with --include-secrets holds the login roles' and the superuser's old SCRAM
    verifiers: a restore onto the rotated stack leaves the roles as kbinfra made them (the
    new password opens the active role and the superuser, the old one opens nothing) and the
    exporter keeps logging in."""
    old = secrets_of(stack)["postgres_monitor_password"]
    old_superuser = secrets_of(stack)["postgres_password"]
    made = stack.run("backup", "--include-secrets", "--output", "json")
    assert made.code == 0, made.err
    backup = Path(made.json()["path"])
    assert login_role("kbinfra_monitor", old) in (backup / "postgres" / "roles.json").read_text()
    code, err, _ = rotate_following(
        stack, Client(stack.port("redis"), {}).move, MONITOR, "postgres_password", "--yes"
    )
    assert code == 0, err
    assert "backups taken before" in err and "restore with the new copy" in err
    new = secrets_of(stack)[MONITOR]
    restored = stack.run("restore", str(backup), "--yes", "--no-safety-backup", "-o", "json")
    assert restored.code == 0, restored.err
    for role in (*login_roles("kbinfra_monitor"), "kbinfra_monitor"):
        assert not pg_logs_in(stack, role, old), f"the restore gave {role} its old password"
    assert pg_request(stack, "kbinfra_monitor", new) is None
    assert not pg_logs_in(stack, "kb", old_superuser), "the restore gave the superuser its old one"
    assert pg_logs_in(stack, "kb", secrets_of(stack)["postgres_password"])
    check = stack.run("check", "--only", "postgres,postgres-exporter", "-o", "json")
    assert check.code == 0, check.out + check.err


# ------------------------------------------------- an offsite repository's restic password

OFFSITE = "offsite_disk_password"
SNAPSHOT_FILE = OFFSITE_SNAPSHOT_FILE


def repository_keys(repository: Path, password: str) -> list[dict[str, Any]]:
    listed = restic(repository, password, "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys: list[dict[str, Any]] = json.loads(listed.stdout)
    return keys


@pytest.fixture(scope="module")
def offsite(stack: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real local restic repository configured as the stack's offsite ``disk``, holding one
    kbinfra-tagged snapshot, made with the password secrets.yaml holds."""
    return add_offsite_repository(stack, tmp_path_factory.mktemp("offsite"))


def assert_opens_only_with(repository: Path, password: str, refused: str, tmp: Path) -> None:
    """The snapshot lists and restores with ``password``; restic refuses ``refused``; one
    key is left."""
    listed = restic(repository, password, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    restored = restic(repository, password, "restore", "latest", "--target", str(tmp))
    assert restored.returncode == 0, restored.stderr
    assert (tmp / "backup" / SNAPSHOT_FILE).read_text().startswith("row 0\nrow 1\n")
    wrong = restic(repository, refused, "snapshots")
    assert wrong.returncode != 0 and "wrong password" in wrong.stderr
    assert len(repository_keys(repository, password)) == 1


def test_an_offsite_password_rotates_through_restic_keys_and_the_snapshot_stays(
    stack: Deployment, offsite: Path, tmp_path: Path
) -> None:
    old = secrets_of(stack)[OFFSITE]
    code, err, out = rotate_following(
        stack, Client(stack.port("redis"), {}).move, OFFSITE, "--yes", "-o", "json"
    )
    assert code == 0, err
    assert json.loads(out)["rotated"] == [OFFSITE]
    assert "restic key add" in err and "restic key remove" in err
    assert "offsite disk: the new password opens it, the old one is refused" in err
    assert "redis: reloaded" not in err  # no service reads it: nothing was applied
    new = secrets_of(stack)[OFFSITE]
    assert new != old and not (stack.dir / STATE).exists()
    assert_opens_only_with(offsite, new, old, tmp_path)


def test_an_offsite_rotation_killed_after_key_add_is_finished_by_a_rerun(
    stack: Deployment, offsite: Path, tmp_path: Path
) -> None:
    old = secrets_of(stack)[OFFSITE]
    client = Client(stack.port("redis"), {})
    code, err, _ = rotate_following(
        stack, client.move, OFFSITE, "--yes", kill_after="restic key add"
    )
    assert code == -signal.SIGKILL, err
    new = pending_new_values(stack)[OFFSITE]
    assert secrets_of(stack)[OFFSITE] == old
    # killed between key add and key remove: two keys, each opened by a value kbinfra holds
    assert len(repository_keys(offsite, old)) == 2
    assert len(repository_keys(offsite, new)) == 2
    code, err, _ = rotate_following(stack, client.move, "--yes")
    assert code == 0, err
    assert "finishing the rotation of offsite_disk_password" in err
    assert secrets_of(stack)[OFFSITE] == new
    assert_opens_only_with(offsite, new, old, tmp_path)
