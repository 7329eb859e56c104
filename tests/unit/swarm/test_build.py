"""The desired Swarm stack built from each service's container, and rendered/swarm-stack.yml."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from kbinfra.render import render_stack, write_tree
from kbinfra.stack import Stack
from kbinfra.swarm.build import service_config_hash, swarm_stack, versioned_name
from kbinfra.swarm.compose import SWARM_STACK_FILE
from kbinfra.swarm.desired import LABEL_SWARM_STACK, SwarmStack
from tests.conftest import fixed_secret


def _built(stack: Stack) -> SwarmStack:
    return swarm_stack(stack, stack.rendered)


def _without_secret_data(built: SwarmStack) -> str:
    described = [asdict(service) for service in built.services]
    for service in described:
        for kind in ("secrets", "configs"):
            for item in service[kind]:
                item.pop("data")
    return repr(described)


def test_no_secret_reaches_a_services_env_command_or_labels(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    built = _built(stack)
    seen = _without_secret_data(built)
    for name, value in stack.secrets.items():
        assert value not in seen, f"secret {name} is in a Swarm service"
    assert stack.tls_key.strip().splitlines()[1] not in seen
    for service in built.services:
        spec = stack.containers[service.service]
        targets = {s.target for s in service.secrets}
        assert set(spec.secret_env.values()) <= targets
        assert not set(spec.secret_env) & set(service.env), service.service


def test_each_secret_reaches_its_image_by_a_file_variable_or_a_start_shell(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    by_name = {s.service: s for s in _built(make_swarm_stack()).services}
    postgres = by_name["postgres"]
    assert postgres.env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert postgres.env["KBINFRA_MONITOR_PASSWORD_FILE"] == (
        "/run/secrets/postgres_monitor_password"
    )
    assert {(s.uid, s.gid, s.mode) for s in postgres.secrets if "/" not in s.target} == {
        ("999", "999", 0o400)
    }
    assert by_name["grafana"].env["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    assert "DATA_SOURCE_PASS_FILE" in by_name["postgres-exporter"].env
    assert "REDIS_PASSWORD_FILE" in by_name["redis-exporter"].env
    qdrant = by_name["qdrant"]
    assert qdrant.entrypoint is not None and qdrant.entrypoint[:2] == ["/bin/sh", "-c"]
    script = qdrant.entrypoint[2]
    assert 'QDRANT__SERVICE__API_KEY="$(cat /run/secrets/qdrant_api_key)"' in script
    assert script.endswith('exec "$@"')
    assert qdrant.command == ["./entrypoint.sh"]
    assert by_name["unstructured"].command == ["scripts/app-start.sh"]


def test_rendered_files_are_configs_and_0600_ones_secrets_named_by_content(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    by_name = {s.service: s for s in _built(stack).services}
    nginx = by_name["nginx"]
    key = next(s for s in nginx.secrets if s.target == "/etc/nginx/tls/key.pem")
    assert key.data == stack.tls_key.encode()
    assert key.name == versioned_name("kb", "nginx/tls/key.pem", stack.tls_key.encode())
    assert all(c.target != "/etc/nginx/tls/key.pem" for c in nginx.configs)
    acl = next(s for s in by_name["redis"].secrets if s.target.endswith("users.acl"))
    assert (acl.uid, acl.mode) != ("0", 0o444)
    config = next(c for c in by_name["postgres"].configs if c.target.endswith("postgresql.conf"))
    assert config.name.startswith("kb_postgres-postgresql.conf_")
    assert all(len(c.name) <= 64 for s in by_name.values() for c in [*s.configs, *s.secrets])


def test_one_changed_setting_changes_only_that_services_configs_and_hash(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    before = {s.service: s for s in _built(make_swarm_stack()).services}
    changed = make_swarm_stack(
        overrides={
            "services": {
                "redis": {"maxmemory_policy": "allkeys-lru", "allow_eviction_of_queues": True}
            }
        }
    )
    after = {s.service: s for s in _built(changed).services}
    differ = sorted(n for n in before if before[n].config_hash != after[n].config_hash)
    assert differ == ["redis"]
    assert {c.name for c in before["redis"].configs} != {c.name for c in after["redis"].configs}
    assert after["redis"].labels["kbinfra.config-hash"] == after["redis"].config_hash
    assert service_config_hash(before["redis"]) == before["redis"].config_hash


def test_ports_update_policy_and_the_rest_of_a_swarm_service(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    built = _built(make_swarm_stack())
    assert built.network == "kb_overlay"
    for service in built.services:
        assert service.endpoint_mode == "dnsrr"
        assert service.labels[LABEL_SWARM_STACK] == "kb"
        assert service.network_aliases == (service.service,)
        assert service.update.failure_action == "rollback"
        if service.service == "nginx":
            assert [(p.target, p.published) for p in service.ports] == [(80, 80), (443, 443)]
        else:
            assert service.ports == (), service.service
    by_name = {s.service: s for s in built.services}
    assert by_name["postgres"].update.order == "stop-first"
    assert by_name["postgres"].hostname == "postgres"
    assert by_name["nginx"].update.order == "start-first"
    assert by_name["nginx"].hostname is None
    assert ("/dev/shm", 512) in by_name["postgres"].tmpfs
    data = [m for m in by_name["postgres"].mounts if m.data]
    assert [(m.source, m.kind) for m in data] == [("kb-postgres-data", "volume")]
    assert by_name["postgres"].update.monitor_s >= 15


def test_a_service_that_reads_env_only_and_names_no_start_is_one_line(
    make_swarm_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kbinfra.errors import KbinfraError  # noqa: PLC0415
    from kbinfra.services.unstructured.service import Unstructured  # noqa: PLC0415

    monkeypatch.setattr(Unstructured, "image_start", ())
    with pytest.raises(KbinfraError, match="reads UNSTRUCTURED_API_KEY only from its environ"):
        _built(make_swarm_stack())


def test_render_writes_the_swarm_stack_file_without_a_secret_and_deterministically(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    files = {f.path: f for f in render_stack(stack)}
    text = files[SWARM_STACK_FILE].text
    again = {f.path: f for f in render_stack(make_swarm_stack())}
    assert again[SWARM_STACK_FILE].text == text  # another folder, the same inputs
    assert "TESTSECRET" not in text
    assert stack.tls_key.strip().splitlines()[1] not in text
    assert not files[SWARM_STACK_FILE].secret
    document = yaml.safe_load(text)
    assert document["version"] == "3.8"
    assert all(v == {"external": True, "name": k} for k, v in document["secrets"].items())
    for name, config in document["configs"].items():
        assert not files[config["file"].removeprefix("./")].secret, name
    for name, service in document["services"].items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
        assert "reservations" not in service["deploy"]["resources"]
        assert service["deploy"]["update_config"]["failure_action"] == "rollback"
        if name != "nginx":
            assert "ports" not in service
    assert {p["mode"] for p in document["services"]["nginx"]["ports"]} == {"host"}
    assert document["services"]["nginx"]["deploy"]["placement"]["max_replicas_per_node"] == 1


def test_rendered_folder_gains_no_secret_on_a_swarm(
    make_swarm_stack: Callable[..., Stack], make_stack: Callable[..., Stack]
) -> None:
    """rendered/ of a Swarm stack holds no secret value that one host's does not (in its
    0600 files: .env and the like); a secret file may be shaped for its reader, as
    redis-exporter's JSON password map is."""
    swarm_stack, local_stack = make_swarm_stack(), make_stack()

    def secrets_in(stack: Stack) -> set[str]:
        text = "".join(f.text for f in render_stack(stack))
        return {name for name, value in stack.secrets.items() if value in text}

    assert secrets_in(swarm_stack) <= secrets_in(local_stack)
    assert all(f.mode == 0o600 for f in render_stack(swarm_stack) if f.secret)


def test_a_single_host_stack_renders_no_swarm_stack_file(
    make_stack: Callable[..., Stack],
) -> None:
    assert SWARM_STACK_FILE not in {f.path for f in render_stack(make_stack())}


def test_docker_compose_accepts_the_swarm_stack_file(
    make_swarm_stack: Callable[..., Stack], tmp_path: Path, require_tool: Callable[..., str]
) -> None:
    tool = require_tool("docker-compose")  # skipped locally without it, a failure in CI
    out = write_tree(render_stack(make_swarm_stack()), tmp_path / "rendered")
    done = subprocess.run(
        [tool, "-f", SWARM_STACK_FILE, "config", "--quiet"],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr


def test_building_and_rendering_a_swarm_stack_imports_nothing_of_docker(
    swarm_dir: Callable[..., Path],
) -> None:
    folder = swarm_dir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kbinfra.stack import open_stack\n"
        "from kbinfra.swarm.build import swarm_stack\n"
        f"stack = open_stack(Path({str(folder)!r}))\n"
        "swarm_stack(stack, stack.rendered)\n"
        "heavy = {'docker', 'paramiko', 'psycopg', 'redis', 'httpx', 'qdrant_client'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_a_secret_changed_gets_a_new_name_and_rolls_only_its_services(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    stack = make_swarm_stack()
    before = {s.service: s for s in _built(stack).services}
    secrets = {**stack.secrets, "unstructured_api_key": fixed_secret("rotated")}
    after = {s.service: s for s in _built(replace(stack, secrets=secrets)).services}
    differ = sorted(n for n in before if before[n].config_hash != after[n].config_hash)
    assert "unstructured" in differ and "postgres" not in differ


def test_the_monitor_roles_initdb_script_reads_its_password_file_on_a_swarm(
    make_swarm_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    files = {f.path: f for f in render_stack(make_swarm_stack())}
    script = files["postgres/initdb/20-monitor-role.sh"].text
    assert 'monitor_password="$(cat "$KBINFRA_MONITOR_PASSWORD_FILE")"' in script
    assert '"$KBINFRA_MONITOR_PASSWORD"' not in script
    path = tmp_path / "20-monitor-role.sh"
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=30)


def test_the_same_stack_built_twice_has_the_same_labels_so_a_no_op_is_seen(
    make_swarm_stack: Callable[..., Stack],
) -> None:
    first = {s.name: s.labels for s in _built(make_swarm_stack()).services}
    second = {s.name: s.labels for s in _built(make_swarm_stack()).services}
    assert first == second


def test_render_check_runs_docker_compose_on_the_swarm_stack_file_and_sees_a_broken_one(
    make_swarm_stack: Callable[..., Stack],
    require_tool: Callable[..., str],
    tmp_path: Path,
) -> None:
    from kbinfra.validation import swarm_stack_check  # noqa: PLC0415

    require_tool("docker-compose")
    out = write_tree(render_stack(make_swarm_stack()), tmp_path / "rendered")
    assert swarm_stack_check(out).outcome == "ok"
    path = out / SWARM_STACK_FILE
    document = yaml.safe_load(path.read_text())
    document["services"]["nginx"]["deploy"]["endpoint_mode"] = "vip-and-more"
    document["services"]["nginx"]["deploy"]["placment"] = {}
    path.write_text(yaml.safe_dump(document))
    result = swarm_stack_check(out)
    assert result.outcome == "failed", result
