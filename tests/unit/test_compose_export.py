"""The docker compose export: sound for every profile; the check catches what compose refuses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from kbinfra.exports import compose_document, compose_problems
from kbinfra.stack import Stack
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
