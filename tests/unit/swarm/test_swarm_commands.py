"""plan / apply / status / destroy on a Swarm stack, without a Swarm: the target they open,
the capacity check before any connection, what a plan says from a manager's answers, and
the commands that refuse a Swarm stack in one line."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.errors import KbinfraError
from kbinfra.stack import Stack
from kbinfra.swarm.apply import stack_filter
from kbinfra.swarm.run import (
    ConvergeProgress,
    desired_swarm_stack,
    plan_against,
    require_swarm_fit,
    update_reasons,
)
from kbinfra.swarm.service_spec import build_service_spec
from kbinfra.targets import open_target
from tests.conftest import edit_stack_file
from tests.unit.error_checks import assert_one_line_error, kbinfra

FITS_ON_THE_TEST_BED = {
    "services": {
        name: {"enabled": False}
        for name in ("qdrant", "embeddings", "unstructured", "grafana", "alertmanager")
    },
    "app": {"upstream": "10.0.0.1:8000"},
}


def _with_key(stack_dir: Path) -> Path:
    """An identity file where the stack file says (never read: no connection is made)."""
    key = stack_dir / "id_test"
    key.write_text("not a key: never read\n")
    path = stack_dir / "kbinfra.yaml"
    data = yaml.safe_load(path.read_text())
    data["swarm"]["identity"] = str(key)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return stack_dir


def _roomy(stack_dir: Path) -> Path:
    """The nodes declared with room for the minimum profile's storage."""
    path = stack_dir / "kbinfra.yaml"
    path.write_text(path.read_text().replace("storage_gb: 20.0", "storage_gb: 500.0"))
    return stack_dir


def engine_view(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as the Engine returns it: false, zero and empty fields left out."""

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            kept = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in kept.items() if v not in (False, 0, None, "", [], {})}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    result: dict[str, Any] = prune(copy.deepcopy(spec))
    return result


class FakeManager:
    """The four listings plan reads from a manager's API, from what an apply would leave."""

    def __init__(
        self, services: list[dict[str, Any]], secrets: list[str], configs: list[str], stack: str
    ) -> None:
        self._services = services
        self._secrets = [
            {"Spec": {"Name": n, "Labels": {"io.kbinfra.stack": stack}}} for n in secrets
        ]
        self._configs = [
            {"Spec": {"Name": n, "Labels": {"io.kbinfra.stack": stack}}} for n in configs
        ]
        self.stack = stack

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        assert filters == stack_filter(self.stack)
        return self._services

    def secrets(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return self._secrets

    def configs(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return self._configs

    def networks(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"Name": name} for name in names]


def applied(stack: Stack) -> FakeManager:
    desired = desired_swarm_stack(stack)
    services = [
        {"Spec": engine_view(build_service_spec(s, desired.network))} for s in desired.services
    ]
    return FakeManager(services, list(desired.secrets()), list(desired.configs()), desired.stack)


def test_a_swarm_stack_opens_a_swarm_target_only_for_the_commands_that_handle_one(
    swarm_dir: Callable[..., Path], tmp_path: Path
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    stack = open_stack(swarm_dir())
    key = tmp_path / "id"
    key.write_text("not read until a connection is made\n")
    with pytest.raises(KbinfraError, match="does not work on a Swarm stack yet"):
        open_target(stack.spec, stack.dir, identity=key)
    target = open_target(stack.spec, stack.dir, identity=key, swarm=True)
    assert target.kind == "swarm"
    assert target.name == "swarm://10.213.0.11"
    assert [n.name for n in target.nodes] == ["node1", "node2", "node3"]  # type: ignore[attr-defined]
    assert target.options.identity == key  # type: ignore[attr-defined]
    with pytest.raises(KbinfraError, match="SSH private key file does not exist"):
        open_target(stack.spec, stack.dir, swarm=True)


def test_the_capacity_check_names_each_over_committed_node_and_its_services(
    swarm_dir: Callable[..., Path],
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    stack = open_stack(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    with pytest.raises(KbinfraError) as refused:
        require_swarm_fit(stack, allow=False, warn=lambda line: None)
    assert "node node2 is over-committed (storage" in refused.value.what
    assert "by postgres" in refused.value.what
    warned: list[str] = []
    assert not require_swarm_fit(stack, allow=True, warn=warned.append).fits
    assert warned and "--allow-oversized-profile" in warned[0]
    roomy = open_stack(_roomy(swarm_dir(overrides=FITS_ON_THE_TEST_BED)))
    assert require_swarm_fit(roomy, allow=False, warn=lambda line: None).fits


def test_plan_on_a_swarm_that_holds_the_stack_has_nothing_to_do(
    swarm_dir: Callable[..., Path],
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    stack = open_stack(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    plan = plan_against(desired_swarm_stack(stack), "swarm://x", applied(stack))
    assert {a.action for a in plan.services} == {"nothing"}
    assert not plan.has_changes
    assert plan.as_json()["has_changes"] is False


def test_plan_on_no_swarm_creates_everything(swarm_dir: Callable[..., Path]) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    stack = open_stack(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    desired = desired_swarm_stack(stack)
    plan = plan_against(desired, "swarm://x", None, create_swarm=True)
    assert plan.create_swarm and plan.create_network and plan.has_changes
    assert [a.action for a in plan.services] == ["create"] * len(desired.services)
    assert set(plan.secrets_to_create) == set(desired.secrets())


def test_one_changed_setting_updates_only_its_service_and_says_why(
    swarm_dir: Callable[..., Path],
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    folder = swarm_dir(overrides=FITS_ON_THE_TEST_BED)
    manager = applied(open_stack(folder))
    path = folder / "kbinfra.yaml"
    data = yaml.safe_load(path.read_text())
    redis = data["services"]["redis"]
    assert redis["maxmemory_policy"] == "noeviction"
    redis.update(maxmemory_policy="allkeys-lfu", allow_eviction_of_queues=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    changed = open_stack(folder)
    plan = plan_against(desired_swarm_stack(changed), "swarm://x", manager)
    actions = {a.service: a for a in plan.services}
    assert [name for name, a in actions.items() if a.action != "nothing"] == ["redis"]
    assert actions["redis"].reasons == ("file /usr/local/etc/redis/redis.conf changed",)
    # The old config is removed once no service uses it; the new one created.
    assert len(plan.configs_to_create) == len(plan.configs_to_remove) == 1
    assert plan.has_changes


def test_a_service_no_longer_in_the_stack_is_planned_for_removal(
    swarm_dir: Callable[..., Path],
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    stack = open_stack(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    manager = applied(stack)
    manager._services.append({"Spec": {"Name": "kb_old", "Labels": {"io.kbinfra.service": "old"}}})
    plan = plan_against(desired_swarm_stack(stack), "swarm://x", manager)
    assert plan.services[-1].as_json() == {
        "service": "old",
        "swarm_service": "kb_old",
        "action": "remove",
        "reasons": ["no longer in the stack"],
    }


def test_only_plans_just_its_services_and_keeps_what_the_others_use(
    swarm_dir: Callable[..., Path],
) -> None:
    from kbinfra.stack import open_stack  # noqa: PLC0415

    folder = swarm_dir(overrides=FITS_ON_THE_TEST_BED)
    manager = applied(open_stack(folder))
    # redis and postgres change; only redis is asked for.
    redis = {"maxmemory_policy": "allkeys-lfu", "allow_eviction_of_queues": True}
    edit_stack_file(folder, {"services": {"redis": redis, "postgres": {"max_connections": 77}}})
    changed = open_stack(folder)
    whole = plan_against(desired_swarm_stack(changed), "swarm://x", manager)
    assert {a.service for a in whole.services if a.action == "update"} == {"redis", "postgres"}
    plan = plan_against(desired_swarm_stack(changed, ["redis"]), "swarm://x", manager, partial=True)
    assert [(a.service, a.action) for a in plan.services] == [("redis", "update")]
    # Only redis's old config goes: postgres (not asked for) keeps using its own.
    assert len(plan.configs_to_create) == len(plan.configs_to_remove) == 1
    assert plan.configs_to_remove[0] in whole.configs_to_remove
    assert len(whole.configs_to_remove) == 2
    assert not plan.secrets_to_remove
    # A service no longer in the stack is not removed by a partial plan either.
    manager._services.append({"Spec": {"Name": "kb_old", "Labels": {"io.kbinfra.service": "old"}}})
    again = plan_against(
        desired_swarm_stack(changed, ["redis"]), "swarm://x", manager, partial=True
    )
    assert "remove" not in {a.action for a in again.services}


def test_update_reasons_ignore_what_the_engine_leaves_out_and_name_files_by_path() -> None:
    built = {
        "Labels": {"kbinfra.config-hash": "a"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "redis:7",
                "Mounts": [{"Type": "volume", "Source": "d", "ReadOnly": False}],
                "Secrets": [{"File": {"Name": "pw"}, "SecretName": "kb_pw_222"}],
            }
        },
        "UpdateConfig": {"Parallelism": 1, "Delay": 0},
    }
    live = engine_view(built)
    live["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretName"] = "kb_pw_111"
    assert update_reasons(live, built) == ["secret pw changed"]
    live = engine_view(built)
    live["TaskTemplate"]["ContainerSpec"]["Image"] = "redis:6"
    live["Labels"]["kbinfra.config-hash"] = "b"
    assert update_reasons(live, built) == ["image"]
    live["TaskTemplate"]["ContainerSpec"]["Image"] = "redis:7"
    assert update_reasons(live, built) == ["its config hash changed"]


class Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def note(self, source: str, message: str) -> None:
        self.notes.append(source)

    def service_state(self, service: str, state: str, message: str) -> None:
        self.states.append((service, state))

    def transfer(self, label: str, total: int | None = None) -> Any:
        raise AssertionError("no transfer while converging")


def test_converge_progress_shows_changed_services_as_waiting_then_updating() -> None:
    inner = Recorder()
    watcher = ConvergeProgress(inner, {"redis": "update", "postgres": "nothing"})
    assert inner.states == [("redis", "waiting")]
    watcher.note("redis", "kb_redis: 0/1 running [node2 starting]")
    watcher.note("postgres", "kb_postgres: 1/1 running [node1 running]")
    watcher.note("images", "node1: sent 1 MiB")
    assert inner.states == [("redis", "waiting"), ("redis", "working")]
    assert inner.notes == ["images"]
    assert watcher.seconds("redis") >= 0.0 and watcher.seconds("nowhere") == 0.0


@pytest.mark.parametrize("command", [("history",), ("rollback", "--yes")])
def test_commands_not_built_for_a_swarm_refuse_it_in_one_line(
    swarm_dir: Callable[..., Path], command: tuple[str, ...]
) -> None:
    folder = swarm_dir()
    done = kbinfra(*command, "--dir", str(folder))
    assert_one_line_error(done, "does not work on a Swarm stack yet (target: swarm)")


def test_plan_refuses_an_over_committed_node_before_connecting_to_any(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = _with_key(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    # The nodes' addresses (10.213.0.x) are not reachable from here: an error about the
    # nodes' capacity, not a connection, proves the check comes first.
    done = kbinfra("plan", "--dir", str(folder))
    assert_one_line_error(done, "node node2 is over-committed")


def test_swarm_only_refuses_a_service_the_stack_does_not_run_and_saved_plans(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = _with_key(_roomy(swarm_dir(overrides=FITS_ON_THE_TEST_BED)))
    # Refused before any node is connected (10.213.0.x is not reachable from here).
    assert_one_line_error(
        kbinfra("plan", "--only", "rediss", "--dir", str(folder)), "--only rediss: service is"
    )
    assert_one_line_error(
        kbinfra("apply", "saved.plan", "--dir", str(folder)), "saved plans are not built"
    )


ROLLED_BACK = (
    "the update of kb_redis was rolled back by Swarm: failed on node2: "
    "dockerexec: unhealthy container"
)


def test_a_rolled_back_update_fails_its_service_with_the_tasks_error_and_prunes_nothing(
    swarm_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kbinfra.errors import ApplyFailedError  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.swarm import apply as swarm_apply_module  # noqa: PLC0415
    from kbinfra.swarm import cluster, converge, lock, run  # noqa: PLC0415
    from kbinfra.swarm.apply import StackChanges  # noqa: PLC0415
    from kbinfra.swarm.cluster import SwarmFormation  # noqa: PLC0415

    stack = open_stack(swarm_dir(overrides=FITS_ON_THE_TEST_BED))
    names = [s.name for s in desired_swarm_stack(stack).services]
    assert "kb_redis" in names

    class Target:
        name = "swarm://node1"

        def docker_client(self) -> object:
            return object()

    def rolled_back(*args: Any, **kwargs: Any) -> None:
        raise ApplyFailedError(ROLLED_BACK, where="service redis", fix="see status")

    def no_prune(*args: Any) -> None:
        raise AssertionError("a rolled-back service still uses its old secrets and configs")

    monkeypatch.setattr(
        cluster, "ensure_swarm", lambda t, p: SwarmFormation("c", "node1", False, (), (), {})
    )
    monkeypatch.setattr(run, "_distribute", lambda *args: None)
    monkeypatch.setattr(lock, "swarm_locked", lambda *args, **kwargs: nullcontext([]))
    monkeypatch.setattr(
        swarm_apply_module,
        "apply_stack",
        lambda *args, **kwargs: StackChanges(
            False, (), (), (), ("kb_redis",), tuple(n for n in names if n != "kb_redis"), (), {}
        ),
    )
    monkeypatch.setattr(swarm_apply_module, "prune_objects", no_prune)
    monkeypatch.setattr(converge, "wait_converged", rolled_back)
    monkeypatch.setattr(converge, "stack_status", lambda *args: converge.StackStatus((), ()))
    result = run.swarm_apply(stack, Target())  # type: ignore[arg-type]
    assert result.failure == ROLLED_BACK and not result.ok
    outcomes = {r.service: (r.outcome, r.error) for r in result.services}
    assert outcomes.pop("redis") == ("failed", ROLLED_BACK)
    assert {outcome for outcome, _ in outcomes.values()} == {"unchanged"}
    assert result.as_json()["error"] == ROLLED_BACK


def test_apply_exits_1_with_the_tasks_error_when_swarm_rolled_back(
    swarm_dir: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys  # noqa: PLC0415

    from kbinfra import cli  # noqa: PLC0415
    from kbinfra.swarm import run  # noqa: PLC0415

    folder = _with_key(_roomy(swarm_dir(overrides=FITS_ON_THE_TEST_BED)))

    def failed(stack: Stack, target: Any, **kwargs: Any) -> run.SwarmApplyResult:
        result = run.SwarmApplyResult(stack.spec.name, target.name, failure=ROLLED_BACK)
        result.services.append(
            run.SwarmServiceResult("redis", "kb_redis", "update", "failed", 1.0, ROLLED_BACK)
        )
        return result

    monkeypatch.setattr(run, "swarm_apply", failed)
    monkeypatch.setattr(sys, "argv", ["kbinfra", "apply", "--yes", "--dir", str(folder)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: swarm://10.213.0.11: the update of kb_redis")
    assert "dockerexec: unhealthy container" in err and "Traceback" not in err


def test_finding_the_manager_skips_a_lost_node_but_never_a_host_key_refusal() -> None:
    from kbinfra.swarm.run import find_manager  # noqa: PLC0415
    from kbinfra.targets.ssh import HostKeyError  # noqa: PLC0415

    class Node:
        def __init__(self, name: str) -> None:
            self.name = name
            self.role = "manager"
            self.address = type("A", (), {"url": f"ssh://u@{name}:22"})()

    active = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "x"}}

    class Target:
        name = "swarm://node1"

        def __init__(self, fail: dict[str, Exception]) -> None:
            self.nodes = [Node("node1"), Node("node2")]
            self.fail = fail
            self.forgotten: list[str] = []
            self.manager = ""

        def node_target(self, name: str) -> Any:
            fail = self.fail

            class Ssh:
                def connect(self) -> None:
                    if name in fail:
                        raise fail[name]

            return Ssh()

        def node_client(self, name: str) -> Any:
            return type("C", (), {"info": staticmethod(lambda: active)})()

        def forget(self, name: str) -> None:
            self.forgotten.append(name)

        def use_manager(self, name: str) -> None:
            self.manager = name

    lost = Target({"node1": KbinfraError("cannot connect: No route to host")})
    assert find_manager(lost) == "node2"  # type: ignore[arg-type]
    assert lost.forgotten == ["node1"] and lost.manager == "node2"
    changed = Target({"node2": HostKeyError("changed SSH host key for node2")})
    with pytest.raises(HostKeyError):
        find_manager(changed)  # type: ignore[arg-type]
    gone = Target({n: KbinfraError(f"{n}: No route to host") for n in ("node1", "node2")})
    with pytest.raises(KbinfraError, match="no node answers; node1: node1: No route to host"):
        find_manager(gone)  # type: ignore[arg-type]


def test_status_json_lists_each_services_wanted_tasks_with_node_and_health() -> None:
    from kbinfra.swarm.converge import StackStatus  # noqa: PLC0415
    from kbinfra.swarm.run import SwarmStatus  # noqa: PLC0415
    from kbinfra.swarm.state import service_state  # noqa: PLC0415
    from tests.unit.swarm.test_service_state import NODES, service, task  # noqa: PLC0415

    web = service_state(
        service(),
        [
            task("id1", "running"),
            task("id3", "running"),  # its node is down: not counted, shown as unknown
            task("id2", "shutdown", desired="shutdown", when="0"),  # history: not listed
        ],
        NODES,
    )
    found = SwarmStatus("kb", "swarm://n1", "n1", StackStatus(tuple(NODES), (web,)), ("kb_x",))
    data = found.as_json()
    assert data["degraded"] == ["kb_web"] and data["missing"] == ["kb_x"]
    (listed,) = data["services"]
    assert listed["running"] == 1 and listed["expected"] == 3 and listed["degraded"]
    assert [(t["node"], t["health"]) for t in listed["tasks"]] == [
        ("n1", "healthy"),
        ("n3", "unknown: its node is down"),
    ]
    nothing = SwarmStatus("kb", "swarm://n1", None, None, ("kb_web",)).as_json()
    assert nothing["swarm"] is False and nothing["services"] == []
