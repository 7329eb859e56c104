"""PostgreSQL's alternating login roles (pure): which role a value opens, what each phase's
roles script makes, and what ``secrets rotate`` may take. The logins themselves are proven
against the test bed's PostgreSQL in ``tests/integration/test_rotation.py``."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kbinfra.rotation import PHASES, new_state, view
from kbinfra.rotation_run import fresh_values, refusal_reasons, rotatable_secrets
from kbinfra.services.postgres import rotate
from kbinfra.services.postgres.roles import (
    ConsumerRole,
    consumer_sql,
    login_role,
    scram_verifier,
    slot,
)
from kbinfra.stack import Stack, open_stack
from tests.conftest import fixed_secret, only_services, write_stack_dir

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MONITOR = ConsumerRole("kbinfra_monitor", "postgres_monitor_password", grants=("pg_monitor",))
APP = ConsumerRole("kb_app", "postgres_app_password", "kb_app")
ONLY_POSTGRES = only_services("postgres", "postgres-exporter")


def values_in_slots() -> tuple[str, str]:
    """Two values, one opening each login role."""
    first = fixed_secret("one")
    other = next(v for i in itertools.count() if slot(v := fixed_secret(f"two{i}")) != slot(first))
    return first, other


def logins(sql: list[str]) -> dict[str, str]:
    """``role -> "LOGIN"/"NOLOGIN"`` from the statements that set a login role's password."""
    found = {}
    for line in sql:
        words = line.split()
        if line.startswith("ALTER ROLE") and "PASSWORD" in words and words[2][-2:] in ("_a", "_b"):
            found[words[2]] = words[4]
    return found


def test_a_value_opens_one_login_role_and_a_fresh_one_opens_the_other() -> None:
    first, other = values_in_slots()
    assert {login_role("kb_app", first), login_role("kb_app", other)} == {"kb_app_a", "kb_app_b"}
    drawn = iter([first, first, other])  # the first draws fall on the same role: drawn again
    assert rotate.fresh_value(first, lambda: next(drawn)) == other


def test_the_verifier_is_postgresqls_scram_sha_256_and_stable() -> None:
    """RFC 5802/7677 as PostgreSQL stores it: ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey``."""
    verifier = scram_verifier("kb_app_a", "pencil")
    method, rest = verifier.split("$", 1)
    counts, keys = rest.split("$")
    iterations, salt64 = counts.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert (method, iterations) == ("SCRAM-SHA-256", "4096")
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(salt64), 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert stored == hashlib.sha256(client_key).digest()
    assert server == hmac.new(salted, b"Server Key", "sha256").digest()
    assert scram_verifier("kb_app_a", "pencil") == verifier  # a plan shows no change
    assert scram_verifier("kb_app_b", "pencil") != verifier  # one salt per role


def test_outside_a_rotation_one_login_role_logs_in_and_the_idle_one_is_ended() -> None:
    current, _ = values_in_slots()
    sql = consumer_sql(APP, [current])
    active = login_role("kb_app", current)
    idle = ({"kb_app_a", "kb_app_b"} - {active}).pop()
    assert logins(sql) == {active: "LOGIN", idle: "NOLOGIN"}
    assert f"ALTER ROLE {idle} WITH NOLOGIN PASSWORD NULL;" in sql
    assert any("pg_terminate_backend" in line and f"'{idle}'" in line for line in sql)
    # an older stack's owner keeps its LOGIN and password: its clients are moved by this apply
    assert not any(line.startswith("ALTER ROLE kb_app WITH NOLOGIN") for line in sql)
    # new objects belong to the owner, whichever login role made them
    assert "ALTER ROLE kb_app_a SET role = 'kb_app';" in sql
    assert "ALTER ROLE kb_app_b SET role = 'kb_app';" in sql
    assert "CREATE DATABASE kb_app OWNER kb_app" in "\n".join(sql)
    assert current not in "\n".join(sql)  # a verifier, never the password


def test_during_the_overlap_both_login_roles_log_in_and_the_owner_does_not() -> None:
    old, new = values_in_slots()
    sql = consumer_sql(MONITOR, [new, old])
    assert set(logins(sql).values()) == {"LOGIN"}
    assert f"PASSWORD '{scram_verifier(login_role(MONITOR.owner, old), old)}'" in "\n".join(sql)
    assert f"PASSWORD '{scram_verifier(login_role(MONITOR.owner, new), new)}'" in "\n".join(sql)
    assert "ALTER ROLE kbinfra_monitor WITH NOLOGIN PASSWORD NULL;" in sql
    assert not any("pg_terminate_backend" in line for line in sql)  # no session is ended
    assert "GRANT pg_monitor TO kbinfra_monitor;" in sql


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return open_stack(write_stack_dir(tmp_path / "stack", overrides=ONLY_POSTGRES))


def roles_text(stack: Stack) -> str:
    return next(f.text for f in stack.rendered if f.path == "postgres/roles/roles.sh")


def test_each_phase_renders_the_roles_its_view_asks_and_the_clients_follow(
    stack: Stack,
) -> None:
    name = "postgres_monitor_password"
    old = stack.secrets[name]
    draws = itertools.count()
    new = rotate.fresh_value(old, lambda: fixed_secret(f"next-{next(draws)}"))
    state = new_state("kb", [name], stack.secrets, {name: new}, NOW)
    rendered = {}
    for phase in PHASES:
        shown = view(state, phase, stack.secrets)
        phased = dataclasses.replace(stack, secrets=shown.secrets, overlap=shown.overlap)
        exporter = phased.containers["postgres-exporter"]
        rendered[phase] = (roles_text(phased), exporter.env["DATA_SOURCE_USER"])
    old_role, new_role = login_role("kbinfra_monitor", old), login_role("kbinfra_monitor", new)
    assert rendered["generated"] == (roles_text(stack), old_role)
    assert rendered["added"][1] == old_role  # clients stay, the new role is added
    assert f"ALTER ROLE {new_role} WITH LOGIN" in rendered["added"][0]
    assert rendered["moved"] == (rendered["added"][0], new_role)  # the server is not touched
    assert f"ALTER ROLE {old_role} WITH NOLOGIN PASSWORD NULL;" in rendered["revoked"][0]
    assert rendered["revoked"][1] == new_role
    # the server itself is never recreated: no consumer's password in its container
    servers = set()
    for phase in PHASES:
        shown = view(state, phase, stack.secrets)
        phased = dataclasses.replace(stack, secrets=shown.secrets, overlap=shown.overlap)
        servers.add(repr(phased.containers["postgres"]))
    assert len(servers) == 1


def superuser_files(stack: Stack) -> tuple[str, str]:
    texts = {f.path: f.text for f in stack.rendered}
    return texts["postgres/roles/superuser"], texts["postgres/roles/superuser-other"]


def test_the_superuser_rotates_through_its_password_files_and_the_server_stays(
    stack: Stack,
) -> None:
    """Clients of the superuser are kbinfra alone: its file holds the value they use, the
    other file the value the server may still hold, and the roles script sets the former."""
    name = "postgres_password"
    old, new = stack.secrets[name], fixed_secret("superuser-next")
    state = new_state("kb", [name], stack.secrets, {name: new}, NOW)
    files, servers = {}, set()
    for phase in PHASES:
        shown = view(state, phase, stack.secrets)
        phased = dataclasses.replace(stack, secrets=shown.secrets, overlap=shown.overlap)
        files[phase] = superuser_files(phased)
        script = roles_text(phased)
        client = shown.secrets[name]
        assert f"ALTER ROLE kb WITH PASSWORD '{scram_verifier('kb', client)}';" in script
        assert old not in script and new not in script  # verifiers only
        servers.add(repr(phased.containers["postgres"]))
    assert files == {
        "generated": (old, ""),
        "added": (old, new),
        "moved": (new, old),  # the roles script logs in with the old one and sets the new
        "revoked": (new, ""),
    }
    assert len(servers) == 1  # no phase recreates the server: no password in its spec


def test_the_superusers_password_is_a_file_the_server_reloads_not_its_environment(
    stack: Stack,
) -> None:
    spec = stack.containers["postgres"]
    assert spec.secret_env == {}
    assert spec.env["POSTGRES_PASSWORD_FILE"] == "/etc/postgresql/roles/superuser"
    assert stack.secrets["postgres_password"] not in repr(spec)
    mounted = {m.source: m for m in spec.files}
    for source in ("postgres/roles/superuser", "postgres/roles/superuser-other"):
        assert (mounted[source].uid, mounted[source].gid) == (999, 999)
        rendered = next(f for f in stack.rendered if f.path == source)
        assert rendered.mode == 0o600 and rendered.secret
    assert spec.reload is not None
    assert set(spec.reload.files) == {
        "postgres/roles/roles.sh",
        "postgres/roles/superuser",
        "postgres/roles/superuser-other",
    }
    script = roles_text(stack)
    # it logs in with the file's value, else (during a rotation) with the other value
    assert 'PGPASSWORD="$(cat /etc/postgresql/roles/superuser)"' in script
    assert 'other="$(cat /etc/postgresql/roles/superuser-other)"' in script
    assert "set -x" not in script


def test_secrets_rotate_takes_the_consumers_and_the_superuser(
    stack: Stack,
) -> None:
    assert {"postgres_monitor_password", "postgres_password"} <= rotatable_secrets(stack)
    assert "postgres_password" not in refusal_reasons(stack)
    drawn = fresh_values(stack, ["postgres_monitor_password"])["postgres_monitor_password"]
    assert slot(drawn) != slot(stack.secrets["postgres_monitor_password"])


def test_on_a_swarm_the_monitor_role_is_refused_with_why(tmp_path: Path) -> None:
    from tests.unit.swarm.conftest import write_swarm_stack_dir  # noqa: PLC0415

    swarm = open_stack(write_swarm_stack_dir(tmp_path / "swarm"))
    assert "postgres_monitor_password" not in rotatable_secrets(swarm)
    assert "one host" in refusal_reasons(swarm)["postgres_monitor_password"]
    assert "postgres_password" not in rotatable_secrets(swarm)
    assert "Docker secret" in refusal_reasons(swarm)["postgres_password"]
    # on a Swarm the superuser's password stays a Docker secret, read at initdb
    assert swarm.containers["postgres"].secret_env["POSTGRES_PASSWORD"] == "postgres_password"
    assert swarm.containers["postgres-exporter"].env["DATA_SOURCE_USER"] == "kbinfra_monitor"
