"""``kbinfra secrets rotate``'s sequence (pure) and its resume from every phase.

The applies themselves are proven against a real Redis in
``tests/integration/test_rotation.py``; here the runner's apply is a recorder, so what is
checked is the sequence: which views are deployed, in which order, from which phase a rerun
goes on, and when secrets.yaml changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import stat
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kbinfra import rotation_run
from kbinfra.apply import ApplyResult, ServiceResult
from kbinfra.errors import KbinfraError
from kbinfra.offsite.restic import OffsiteError, RepositoryKey, parse_keys
from kbinfra.offsite.rotate import RepositoryKeys
from kbinfra.private_file import write_private_file
from kbinfra.rotation import (
    PHASES,
    Phase,
    RotationState,
    choose,
    committed_secrets,
    needs_apply,
    new_state,
    next_phase,
    view,
)
from kbinfra.rotation_run import (
    RotationFailedError,
    choose_secrets,
    rotatable_secrets,
    rotate,
    write_state,
)
from kbinfra.rotation_state import read_state, refuse_while_rotating, state_path
from kbinfra.secrets import dump_secrets, load_secret_dates, load_secrets
from kbinfra.services.redis.service import acl_password_hash
from kbinfra.stack import Stack, open_stack
from kbinfra.swarm.placement import replacement_gap, stack_placements
from tests.conftest import FIXTURES, fixed_secret, only_services, run_kbinfra, write_stack_dir

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REDIS = ["redis_admin_password", "redis_app_password", "redis_exporter_password"]
ONLY_REDIS = only_services("redis")
ONLY_UNSTRUCTURED = only_services("unstructured")
SWARM_NODES = FIXTURES / "swarm" / "nodes.yaml"


def state_at(phase: Phase, names: tuple[str, ...] = ("a", "b")) -> RotationState:
    return RotationState(
        stack="kb",
        names=names,
        old={n: f"old-{n}" for n in names},
        new={n: f"new-{n}" for n in names},
        phase=phase,
        started=NOW,
    )


def accepted(shown: Any, name: str) -> set[str]:
    return {shown.secrets[name], *([shown.overlap[name]] if name in shown.overlap else [])}


def test_the_phases_run_in_order_and_end_in_the_commit() -> None:
    assert PHASES == ("generated", "added", "moved", "revoked")
    assert [next_phase(p) for p in PHASES] == ["added", "moved", "revoked", None]


def test_each_phase_deploys_its_view() -> None:
    state = state_at("generated")
    current = {"a": "old-a", "b": "old-b", "other": "kept"}
    added = view(state, "added", current)
    assert added.secrets == current and added.overlap == {"a": "new-a", "b": "new-b"}
    moved = view(state, "moved", current)
    assert moved.secrets == {"a": "new-a", "b": "new-b", "other": "kept"}
    assert moved.overlap == {"a": "old-a", "b": "old-b"}
    revoked = view(state, "revoked", current)
    assert revoked.secrets == moved.secrets and revoked.overlap == {}
    # a view is made of the state's values, whatever secrets.yaml holds by then (a rerun
    # after the commit wrote the new values but before the state file was removed)
    assert view(state, "added", {**current, "a": "new-a"}) == added


@pytest.mark.parametrize(("before", "after"), list(itertools.pairwise(PHASES)))
def test_between_two_phases_every_client_value_is_accepted_by_either_store_state(
    before: Phase, after: Phase
) -> None:
    """A kill -9 (or a slow replica) between two phases leaves stores and clients in either
    view: every value a client may hold then is one every store state accepts."""
    state = state_at("generated")
    current = {"a": "old-a", "b": "old-b"}
    one, two = view(state, before, current), view(state, after, current)
    for name in state.names:
        clients = {one.secrets[name], two.secrets[name]}
        assert clients <= accepted(one, name) & accepted(two, name), (before, after, name)


def test_the_commit_keeps_the_old_backup_key_verify_only_first() -> None:
    state = state_at("revoked", ("backup_hmac_key",))
    current = {"backup_hmac_key": "old-backup_hmac_key", "backup_hmac_keys_previous": "k1 k2"}
    values = committed_secrets(state, current)
    assert values["backup_hmac_key"] == "new-backup_hmac_key"
    assert values["backup_hmac_keys_previous"] == "old-backup_hmac_key k1 k2"
    # committed twice (a rerun after a kill between the write and the state's removal)
    assert committed_secrets(state, values)["backup_hmac_keys_previous"] == (
        "old-backup_hmac_key k1 k2"
    )


EXISTING = ["backup_hmac_key", "postgres_password", "redis_app_password", "unused_one"]
IN_USE = ["backup_hmac_key", "postgres_password", "redis_app_password"]


def chosen(asked: list[str], every: bool = False, pending: RotationState | None = None) -> Any:
    return choose(
        asked,
        every=every,
        existing=EXISTING,
        in_use=IN_USE,
        rotatable=["redis_app_password"],
        pending=pending,
    )


def test_all_takes_what_can_be_rotated_and_names_what_cannot() -> None:
    choice = chosen([], every=True)
    assert choice.names == ("backup_hmac_key", "redis_app_password")
    assert choice.not_rotatable == ("postgres_password",)  # unused_one: used by nothing


@pytest.mark.parametrize(
    ("asked", "every", "pending", "words"),
    [
        (["postgres_password"], False, None, "kbinfra cannot rotate postgres_password yet"),
        (["nope"], False, None, "secrets.yaml has no secret nope"),
        ([], False, None, "no secret named and no rotation to finish"),
        (["redis_app_password"], True, None, "not both"),
        (["backup_hmac_key"], False, state_at("moved"), "a rotation of a, b is unfinished"),
    ],
)
def test_what_cannot_be_done_is_refused_before_anything_changes(
    asked: list[str], every: bool, pending: RotationState | None, words: str
) -> None:
    with pytest.raises(KbinfraError) as raised:
        chosen(asked, every, pending)
    assert words in str(raised.value)
    assert raised.value.exit_code == 2


def test_a_rerun_of_the_same_command_finishes_the_pending_rotation() -> None:
    pending = state_at("added")
    for asked, every in (([], False), ([], True), (["b", "a"], False)):
        assert chosen(asked, every, pending).names == ("a", "b")


# ------------------------------------------------------------------ the runner, resumed


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return open_stack(write_stack_dir(tmp_path / "stack", overrides=ONLY_REDIS))


class Recorder:
    """Stands in for apply_stack: records each view it was given; fails on ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.views: list[tuple[dict[str, str], dict[str, str]]] = []
        self.fail_at = fail_at

    def __call__(self, stack: Stack, target: Any, **options: Any) -> ApplyResult:
        assert options["lock_held"] is True
        self.views.append((dict(stack.secrets), dict(stack.overlap)))
        result = ApplyResult(stack=stack.spec.name, target="local")
        failed = len(self.views) - 1 == self.fail_at
        result.services = [
            ServiceResult("redis", "reload", "failed" if failed else "reloaded", error="boom")
        ]
        return result


NO_CHANGES = SimpleNamespace(has_changes=False, services=())


def rotate_with_nothing_reached(
    stack: Stack, names: list[str], stop_after: Phase | None = None
) -> tuple[Any, list[str]]:
    """``rotate`` of ``names`` as ``secrets rotate`` calls it, its lines kept; the target,
    the progress and the SSH settings are never reached (a test patches what would)."""
    lines: list[str] = []
    result = rotate(
        stack,
        object(),  # type: ignore[arg-type]
        choose_secrets(stack, names, every=False),
        now=NOW,
        say=lines.append,
        progress=None,  # type: ignore[arg-type]
        ssh=None,  # type: ignore[arg-type]
        stop_after=stop_after,
    )
    return result, lines


def run(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    recorder: Recorder,
    names: list[str] = REDIS,
    stop_after: Phase | None = None,
) -> Any:
    monkeypatch.setattr("kbinfra.apply.apply_stack", recorder)
    monkeypatch.setattr("kbinfra.apply.plan_stack", lambda *args, **kw: NO_CHANGES)
    monkeypatch.setattr(rotation_run, "check_revoked", lambda *args: ["checked"])
    fresh = open_stack(stack.dir)  # as a rerun reads it
    return rotate_with_nothing_reached(fresh, names, stop_after)


def test_secrets_rotate_rejects_a_state_file_others_can_read(stack: Stack) -> None:
    write_state(stack.dir, new_state("kb", REDIS, stack.secrets, dict.fromkeys(REDIS, "x"), NOW))
    assert stat.S_IMODE(state_path(stack.dir).stat().st_mode) == 0o600
    state_path(stack.dir).chmod(0o644)
    with pytest.raises(KbinfraError, match="readable by others"):
        read_state(stack.dir)


def test_redis_says_which_of_its_secrets_it_rotates(stack: Stack) -> None:
    assert rotatable_secrets(stack) == set(REDIS)


@pytest.mark.parametrize("stopped_at", PHASES)
def test_a_rerun_finishes_from_the_phase_it_stopped_at(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, stopped_at: Phase
) -> None:
    new = {name: f"NEW-{name}-0123456789" for name in REDIS}
    state = new_state("kb", REDIS, stack.secrets, new, NOW).advanced(stopped_at)
    write_state(stack.dir, state)
    recorder = Recorder()
    result, lines = run(stack, monkeypatch, recorder)
    remaining = PHASES[PHASES.index(stopped_at) + 1 :]
    assert len(recorder.views) == len(remaining)
    for phase, (secrets, overlap) in zip(remaining, recorder.views, strict=True):
        expected = view(state, phase, stack.secrets)
        assert (secrets, overlap) == (expected.secrets, expected.overlap)
    assert result.resumed_from == stopped_at
    assert f"it stopped at {stopped_at}" in lines[0]
    assert load_secrets(stack.dir, REDIS) == {**stack.secrets, **new}
    assert not state_path(stack.dir).exists()
    assert all(load_secret_dates(stack.dir)[name] == NOW for name in REDIS)
    assert any("refresh your safe copy" in line for line in result.safe_copy)


def test_a_failed_phase_keeps_the_state_where_it_was_and_secrets_yaml_unchanged(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (stack.dir / "secrets.yaml").read_text()
    with pytest.raises(RotationFailedError) as raised:
        run(stack, monkeypatch, Recorder(fail_at=1))  # the "moved" apply
    assert raised.value.exit_code == 1
    assert "phase moved of the rotation failed: redis: boom" in str(raised.value)
    state = read_state(stack.dir)
    assert state is not None and state.phase == "added"
    assert (stack.dir / "secrets.yaml").read_text() == before
    # and the rerun goes on from there: two applies (moved, revoked), then the commit
    recorder = Recorder()
    run(stack, monkeypatch, recorder)
    assert [bool(overlap) for _, overlap in recorder.views] == [True, False]
    assert not state_path(stack.dir).exists()


@pytest.mark.parametrize("stop_after", ["added", "moved"])
def test_stop_after_keeps_both_values_and_secrets_yaml_and_a_rerun_finishes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, stop_after: Phase
) -> None:
    before = (stack.dir / "secrets.yaml").read_text()
    recorder = Recorder()
    result, lines = run(stack, monkeypatch, recorder, stop_after=stop_after)
    # the phases up to and with stop_after, each deploying both values, and no commit
    assert len(recorder.views) == PHASES.index(stop_after)
    assert all(overlap for _, overlap in recorder.views)
    assert result.stopped_after == stop_after and result.as_json()["stopped_after"] == stop_after
    assert result.safe_copy == [] and result.checks == []
    assert lines[-1].startswith(f"stopped after phase {stop_after}: the old and the new values")
    state = read_state(stack.dir)
    assert state is not None and state.phase == stop_after
    assert (stack.dir / "secrets.yaml").read_text() == before
    # asking again to stop where it already is: one clear line, nothing changed
    with pytest.raises(KbinfraError, match=f"at phase {stop_after} already") as raised:
        run(stack, monkeypatch, Recorder(), stop_after="added")
    assert raised.value.exit_code == 2
    assert read_state(stack.dir) == state
    # a rerun without it goes on from there to the commit
    recorder = Recorder()
    result, _ = run(stack, monkeypatch, recorder)
    assert len(recorder.views) == len(PHASES) - 1 - PHASES.index(stop_after)
    assert result.stopped_after is None and result.resumed_from == stop_after
    assert not state_path(stack.dir).exists()
    assert load_secrets(stack.dir, REDIS) == {**stack.secrets, **state.new}


def test_a_rotation_does_not_start_over_changes_not_applied_yet(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = SimpleNamespace(
        has_changes=True, services=[SimpleNamespace(service="redis", action="recreate")]
    )
    monkeypatch.setattr("kbinfra.apply.plan_stack", lambda *args, **kw: pending)
    choice = choose_secrets(stack, REDIS, every=False)
    with pytest.raises(KbinfraError, match=r"changes not applied yet \(redis\)") as raised:
        rotate(stack, object(), choice, now=NOW, say=print, progress=None, ssh=None)  # type: ignore[arg-type]
    assert raised.value.exit_code == 2
    assert not state_path(stack.dir).exists()


def test_apply_rollback_and_upgrade_refuse_while_a_rotation_is_unfinished(stack: Stack) -> None:
    refuse_while_rotating(stack.dir, "apply")  # nothing pending: nothing said
    state = new_state("kb", REDIS, stack.secrets, dict.fromkeys(REDIS, "x" * 20), NOW)
    write_state(stack.dir, state.advanced("moved"))
    listed = run_kbinfra("secrets", "list", "--dir", str(stack.dir))
    assert "a rotation of redis_admin_password" in listed.stderr
    assert "phase moved" in listed.stderr and "x" * 20 not in listed.stdout + listed.stderr
    for command in ("apply", "rollback", "upgrade"):
        done = run_kbinfra(command, "--yes", "--dir", str(stack.dir))
        assert done.returncode == 2, done.stderr
        assert f"{command}: a rotation of redis_admin_password" in done.stderr
        assert "run `kbinfra secrets rotate` to finish it first" in done.stderr
        assert "x" * 20 not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("unstructured_upstream_key", "reads its own key at start"),
        ("qdrant_upstream_api_key", "restarts Qdrant"),
        ("qdrant_upstream_read_only_api_key", "restarts Qdrant"),
    ],
)
def test_secrets_rotate_refuses_a_secret_it_cannot_rotate_in_one_line(
    tmp_path: Path, name: str, words: str
) -> None:
    folder = write_stack_dir(tmp_path / "full")  # every service enabled
    done = run_kbinfra("secrets", "rotate", name, "--yes", "--dir", str(folder))
    assert done.returncode == 2
    assert f"cannot rotate {name} yet" in done.stderr and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not state_path(folder).exists()


def test_the_unstructured_clients_key_rotates_through_nginx_and_the_apis_own_does_not(
    tmp_path: Path,
) -> None:
    full = open_stack(write_stack_dir(tmp_path / "full"))  # every service enabled
    rotatable = rotatable_secrets(full)
    assert {"embeddings_api_key", "unstructured_api_key"} <= rotatable
    assert "unstructured_upstream_key" not in rotatable
    choice = choose_secrets(full, [], every=True)
    assert {"embeddings_api_key", "unstructured_api_key"} <= set(choice.names)
    assert "unstructured_upstream_key" in choice.not_rotatable


def test_without_nginx_the_unstructured_key_is_refused_with_why(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "gateless", "minimum", ONLY_UNSTRUCTURED)
    assert "unstructured_api_key" not in rotatable_secrets(open_stack(folder))
    done = run_kbinfra("secrets", "rotate", "unstructured_api_key", "--yes", "--dir", str(folder))
    assert done.returncode == 2
    assert "enable nginx, its key gate" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not state_path(folder).exists()


QDRANT_CLIENT_KEYS = {"qdrant_api_key", "qdrant_read_only_api_key"}
QDRANT_OWN_KEYS = {"qdrant_upstream_api_key", "qdrant_upstream_read_only_api_key"}


@pytest.mark.parametrize("grpc_port", [6334, None])
def test_behind_nginx_qdrants_client_keys_rotate_and_its_own_do_not(
    tmp_path: Path, grpc_port: int | None
) -> None:
    # gRPC published or not: nginx gates REST and gRPC alike
    overrides = {"services": {"qdrant": {"grpc_port": grpc_port}}}
    gated = open_stack(write_stack_dir(tmp_path / "gated", overrides=overrides))
    assert rotatable_secrets(gated) >= QDRANT_CLIENT_KEYS
    assert not QDRANT_OWN_KEYS & rotatable_secrets(gated)
    choice = choose_secrets(gated, [], every=True)
    assert set(choice.names) >= QDRANT_CLIENT_KEYS
    assert set(choice.not_rotatable) >= QDRANT_OWN_KEYS


def test_without_nginx_the_qdrant_keys_are_refused_with_why(tmp_path: Path) -> None:
    overrides = {"services": {"nginx": {"enabled": False}}}
    folder = write_stack_dir(tmp_path / "gateless", overrides=overrides)
    assert not QDRANT_CLIENT_KEYS & rotatable_secrets(open_stack(folder))
    done = run_kbinfra("secrets", "rotate", "qdrant_api_key", "--yes", "--dir", str(folder))
    assert done.returncode == 2
    assert "enable nginx, its key gate" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_on_a_swarm_the_unstructured_key_is_not_rotatable(tmp_path: Path) -> None:
    # (`secrets rotate` refuses a Swarm stack as a whole; this is why it would refuse this key)
    swarm = open_stack(write_stack_dir(tmp_path / "swarm", nodes_file=SWARM_NODES))
    assert "unstructured_api_key" not in rotatable_secrets(swarm)
    part = dict(rotation_run.rotate_parts(swarm))["unstructured"]
    assert "key gate" in rotation_run.stack_refusals(swarm, part)["unstructured_api_key"]


@pytest.fixture
def swarm_stack(tmp_path: Path) -> Stack:
    offsite = {"backup": {"offsite": [{"name": "disk", "repository": str(tmp_path / "repo")}]}}
    folder = write_stack_dir(tmp_path / "swarm", overrides=offsite, nodes_file=SWARM_NODES)
    return open_stack(folder)


def test_on_a_swarm_what_no_pinned_or_published_task_reads_is_rotated(swarm_stack: Stack) -> None:
    # the embedding service's tasks are replaced start-first (no data, no host port)
    assert rotatable_secrets(swarm_stack) == {OFFSITE, "embeddings_api_key"}
    every = choose_secrets(swarm_stack, [], every=True)
    assert set(every.names) == {"backup_hmac_key", OFFSITE, "embeddings_api_key"}
    assert {*REDIS, "postgres_password", "qdrant_api_key"} <= set(every.not_rotatable)


def test_a_pinned_task_has_a_gap_when_replaced_and_a_replicated_one_has_none(
    swarm_stack: Stack,
) -> None:
    embeddings = stack_placements(swarm_stack)["embeddings"]
    assert not embeddings.pinned and replacement_gap(swarm_stack, "embeddings", embeddings) is None
    pinned = embeddings._replace(pinned=True, replicas=1)
    gap = replacement_gap(swarm_stack, "embeddings", pinned)
    assert gap is not None and "embeddings keeps its data on one node" in gap
    assert "embeddings_api_key" not in rotation_run.swarm_gaps(swarm_stack)


def test_a_phase_that_would_replace_a_pinned_task_on_a_swarm_is_refused_first(
    swarm_stack: Stack,
) -> None:
    assert rotation_run.first_gap(swarm_stack, ["embeddings"]) is None
    assert rotation_run.first_gap(swarm_stack, ["embeddings", "redis"]) == (
        "redis",
        "redis keeps its data on one node, so its one task stops before the new one starts",
    )
    name, gap = rotation_run.first_gap(swarm_stack, ["nginx"]) or ("", "")
    assert name == "nginx" and "publishes its ports in host mode" in gap
    name, gap = rotation_run.first_gap(swarm_stack, ["postgres-replica"]) or ("", "")
    assert name == "postgres-replica" and "pinned" in gap


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("redis_app_password", "no running task re-reads"),
        ("redis_app_password", "redis keeps its data on one node"),
        ("qdrant_api_key", "nginx is not Qdrant's key gate"),  # Qdrant's own reason
        ("postgres_password", "Docker secret"),  # PostgreSQL's own reason, which says more
        ("postgres_monitor_password", "one host"),
    ],
)
def test_on_a_swarm_a_served_secret_is_refused_in_one_line_with_why(
    swarm_stack: Stack, name: str, why: str
) -> None:
    done = run_kbinfra("secrets", "rotate", name, "--yes", "--dir", str(swarm_stack.dir))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert name in line and why in line, line
    assert not state_path(swarm_stack.dir).exists()


def run_on_the_swarm(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, moving: list[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """``secrets rotate embeddings_api_key`` on a Swarm stack, each phase's plan moving
    ``moving`` (the stack itself as applied: no change); the applies recorded, not run."""
    applied: list[dict[str, str]] = []
    plans = iter([None, *([moving] * 3)])  # the check for changes not applied, then each phase

    def apply_phase(phase_stack: Stack, target: Any, **options: Any) -> ApplyResult:
        applied.append(dict(phase_stack.overlap))
        result = ApplyResult(stack=phase_stack.spec.name, target="swarm")
        result.services = [ServiceResult("embeddings", "update", "updated")]
        return result

    monkeypatch.setattr(rotation_run, "pending_changes", lambda *args: next(plans))
    monkeypatch.setattr(rotation_run, "apply_phase", apply_phase)
    monkeypatch.setattr(rotation_run, "check_revoked", lambda *args: ["checked"])
    _, lines = rotate_with_nothing_reached(stack, ["embeddings_api_key"])
    return lines, applied


def test_on_a_swarm_each_phase_is_applied_when_it_replaces_only_start_first_tasks(
    swarm_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = swarm_stack.secrets["embeddings_api_key"]
    lines, applied = run_on_the_swarm(swarm_stack, monkeypatch, ["embeddings"])
    # added: the new value accepted beside the old; moved: the old beside the new; revoked
    new = applied[0]["embeddings_api_key"]
    assert applied == [{"embeddings_api_key": new}, {"embeddings_api_key": old}, {}]
    assert "committed: secrets.yaml holds the new values of embeddings_api_key" in lines
    assert load_secrets(swarm_stack.dir, {"embeddings_api_key"})["embeddings_api_key"] != old
    assert not state_path(swarm_stack.dir).exists()


def test_on_a_swarm_a_phase_that_would_replace_a_pinned_task_stops_before_any_apply(
    swarm_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = swarm_stack.secrets["embeddings_api_key"]
    with pytest.raises(rotation_run.RotationFailedError) as refused:
        run_on_the_swarm(swarm_stack, monkeypatch, ["embeddings", "redis"])
    message = str(refused.value)
    assert "phase added of the rotation would replace redis's tasks" in message, message
    assert "redis keeps its data on one node" in message and "nothing was changed" in message
    assert not state_path(swarm_stack.dir).exists()  # nothing left to finish
    assert load_secrets(swarm_stack.dir, {"embeddings_api_key"})["embeddings_api_key"] == old


def test_a_rotation_started_on_one_host_is_not_finished_on_a_swarm(
    swarm_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(
        swarm_stack.dir,
        new_state("kb", REDIS, swarm_stack.secrets, dict.fromkeys(REDIS, "x" * 32), NOW),
    )
    with pytest.raises(KbinfraError, match="needs an apply that would fail requests on a Swarm"):
        run(swarm_stack, monkeypatch, Recorder())
    assert read_state(swarm_stack.dir) is not None  # kept, for the target it was started on


def test_during_the_overlap_the_redis_acl_user_has_both_passwords(stack: Stack) -> None:
    old = stack.secrets["redis_app_password"]
    new = fixed_secret("redis_app_password-next")
    overlapping = dataclasses.replace(
        stack,
        secrets={**stack.secrets, "redis_app_password": new},
        overlap={"redis_app_password": old},
    )
    acl = next(f.text for f in overlapping.rendered if f.path == "redis/users.acl")
    app_line = next(line for line in acl.splitlines() if line.startswith("user app "))
    assert f"{acl_password_hash(new)} {acl_password_hash(old)}" in app_line
    plain = next(f.text for f in stack.rendered if f.path == "redis/users.acl")
    assert acl_password_hash(new) not in plain
    # the app's env holds the client's value only
    assert overlapping.redact(f"x {old} {new}") == "x *** ***"


# ------------------------------------------------------------- the offsite repositories

OFFSITE = "offsite_disk_password"


def test_an_offsite_password_never_rides_an_apply() -> None:
    """restic's password is no service's: each phase is a step on the repository, and the
    applies of the same rotation deploy its old value only (no service reads it anyway)."""
    state = state_at("generated", ("a", OFFSITE))
    current = {"a": "old-a", OFFSITE: f"old-{OFFSITE}"}
    for phase in PHASES:
        shown = view(state, phase, current, {OFFSITE})
        assert shown.secrets[OFFSITE] == f"old-{OFFSITE}" and OFFSITE not in shown.overlap
    assert view(state, "moved", current, {OFFSITE}).secrets["a"] == "new-a"
    assert needs_apply(state, {OFFSITE})
    assert not needs_apply(state_at("generated", (OFFSITE,)), {OFFSITE})
    assert needs_apply(state_at("generated", (OFFSITE,)))  # not known as outside: applied


def test_restic_key_list_json_names_the_key_the_password_opened() -> None:
    listed = (
        '[{"current":false,"id":"fc0baa63","userName":"root","hostName":"vm",'
        '"created":"2026-12-02 01:34:48"},{"current":true,"id":"ff6c3886","userName":"root",'
        '"hostName":"vm","created":"2026-12-02 01:34:50"}]'
    )
    import json  # noqa: PLC0415

    assert parse_keys(json.loads(listed)) == [
        RepositoryKey("fc0baa63", current=False),
        RepositoryKey("ff6c3886", current=True),
    ]
    assert parse_keys(None) == []


@pytest.fixture
def offsite_stack(tmp_path: Path) -> Stack:
    offsite = {"backup": {"offsite": [{"name": "disk", "repository": str(tmp_path / "repo")}]}}
    return open_stack(write_stack_dir(tmp_path / "stack", overrides={**ONLY_REDIS, **offsite}))


class KeySteps:
    """Stands in for the restic calls (tests/integration/test_rotation.py runs them): records
    each phase a repository is brought to; raises at ``fail_at``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: Phase | None = None) -> None:
        self.phases: list[Phase] = []
        self.checked: list[tuple[str, str]] = []
        self.fail_at = fail_at
        steps = self

        def advance(keys: RepositoryKeys, phase: Phase) -> str:
            return steps.advance(keys, phase)

        def check(keys: RepositoryKeys) -> str:
            return steps.check(keys)

        monkeypatch.setattr(RepositoryKeys, "advance", advance)
        monkeypatch.setattr(RepositoryKeys, "check", check)

    def advance(self, keys: RepositoryKeys, phase: Phase) -> str:
        if phase == self.fail_at:
            raise OffsiteError("cannot remove key 1234: repository is already locked")
        self.phases.append(phase)
        return f"{keys.name}: {phase}"

    def check(self, keys: RepositoryKeys) -> str:
        self.checked.append(
            (keys.with_old.env["RESTIC_PASSWORD"], keys.with_new.env["RESTIC_PASSWORD"])
        )
        return f"{keys.name}: checked"


def test_each_offsite_repository_password_is_rotatable(offsite_stack: Stack) -> None:
    assert rotatable_secrets(offsite_stack) == {*REDIS, OFFSITE}
    assert OFFSITE in choose_secrets(offsite_stack, [], every=True).names


@pytest.mark.parametrize("stopped_at", PHASES)
def test_an_offsite_password_goes_through_restics_steps_and_resumes(
    offsite_stack: Stack, monkeypatch: pytest.MonkeyPatch, stopped_at: Phase
) -> None:
    names = [*REDIS, OFFSITE]
    old = offsite_stack.secrets[OFFSITE]
    new = {name: f"NEW-{name}-0123456789" for name in names}
    state = new_state("kb", names, offsite_stack.secrets, new, NOW).advanced(stopped_at)
    write_state(offsite_stack.dir, state)
    steps, recorder = KeySteps(monkeypatch), Recorder()
    result, _ = run(offsite_stack, monkeypatch, recorder, names)
    remaining = list(PHASES[PHASES.index(stopped_at) + 1 :])
    assert steps.phases == remaining  # each phase once, in order, from where it stopped
    assert len(recorder.views) == len(remaining)  # Redis's applies go on beside them
    assert all(
        secrets[OFFSITE] == old and OFFSITE not in overlap for secrets, overlap in recorder.views
    )
    assert steps.checked == [(old, new[OFFSITE])]
    assert "offsite disk: checked" in result.checks
    assert load_secrets(offsite_stack.dir, names)[OFFSITE] == new[OFFSITE]
    assert not state_path(offsite_stack.dir).exists()
    assert any("offsite_disk_password" in line for line in result.safe_copy)


def test_an_offsite_password_alone_applies_nothing(
    offsite_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps, recorder = KeySteps(monkeypatch), Recorder()
    monkeypatch.setattr(
        "kbinfra.apply.plan_stack", lambda *a, **k: pytest.fail("no plan: nothing is applied")
    )
    result, _ = run(offsite_stack, monkeypatch, recorder, [OFFSITE])
    assert recorder.views == [] and steps.phases == ["added", "moved", "revoked"]
    assert result.rotated == (OFFSITE,)


def test_a_failed_restic_step_keeps_the_state_and_secrets_yaml(
    offsite_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (offsite_stack.dir / "secrets.yaml").read_text()
    KeySteps(monkeypatch, fail_at="revoked")
    with pytest.raises(RotationFailedError) as raised:
        run(offsite_stack, monkeypatch, Recorder(), [OFFSITE])
    assert raised.value.exit_code == 1
    assert "phase revoked of the rotation failed: offsite disk: cannot remove key" in str(
        raised.value
    )
    assert "a password kbinfra holds opens the repository" in str(raised.value)
    state = read_state(offsite_stack.dir)
    assert state is not None and state.phase == "moved"
    assert (offsite_stack.dir / "secrets.yaml").read_text() == before
    steps = KeySteps(monkeypatch)
    run(offsite_stack, monkeypatch, Recorder(), [OFFSITE])
    assert steps.phases == ["revoked"]
    assert not state_path(offsite_stack.dir).exists()


def test_an_s3_repositorys_access_keys_are_refused_with_why(tmp_path: Path) -> None:
    s3 = {"name": "bucket", "repository": "s3:https://s3.example/kb"}
    folder = write_stack_dir(tmp_path / "s3", overrides={**ONLY_REDIS, "backup": {"offsite": [s3]}})
    keys = {
        "offsite_bucket_s3_access_key_id": fixed_secret("id"),
        "offsite_bucket_s3_secret_access_key": fixed_secret("key"),
    }
    write_private_file(folder / "secrets.yaml", dump_secrets({**load_secrets(folder, []), **keys}))
    done = run_kbinfra(
        "secrets", "rotate", "offsite_bucket_s3_secret_access_key", "--yes", "--dir", str(folder)
    )
    assert done.returncode == 2, done.stderr
    assert "cannot rotate offsite_bucket_s3_secret_access_key yet" in done.stderr
    assert "issued by the S3 provider" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert OFFSITE.replace("disk", "bucket") in rotatable_secrets(open_stack(folder))
