"""What a restore does for the app tier: puts back its PostgreSQL database, into a database
its role owns, never the role's password from the backup; and pauses the app meanwhile.

tests/integration/test_app_tier.py proves it end to end: backup, wipe, restore, search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kbinfra.backup.manifest import Artifact
from kbinfra.backup.run import writers_to_pause
from kbinfra.containers import ObservedContainer
from kbinfra.names import LABEL_SERVICE
from kbinfra.services.postgres.backup import HANDLER as POSTGRES
from kbinfra.services.postgres.backup import managed_roles, stack_databases
from tests.unit.services.app.test_service import IMAGE, MakeStack, make_stack

__all__ = ["make_stack"]

SHA = "0" * 64
ROLES = b'{"roles": [], "memberships": []}'


def dump(database: str) -> Artifact:
    return Artifact(
        path=f"postgres/{database}.dump",
        service="postgres",
        kind="pg_dump",
        size=1,
        sha256=SHA,
        meta={"database": database},
    )


def restorable(stack: Any, tmp_path: Path, *artifacts: Artifact) -> tuple[list[str], list[str]]:
    (tmp_path / "postgres").mkdir(exist_ok=True)
    (tmp_path / "postgres" / "roles.json").write_bytes(ROLES)
    roles = Artifact(path="postgres/roles.json", service="postgres", kind="pg_roles", size=1,
                     sha256=SHA)  # fmt: skip
    chosen, notes = POSTGRES.restorable(stack.contexts["postgres"], [roles, *artifacts], tmp_path)
    return [a.path for a in chosen], notes


def test_the_apps_database_is_restored_with_the_stacks_own(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack("minimum", {"app": {"image": IMAGE}})
    chosen, notes = restorable(stack, tmp_path, dump("kb"), dump("kb_app"), dump("scratch"))
    assert chosen == ["postgres/roles.json", "postgres/kb.dump", "postgres/kb_app.dump"]
    assert notes == [
        "postgres/scratch.dump not restored: database 'scratch' is not one of the stack's "
        "(kb, kb_app); restore it by hand with pg_restore if needed"
    ]
    # Each database with the role that must own it: the stack's user owns its own.
    assert stack_databases(stack.contexts["postgres"]) == {"kb": None, "kb_app": "kb_app"}


def test_without_the_app_its_database_stays_in_the_backup(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack("minimum")
    chosen, notes = restorable(stack, tmp_path, dump("kb"), dump("kb_app"))
    assert chosen == ["postgres/roles.json", "postgres/kb.dump"]
    assert any("postgres/kb_app.dump not restored" in note for note in notes)


def test_the_apps_role_keeps_the_password_kbinfra_gave_it(make_stack: MakeStack) -> None:
    """A backup taken with --include-secrets holds the role's old SCRAM verifier; restoring it
    after secrets.yaml changed would lock the app out until PostgreSQL restarts."""
    stack = make_stack("minimum", {"app": {"image": IMAGE}})
    # and the consumers' login roles: a restore onto a rotated stack keeps their passwords
    assert managed_roles(stack.contexts["postgres"]) == {
        "kb",
        *("kb_app", "kb_app_a", "kb_app_b"),
        *("kbinfra_monitor", "kbinfra_monitor_a", "kbinfra_monitor_b"),
    }
    assert "kb_app" not in managed_roles(make_stack("minimum").contexts["postgres"])


def observed(name: str, service: str, state: str = "running") -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{name}", name=name, state=state, status="", image="", image_id="",
        labels={LABEL_SERVICE: service},
    )  # fmt: skip


def test_a_restore_pauses_the_running_api_and_workers_only(make_stack: MakeStack) -> None:
    """The app writes to its stores on its own (a worker re-declares its Celery bindings in
    the broker the moment Redis is back): a restore pauses it, or the check after the restore
    compares the app's new writes with the backup."""
    stack = make_stack(
        "minimum",
        {"app": {"image": IMAGE, "replicas": 2, "migrate": ["migrate"],
                 "workers": [{"name": "documents", "command": ["worker"]}]}},
    )  # fmt: skip
    containers = [
        observed("s-postgres", "postgres"),
        observed("s-app-1", "app-1"),
        observed("s-app-2", "app-2", state="paused"),
        observed("s-app-migrate", "app-migrate", state="exited"),
        observed("s-worker", "worker-documents-1"),
        observed("s-nginx", "nginx"),
    ]
    assert [c.name for c in writers_to_pause(stack, containers)] == ["s-app-1", "s-worker"]
    assert writers_to_pause(make_stack("minimum"), containers) == []
