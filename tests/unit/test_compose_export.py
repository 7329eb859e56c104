"""The docker compose export: sound for every profile; the check catches what compose refuses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.exports import compose_document, compose_problems, stack_files
from kbinfra.registry import all_services
from kbinfra.render import write_tree
from kbinfra.service import CheckResult
from kbinfra.stack import Stack
from kbinfra.validation import compose_check, validate_tree
from tests.conftest import PROFILES


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profiles_compose_export_is_sound(
    profile: str, make_stack: Callable[..., Stack]
) -> None:
    document = compose_document(make_stack(profile))
    assert compose_problems(document) == []
    assert "TESTSECRET" not in str(document)  # secrets come from .env by interpolation


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: d["services"]["redis"].pop("image"), "services.redis: no image"),
        (lambda d: d["services"]["redis"].update(ports=["6379"]), "is not [ip:]host:container"),
        (lambda d: d["volumes"].clear(), "is not declared under volumes"),
        (lambda d: d["services"]["redis"].update(privileged=True), "unknown key 'privileged'"),
        (
            lambda d: d["services"]["postgres-exporter"].update(depends_on={"pg": {}}),
            "'pg' is not a service of this file",
        ),
    ],
)
def test_the_compose_check_fails_on_what_compose_refuses(
    make_stack: Callable[..., Stack], break_it: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    document = copy.deepcopy(compose_document(make_stack("minimum")))
    break_it(document)
    assert any(expected in problem for problem in compose_problems(document))


def test_compose_v1_runs_it_without_a_top_level_name(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    assert "name" not in compose_document(stack)  # docker-compose 1.29 refuses it
    env = next(f for f in stack_files(stack) if f.path == ".env")
    assert env.text.startswith(f"COMPOSE_PROJECT_NAME={stack.spec.name}\n")


def test_secrets_are_required_not_silently_empty(make_stack: Callable[..., Stack]) -> None:
    document = compose_document(make_stack("minimum"))
    key = document["services"]["unstructured"]["environment"]["UNSTRUCTURED_API_KEY"]
    # behind nginx's key gate, the API holds its own key (the clients' is nginx's)
    assert key == "${KBINFRA_UNSTRUCTURED_UPSTREAM_KEY:?run kbinfra render}"


def test_files_a_service_must_own_are_copied_in_by_a_one_shot_container(
    make_stack: Callable[..., Stack],
) -> None:
    """A bind mount keeps the host's owner: redis (uid 999) could not read its 0600 ACL."""
    stack = make_stack("minimum")
    services = compose_document(stack)["services"]
    redis, files = services["redis"], services["redis-files"]
    assert "./redis/users.acl:/usr/local/etc/redis/acl/users.acl:ro" not in redis["volumes"]
    assert "kb-redis-files0:/usr/local/etc/redis/acl:ro" in redis["volumes"]
    assert redis["depends_on"]["redis-files"] == {"condition": "service_completed_successfully"}
    assert "chown 999:999 /kbinfra-owned/0/users.acl" in files["command"][0]
    assert files["cap_drop"] == ["ALL"] and files["network_mode"] == "none"
    assert {"prometheus-files", "alertmanager-files"} <= set(services)


def test_render_check_runs_the_real_docker_compose(
    make_stack: Callable[..., Stack], tmp_path: Path, require_tool: Callable[..., str]
) -> None:
    require_tool("docker-compose")
    stack = make_stack("minimum")
    tmp_path = tmp_path / "rendered"
    write_tree(stack_files(stack), tmp_path)
    assert compose_check(tmp_path) == CheckResult(
        "docker-compose.yml",
        "docker-compose",
        "ok",
        f"{len(compose_document(stack)['services'])} services",
    )
    # What the hand-written check lets through and compose refuses: a string for a list.
    document = compose_document(stack)
    document["services"]["redis"]["security_opt"] = "no-new-privileges:true"
    assert compose_problems(document) == []
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(document))
    result = compose_check(tmp_path)
    assert (result.tool, result.outcome) == ("docker-compose", "failed")

    # render --check names the tool's version, as for every other validator (a stack of one
    # service that has no validator of its own, so only the compose export is checked).
    only = {
        n: {"enabled": n == "node-exporter"}
        for n, s in all_services().items()
        if s.in_services_section
    }
    small = make_stack("minimum", {"services": only})
    folder = tmp_path.parent / "small"
    write_tree(small.rendered, folder)
    compose_row = next(r for r in validate_tree(small, folder) if r.tool == "docker-compose")
    assert (compose_row.outcome, compose_row.version[:16]) == ("ok", "docker-compose 1")
    assert "security_opt" in result.detail
