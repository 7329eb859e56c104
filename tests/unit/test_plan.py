"""Planning from fake observed facts: pure, no Docker (golden-ish cases in plan_cases/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kbinfra.containers import DesiredService, Facts, ObservedContainer
from kbinfra.errors import SpecError
from kbinfra.names import (
    LABEL_CONFIG_HASH,
    LABEL_HASH_PREFIX,
    LABEL_SERVICE,
    LABEL_STACK,
    normalize_ref,
)
from kbinfra.plan import (
    config_hash,
    desired_services,
    file_changes,
    files_to_read,
    leftovers,
    make_plan,
    mounted_by,
    service_action,
    sha256_text,
    stack_status,
)
from kbinfra.render import render_stack
from kbinfra.service import RenderedFile

CASES = json.loads((Path(__file__).parent / "plan_cases" / "cases.json").read_text())


def _desired(
    make_stack: Any, overrides: dict[str, Any] | None = None, service: str = "postgres"
) -> DesiredService:
    stack = make_stack("minimum", overrides)
    return desired_services(stack, render_stack(stack))[service]


def _deployed(desired: DesiredService, stale: list[str]) -> dict[str, str]:
    """The stack folder after the last apply: every mounted file as rendered, but ``stale``."""
    return {
        m.file.path: "0" * 64 if m.file.path in stale else sha256_text(m.file.text)
        for m in desired.files
    }


def _observed(desired: DesiredService, case: dict[str, Any]) -> ObservedContainer:
    labels = desired.labels("kb")
    for part in case.get("change_parts", []):
        labels[LABEL_HASH_PREFIX + part] = "0" * 64
    for part in case.get("extra_parts", []):
        labels[LABEL_HASH_PREFIX + part] = "0" * 64
    if case.get("change_parts") or case.get("extra_parts"):
        parts = {
            k.removeprefix(LABEL_HASH_PREFIX): v
            for k, v in labels.items()
            if k.startswith(LABEL_HASH_PREFIX)
        }
        labels[LABEL_CONFIG_HASH] = config_hash(parts)
    return ObservedContainer(
        id="c0ffee",
        name=desired.container,
        state=case["state"],
        status=case["status"],
        image=case.get("image", desired.spec.image),
        image_id=case.get("image_id", "sha256:aaaaaaaaaaaa0000"),
        labels=labels,
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_service_action_cases(make_stack: Any, case: dict[str, Any]) -> None:
    desired = _desired(make_stack, service=case.get("service", "postgres"))
    observed = None if case["observed"] is None else _observed(desired, case["observed"])
    images = {
        k.replace("{image}", desired.spec.image): v for k, v in case.get("images", {}).items()
    }
    deployed = _deployed(desired, case.get("stale_files", []))
    action = service_action(desired, observed, images.get(desired.spec.image), deployed)
    expected = [r.replace("{image}", desired.spec.image) for r in case["expect"]["reasons"]]
    assert action.action == case["expect"]["action"]
    assert list(action.reasons) == expected


def test_hash_is_deterministic_and_tracks_one_setting(make_stack: Any) -> None:
    first = _desired(make_stack)
    again = _desired(make_stack)
    assert first.config_hash == again.config_hash
    changed = _desired(make_stack, {"services": {"postgres": {"max_connections": 55}}})
    assert changed.config_hash != first.config_hash
    differing = {p for p in first.parts if first.parts[p] != changed.parts.get(p)}
    assert differing == {"file.postgres/postgresql.conf"}
    observed = _observed(first, {"state": "running", "status": "Up 1 hour (healthy)"})
    action = service_action(changed, observed, None)
    assert action.action == "recreate"
    assert action.reasons == ("file postgres/postgresql.conf changed",)


def test_labels_never_hold_secret_values(make_stack: Any) -> None:
    desired = _desired(make_stack)
    labels = json.dumps(desired.labels("kb"))
    assert "TESTSECRET" not in labels
    secret_env = _desired(make_stack, service="unstructured").labels("kb")
    assert LABEL_HASH_PREFIX + "env.UNSTRUCTURED_API_KEY" in secret_env
    assert "TESTSECRET" not in json.dumps(secret_env)
    assert desired.labels("kb")[LABEL_STACK] == "kb"
    assert desired.labels("kb")[LABEL_SERVICE] == "postgres"


def test_file_changes_redact_and_hide_secret_files() -> None:
    secret = "TESTSECRET-postgres_password-0123456789"
    rendered = [
        RenderedFile("a.conf", f"x = 2\npassword = {secret}\n"),
        RenderedFile(".env", f"P={secret}\n", mode=0o600, secret=True),
        RenderedFile("new.conf", "new\n"),
        RenderedFile("same.conf", "same\n"),
    ]
    deployed = {
        "a.conf": sha256_text("x = 1\n"),
        ".env": sha256_text("P=old\n"),
        "same.conf": sha256_text("same\n"),
        "gone.conf": sha256_text("gone\n"),
    }
    assert files_to_read(rendered, deployed) == ["a.conf"]

    def redact(text: str) -> str:
        return text.replace(secret, "***")

    changes = {c.path: c for c in file_changes(rendered, deployed, {"a.conf": "x = 1\n"}, redact)}
    assert set(changes) == {"a.conf", ".env", "new.conf", "gone.conf"}
    assert changes["a.conf"].change == "change"
    assert changes["a.conf"].diff is not None
    assert "-x = 1" in changes["a.conf"].diff and "+x = 2" in changes["a.conf"].diff
    assert "+password = ***" in changes["a.conf"].diff
    assert changes[".env"].secret and changes[".env"].diff is None
    assert changes["new.conf"].change == "add"
    assert changes["gone.conf"].change == "remove"
    assert secret not in json.dumps([c.as_json() for c in changes.values()])


def test_plan_removes_disabled_services_and_reports_leftovers(make_stack: Any) -> None:
    stack = make_stack("minimum")
    rendered = render_stack(stack)
    desired = desired_services(stack, rendered)
    pg = desired["postgres"]
    orphan = ObservedContainer(
        "1",
        "kb-retired",
        "running",
        "Up 2 hours",
        "redis:7",
        "sha256:r",
        {LABEL_STACK: "kb", LABEL_SERVICE: "retired", LABEL_CONFIG_HASH: "x"},
    )
    old = ObservedContainer(
        "2",
        "kb-postgres.kbinfra-old",
        "exited",
        "Exited (0)",
        pg.spec.image,
        "sha256:p",
        pg.labels("kb"),
    )
    current = ObservedContainer(
        "3",
        "kb-postgres",
        "running",
        "Up 1 minute (healthy)",
        pg.spec.image,
        "sha256:p",
        pg.labels("kb"),
    )
    other_stack = ObservedContainer(
        "4",
        "other-redis",
        "running",
        "Up",
        "redis:7",
        "sha256:r",
        {LABEL_STACK: "other", LABEL_SERVICE: "redis"},
    )
    facts = Facts(
        containers=(orphan, old, current, other_stack),
        images={normalize_ref(d.spec.image): "sha256:p" for d in desired.values()},
        deployed_files={f.path: sha256_text(f.text) for f in rendered},
    )
    plan = make_plan(
        stack="kb",
        target="local",
        desired=desired,
        rendered=rendered,
        facts=facts,
        old_texts={},
        redact=lambda t: t,
    )
    assert plan.action("postgres").action == "nothing"
    others = {a.action for a in plan.services if a.service not in ("postgres", "retired")}
    assert others <= {"create"}
    assert plan.action("retired").action == "remove"
    assert plan.leftovers == ("kb-postgres.kbinfra-old",)
    assert plan.files == ()
    assert plan.missing_images == ()
    assert plan.has_changes
    assert leftovers("kb", facts) == ["kb-postgres.kbinfra-old"]
    rows = {r.container: r for r in stack_status("kb", desired, facts)}
    assert rows["kb-postgres"].drift == ()
    assert rows["kb-postgres"].uptime == "1 minute"
    assert rows["kb-retired"].drift == ("not enabled in kbinfra.yaml",)


def test_plan_with_nothing_deployed_creates_everything(make_stack: Any) -> None:
    stack = make_stack("minimum")
    rendered = render_stack(stack)
    desired = desired_services(stack, rendered)
    plan = make_plan(
        stack="kb",
        target="local",
        desired=desired,
        rendered=rendered,
        facts=Facts(),
        old_texts={},
        redact=stack.redact,
    )
    assert {a.action for a in plan.services} == {"create"}
    assert {f.change for f in plan.files} == {"add"}
    assert plan.missing_images == tuple(sorted({d.spec.image for d in desired.values()}))
    text = json.dumps(plan.as_json())
    assert "TESTSECRET" not in text
    env = next(f for f in plan.files if f.path == ".env")
    assert env.secret and env.diff is None


def test_only_restricts_actions_and_files_to_the_named_services(make_stack: Any) -> None:
    stack = make_stack("minimum")
    rendered = render_stack(stack)
    desired = desired_services(stack, rendered)
    full = make_plan(
        stack="kb",
        target="local",
        desired=desired,
        rendered=rendered,
        facts=Facts(),
        old_texts={},
        redact=stack.redact,
    )
    only = full.only(["redis", "postgres"], mounted_by(desired))
    actions = {a.service: a.action for a in only.services}
    assert {s for s, a in actions.items() if a != "nothing"} == {"postgres", "redis"}
    paths = {f.path for f in only.files}
    assert paths and all(p.startswith(("postgres/", "redis/")) for p in paths)
    assert "docker-compose.yml" not in paths  # stack-wide: waits for a full apply


def test_select_names_enabled_services_or_says_what_is_wrong(make_stack: Any) -> None:
    stack = make_stack("minimum", {"services": {"grafana": {"enabled": False}}})
    assert stack.select(["redis", "postgres", "redis"]) == ["postgres", "redis"]
    with pytest.raises(SpecError, match="--only grafana: service is disabled"):
        stack.select(["grafana"])
    with pytest.raises(SpecError, match="did you mean 'postgres'"):
        stack.select(["postgress"])


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("postgres", "postgres:latest"),
        ("docker.io/library/postgres:17", "postgres:17"),
        ("qdrant/qdrant:v1.15.0", "qdrant/qdrant:v1.15.0"),
        ("registry:5000/x/y", "registry:5000/x/y:latest"),
        ("kbinfra-testbed/postgres:15-abc", "kbinfra-testbed/postgres:15-abc"),
    ],
)
def test_normalize_ref(ref: str, normal: str) -> None:
    assert normalize_ref(ref) == normal
