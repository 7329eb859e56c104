"""Credentials kept in data volumes: a new stack of the same name over an earlier one's data.

``destroy`` keeps the data volumes; a stack re-created under the same name with new secrets
finds them. PostgreSQL keeps its role passwords in its volume (the image sets the password
only when it initializes an empty one, and ``pg_isready`` needs none): apply must log in with
the stack's password and fail, in one line saying how to fix it, rather than report it
healthy. Redis (ACL file rendered by kbinfra) and Qdrant (keys by environment) keep none.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from . import testbed_support
from .stack_support import SECRET_MARK, Deployment, new_deployment

SERVICES = ("postgres", "redis", "qdrant")


@pytest.fixture
def stack(testbed: testbed_support.Testbed, tmp_path: Path) -> Iterator[Deployment]:
    deployment = new_deployment("local", tmp_path / "stack", testbed, SERVICES, prefix="kbk")
    yield deployment
    deployment.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
    )


def secrets_of(stack: Deployment) -> dict[str, str]:
    values: dict[str, str] = yaml.safe_load((stack.dir / "secrets.yaml").read_text())
    return values


def set_secrets(stack: Deployment, **values: str) -> None:
    (stack.dir / "secrets.yaml").write_text(yaml.safe_dump({**secrets_of(stack), **values}))


def redis_app(stack: Deployment, password: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=stack.port("redis"), username="app", password=password
    )


def qdrant_status(stack: Deployment, key: str) -> int:
    return httpx.get(
        f"http://127.0.0.1:{stack.port('qdrant')}/collections",
        headers={"api-key": key},
        timeout=30,
    ).status_code


def test_a_kept_postgres_volume_with_another_password_fails_apply_in_one_line(
    stack: Deployment,
) -> None:
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err
    old = secrets_of(stack)
    assert stack.run("destroy", "--yes").code == 0  # keeps the data volumes

    # The same name, new secrets: Redis and Qdrant take theirs, nothing of the old is kept.
    set_secrets(
        stack,
        redis_app_password=f"{SECRET_MARK}-new-redis-app",
        qdrant_api_key=f"{SECRET_MARK}-new-qdrant-key",
    )
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert redis_app(stack, f"{SECRET_MARK}-new-redis-app").ping()
    with pytest.raises(redis.AuthenticationError):
        redis_app(stack, old["redis_app_password"]).ping()
    assert qdrant_status(stack, f"{SECRET_MARK}-new-qdrant-key") == 200
    assert qdrant_status(stack, old["qdrant_api_key"]) == 401

    # PostgreSQL keeps the password of the stack that initialized its volume.
    assert stack.run("destroy", "--yes").code == 0
    set_secrets(stack, postgres_password=f"{SECRET_MARK}-new-postgres")
    refused = stack.run("apply", "--yes")
    assert refused.code != 0, refused.out
    assert (
        "the stack's postgres_password does not open database 'kb' as role 'kb': volume "
        f"{stack.name}-postgres-data keeps the password of the stack that initialized it"
    ) in refused.err + refused.out
    assert "put that stack's postgres_password back in secrets.yaml" in refused.err + refused.out
    assert "Traceback" not in refused.err

    # With the password back, the same volume and its data serve again.
    set_secrets(stack, postgres_password=old["postgres_password"])
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err


def test_kept_volumes_owned_by_root_or_by_the_service_start_read_only(
    stack: Deployment, base_image: str
) -> None:
    """A data volume kept from before may belong to the service's uid (kbinfra's own, kept by
    destroy) or to root (copied in by another tool, or an older image): both start again with
    a read-only root and the data is still there."""
    assert stack.run("apply", "--yes").code == 0
    redis_app(stack, secrets_of(stack)["redis_app_password"]).set("kept", "yes")
    # (Redis writes its RDB when destroy stops it.)
    assert stack.run("destroy", "--yes").code == 0  # keeps the data volumes

    # Kept as it was, owned by the services' users.
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert stack.run("destroy", "--yes").code == 0

    # Every file of the kept volumes chowned to root.
    for service in ("postgres", "redis"):
        volume = f"{stack.name}-{service}-data"
        subprocess.run(
            ["docker", "run", "--rm", "-v", f"{volume}:/v", base_image, "chown", "-R", "0:0", "/v"],
            check=True,
            capture_output=True,
        )
        owners = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{volume}:/v", base_image, "stat", "-c", "%u", "/v"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert owners == ["0"], service
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert redis_app(stack, secrets_of(stack)["redis_app_password"]).get("kept") == b"yes"
    for service in SERVICES:

        def checked(name: str = stack.container(service)) -> dict[str, Any] | None:
            info: dict[str, Any] = json.loads(
                subprocess.run(
                    ["docker", "inspect", name], check=True, capture_output=True, text=True
                ).stdout
            )[0]
            return None if info["State"]["Health"]["Status"] == "starting" else info

        # apply's own gate passed; Docker's first check runs one interval after start.
        info = testbed_support.wait_for(checked, f"Docker's first health check of {service}", 120)
        assert info["HostConfig"]["ReadonlyRootfs"] is True, service
        assert info["State"]["Health"]["Status"] == "healthy", service
