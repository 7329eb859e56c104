"""The PostgreSQL roles kbinfra's consumers log in as: two login roles per consumer, used in
turn, so that a password rotation never fails a login (``kbinfra secrets rotate``).

A role has one password. Each consumer (the exporter's ``kbinfra_monitor``, each service's
``Service.database_roles``: the app tier's ``kb_app``) is therefore an *owner* role, NOLOGIN,
that holds the privileges and owns the objects, and two login roles ``<owner>_a`` and
``<owner>_b``, members of it (INHERIT) whose sessions start as it (``ALTER ROLE … SET role``),
so a table one of them creates belongs to the owner and stays usable through the other.

Which of the two a client uses is a function of the password alone (:func:`login_role`): a
rotation draws its new value until it falls on the other one (``fresh_value`` in
:mod:`kbinfra.services.postgres.rotate`). So secrets.yaml, the rotation state file and a
restored safe copy of secrets.yaml each say which role is active, with no other file that
could disagree with them, and a kill -9 anywhere leaves nothing else to remember.

Every value a consumer's store accepts (``ServiceContext.accepted``: the current one, and
during a rotation the other one too) opens its own login role; the idle one is NOLOGIN with
no password, and its sessions are ended (no client uses it by then: the apply that moved the
clients was health gated). The passwords are in the script as SCRAM-SHA-256 verifiers, never
in clear, so the script can be delivered into the running server and run (``Reload``) without
a restart, and no password is in the container's environment.

Stacks made before this had the owner role itself as the login role. Their owner keeps its
LOGIN and password (the clients of the previous release still use it during the apply that
moves them) until a rotation's first phase, which takes its LOGIN away.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import NamedTuple

#: PostgreSQL's default ``scram_iterations``.
SCRAM_ITERATIONS = 4096
SLOTS = ("a", "b")


class ConsumerRole(NamedTuple):
    """A consumer's owner role, what it is given, and the secret of its login roles."""

    owner: str
    password_secret: str
    #: The database it owns (the app's), or None (the exporter owns nothing).
    database: str | None = None
    #: Roles granted to the owner (``pg_monitor``).
    grants: tuple[str, ...] = ()


def slot(password: str) -> str:
    """``a`` or ``b``: which login role ``password`` belongs to."""
    return SLOTS[hashlib.sha256(password.encode()).digest()[0] & 1]


def login_role(owner: str, password: str) -> str:
    """The login role a client holding ``password`` logs in as (``kb_app_a``)."""
    return f"{owner}_{slot(password)}"


def login_roles(owner: str) -> tuple[str, ...]:
    return tuple(f"{owner}_{s}" for s in SLOTS)


def scram_verifier(role: str, password: str) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of ``password`` (what ``pg_authid`` stores). The
    salt is derived from the role and the password, so a render is the same every time and
    a plan shows no change while the password stays."""
    salt = hmac.new(password.encode(), f"kbinfra scram salt {role}".encode(), "sha256").digest()
    salt = salt[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def consumer_sql(role: ConsumerRole, accepted: Sequence[str]) -> list[str]:
    """The statements that make ``role``'s owner and login roles as they should be, with
    every value of ``accepted`` opening its own login role (at most one per slot)."""
    owner = role.owner
    active = {slot(value): value for value in reversed(accepted)}  # the current one wins
    rotating = len(active) > 1
    limits = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    lines = [
        f"SELECT 'CREATE ROLE {owner} NOLOGIN' WHERE NOT EXISTS "
        f"(SELECT FROM pg_roles WHERE rolname = '{owner}')\\gexec",
        f"ALTER ROLE {owner} WITH {limits};",
        *(f"GRANT {granted} TO {owner};" for granted in role.grants),
    ]
    if rotating:
        # The clients use a login role since the apply before the rotation (it refuses to
        # start with changes pending): an owner of an older stack loses its LOGIN now.
        lines.append(f"ALTER ROLE {owner} WITH NOLOGIN PASSWORD NULL;")
    idle = []
    for name_slot in SLOTS:
        login = f"{owner}_{name_slot}"
        lines += [
            f"SELECT 'CREATE ROLE {login} NOLOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = '{login}')\\gexec",
            f"ALTER ROLE {login} WITH INHERIT {limits};",
            f"GRANT {owner} TO {login};",
            f"ALTER ROLE {login} SET role = '{owner}';",
        ]
        value = active.get(name_slot)
        if value is None:
            lines.append(f"ALTER ROLE {login} WITH NOLOGIN PASSWORD NULL;")
            idle.append(login)
        else:
            verifier = scram_verifier(login, value)
            lines.append(f"ALTER ROLE {login} WITH LOGIN PASSWORD '{verifier}';")
    if idle:
        names = ", ".join(f"'{name}'" for name in idle)
        lines.append(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE usename IN ({names});"
        )
    if role.database is not None:
        database = role.database
        lines += [
            f"SELECT 'CREATE DATABASE {database} OWNER {owner}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec",
            f"ALTER DATABASE {database} OWNER TO {owner};",
            f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;",
        ]
    return lines
