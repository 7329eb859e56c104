"""The exporters: names, images, no host ports, secrets by reference, and their dependency."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.plan import config_parts
from kbinfra.registry import all_services
from kbinfra.service import BindMount
from kbinfra.service_kit.monitoring import camel, failure_text, first_line_number
from kbinfra.services.node_exporter.service import SERVICE as NODE
from kbinfra.services.postgres.exporter import SERVICE as POSTGRES
from kbinfra.services.postgres.roles import login_role
from kbinfra.services.redis.exporter import SERVICE as REDIS
from kbinfra.services.redis.exporter import watched_queues
from kbinfra.stack import Stack
from kbinfra.validation import missing_requirements

MONITORING_SHARES = {
    "prometheus": 0.5,
    "grafana": 0.2,
    "alertmanager": 0.1,
    "node-exporter": 0.05,
    "postgres-exporter": 0.075,
    "redis-exporter": 0.075,
}


def test_monitoring_shares_fit_the_budget() -> None:
    services = all_services()
    shares = {n: s.share for n, s in services.items() if s.allocation == "monitoring"}
    # Every monitoring service in this branch is accounted for, and together they fit.
    assert {n: shares[n] for n in MONITORING_SHARES if n in shares} == {
        n: v for n, v in MONITORING_SHARES.items() if n in services
    }
    assert sum(shares.values()) <= 1.0 + 1e-9
    assert all(s.stage == "monitoring" for n, s in services.items() if n in shares)


@pytest.mark.parametrize("profile", ["minimum", "recommended", "large"])
def test_monitoring_memory_fits_the_allocation(
    make_stack: Callable[..., Stack], profile: str
) -> None:
    stack = make_stack(profile)
    budget = stack.profile.services.monitoring.memory_mb
    used = sum(c.resources.memory_mb for n, c in stack.contexts.items() if n in MONITORING_SHARES)
    assert used <= budget


def test_registry_keys_by_service_name_not_module_name() -> None:
    services = all_services()
    assert services["node-exporter"] is NODE
    assert "node_exporter" not in services
    assert NODE.address() == "node-exporter:9100"


def test_exporters_publish_no_host_port_and_offer_their_job(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    for service in (NODE, POSTGRES, REDIS):
        ctx = stack.contexts[service.name]
        assert not service.container(ctx).ports
        assert service.stage == "monitoring"
    node_ctx = stack.contexts["node-exporter"]
    assert [(t.job, t.address) for t in NODE.scrape_targets(node_ctx)] == [
        ("node", "node-exporter:9100")
    ]
    pg_ctx = stack.contexts["postgres-exporter"]
    assert [(t.job, t.address) for t in POSTGRES.scrape_targets(pg_ctx)] == [
        ("postgres", "postgres-exporter:9187")
    ]


def test_node_exporter_reads_the_host_root(make_stack: Callable[..., Stack]) -> None:
    spec = NODE.container(make_stack("minimum").contexts["node-exporter"])
    assert spec.image == "prom/node-exporter:v1.12.1"
    assert "--path.rootfs=/host" in (spec.command or [])
    assert list(spec.binds) == [BindMount(source="/", target="/host", read_only=True)]
    assert not spec.volumes  # the host is seen, never written, and nothing of it is backed up


def test_node_exporter_without_the_host_root(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"node-exporter": {"host_root": False}}})
    spec = NODE.container(stack.contexts["node-exporter"])
    assert not spec.binds
    assert not any(arg.startswith("--path.rootfs") for arg in spec.command or [])


def test_only_containers_with_binds_hash_them(make_stack: Callable[..., Stack]) -> None:
    """Adding bind mounts to kbinfra changed no other container's config hash."""
    stack = make_stack("minimum")
    for name, service in stack.services.items():
        spec = service.container(stack.contexts[name])
        parts = config_parts(spec, [], stack.secrets)
        assert ("binds" in parts) is bool(spec.binds), name
    assert [n for n, s in stack.services.items() if s.container(stack.contexts[n]).binds] == [
        "node-exporter"
    ]


MONITOR = "postgres_monitor_password"


def test_postgres_exporter_logs_in_as_the_monitor_role(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"postgres": {"database": "kbdata"}}})
    spec = POSTGRES.container(stack.contexts["postgres-exporter"])
    assert spec.env == {
        "DATA_SOURCE_URI": "postgres:5432/kbdata?sslmode=disable",
        "DATA_SOURCE_USER": login_role("kbinfra_monitor", stack.secrets[MONITOR]),
    }
    # The postgres service makes this login role, a member of kbinfra_monitor (pg_monitor),
    # with the verifier of the same secret.
    assert spec.secret_env == {"DATA_SOURCE_PASS": "postgres_monitor_password"}
    assert "postgres_monitor_password" in all_services()["postgres"].secrets
    roles = {f.path: f.text for f in stack.rendered}["postgres/roles/roles.sh"]
    assert "GRANT pg_monitor TO kbinfra_monitor;" in roles
    assert f"GRANT kbinfra_monitor TO {spec.env['DATA_SOURCE_USER']};" in roles
    assert spec.depends_on == ["postgres"]


def test_redis_exporter_uses_the_exporter_acl_user(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    spec = REDIS.container(stack.contexts["redis-exporter"])
    assert spec.image == "oliver006/redis_exporter:v1.91.1-alpine"
    assert spec.env == {
        "REDIS_ADDR": "redis://redis:6379",
        "REDIS_USER": "exporter",
        "REDIS_EXPORTER_CHECK_SINGLE_KEYS": "db0=document_processing",
    }
    assert spec.secret_env == {"REDIS_PASSWORD": "redis_exporter_password"}
    assert spec.depends_on == ["redis"]
    assert all("TESTSECRET" not in v for v in spec.env.values())


def test_redis_exporter_queue_settings(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        "minimum",
        {"services": {"redis-exporter": {"celery_queues": ["ingest", "embed"], "celery_db": 2}}},
    )
    spec = REDIS.container(stack.contexts["redis-exporter"])
    assert spec.env["REDIS_EXPORTER_CHECK_SINGLE_KEYS"] == "db2=ingest,db2=embed"
    with pytest.raises(SpecError, match="celery_queues"):
        make_stack("minimum", {"services": {"redis-exporter": {"celery_queues": ["a b"]}}})


def test_exporter_of_a_disabled_service_is_not_scraped_and_fails_the_check(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("minimum", {"services": {"postgres": {"enabled": False}}})
    ctx = stack.contexts["postgres-exporter"]
    assert POSTGRES.scrape_targets(ctx) == []
    [result] = missing_requirements(POSTGRES.name, POSTGRES.requires, ctx.enabled)
    assert result.outcome == "failed"
    assert "services.postgres-exporter.enabled: false" in result.detail
    # The same rule for redis: its exporter is scraped only while redis is enabled.
    without_redis = make_stack("minimum", {"services": {"redis": {"enabled": False}}})
    redis_ctx = without_redis.contexts["redis-exporter"]
    assert REDIS.scrape_targets(redis_ctx) == []
    assert watched_queues(redis_ctx) == []
    with_redis = redis_ctx._replace(enabled=redis_ctx.enabled | {"redis"})
    assert [t.job for t in REDIS.scrape_targets(with_redis)] == ["redis"]
    assert missing_requirements(REDIS.name, REDIS.requires, with_redis.enabled) == []
    assert watched_queues(with_redis) == ["document_processing"]


def test_helpers() -> None:
    assert camel("document_processing") == "DocumentProcessing"
    assert camel("re-index") == "ReIndex"
    assert camel("qdrant") == "Qdrant"
    assert first_line_number("x.yml: 8:15: group") == 8
    assert first_line_number("unmarshal errors:\n  line 3: field bogus") == 3
    assert first_line_number("nothing") is None
    assert failure_text("Checking 'a.yml'  FAILED: undefined receiver\namtool: error: x") == (
        "undefined receiver"
    )
