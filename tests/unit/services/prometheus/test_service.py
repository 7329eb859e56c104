"""Prometheus: scrape jobs from the registry, credentials files, retention, the guide's alerts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra import registry as registry_module
from kbinfra.errors import SpecError
from kbinfra.registry import all_services
from kbinfra.render import render_service, render_stack, write_tree
from kbinfra.service import (
    ContainerSpec,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    WorkQueue,
)
from kbinfra.services.prometheus.render_check import check_rendered
from kbinfra.services.prometheus.service import (
    SERVICE,
    ScrapeJob,
    backlog_rules,
    retention_size_mb,
    scrape_jobs,
)
from kbinfra.stack import Stack
from kbinfra.validation import find_tool, validate_tree

QDRANT_KEY = "TESTSECRET-qdrant_api_key-0123456789"


def require_tool(name: str) -> None:
    """Validator tests fail in CI when the tool is missing, and skip on a laptop."""
    if find_tool(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; CI must install it")
        pytest.skip(f"{name} is not installed")


class FakeQdrant(Service):
    """Stands in for the qdrant service (another branch): /metrics needs the api key."""

    name = "qdrant"
    allocation = "qdrant"
    default_image = "qdrant/qdrant:test"
    container_port = 6333

    def tuning(self, ctx: ServiceContext) -> Any:
        return None

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {}

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        raise NotImplementedError

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        return [ScrapeTarget(job="qdrant", address=self.address(), bearer_secret="qdrant_api_key")]


class ServicesWithQdrant:
    """The stack's ``services`` plus settings for the fake qdrant."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def get(self, name: str) -> ServiceSettings:
        if name == "qdrant":
            return ServiceSettings(image=FakeQdrant.default_image)
        settings: ServiceSettings = self.real.get(name)
        return settings


@pytest.fixture
def with_qdrant(monkeypatch: pytest.MonkeyPatch) -> Callable[[ServiceContext], ServiceContext]:
    """Register the fake qdrant and return a function that enables it in a context."""
    registry = {**all_services(), "qdrant": FakeQdrant()}
    monkeypatch.setattr(registry_module, "all_services", lambda: registry)

    def enable(ctx: ServiceContext) -> ServiceContext:
        stack = ctx.stack.model_copy(update={"services": ServicesWithQdrant(ctx.stack.services)})
        return ctx._replace(
            stack=stack,
            enabled=ctx.enabled | {"qdrant"},
            secrets={**ctx.secrets, "qdrant_api_key": QDRANT_KEY},
        )

    return enable


def rendered(ctx: ServiceContext) -> dict[str, Any]:
    return {f.path: f for f in render_service(SERVICE, ctx)}


def job_names(ctx: ServiceContext) -> list[str]:
    return [job.job for job in SERVICE.jobs(ctx)]


def test_scrape_jobs_are_exactly_those_of_enabled_services(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    # Every registered service is on by default, so each offers its job.
    assert job_names(stack.contexts["prometheus"]) == [
        "alertmanager",
        "app",
        "embeddings",
        "grafana",
        "node",
        "postgres",
        "prometheus",
        "qdrant",
        "redis",
    ]
    fewer = make_stack(
        "minimum",
        {
            "services": {
                "node-exporter": {"enabled": False},
                "alertmanager": {"enabled": False},
                "grafana": {"enabled": False},
                # postgres off: its exporter stays on but must not be scraped
                "postgres": {"enabled": False},
            }
        },
    )
    ctx = fewer.contexts["prometheus"]
    assert job_names(ctx) == ["app", "embeddings", "prometheus", "qdrant", "redis"]
    assert SERVICE.alertmanagers(ctx) == []
    config = yaml.safe_load(rendered(ctx)["prometheus/prometheus.yml"].text)
    assert config["alerting"]["alertmanagers"] == []
    assert [c["job_name"] for c in config["scrape_configs"]] == [
        "app",
        "embeddings",
        "prometheus",
        "qdrant",
        "redis",
    ]


def test_redis_job_appears_with_redis(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum", {"services": {"redis": {"enabled": False}}}).contexts["prometheus"]
    with_redis = ctx._replace(enabled=ctx.enabled | {"redis"})
    assert "redis" in job_names(with_redis)
    assert "redis" not in job_names(ctx)


def test_alertmanager_target_comes_from_the_registry(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum").contexts["prometheus"]
    config = yaml.safe_load(rendered(ctx)["prometheus/prometheus.yml"].text)
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == [f"alertmanager:{all_services()['alertmanager'].container_port}"]


def test_qdrant_job_reads_its_token_from_a_0600_file(
    make_stack: Callable[..., Stack],
    with_qdrant: Callable[[ServiceContext], ServiceContext],
) -> None:
    ctx = with_qdrant(make_stack("minimum").contexts["prometheus"])
    files = rendered(ctx)
    text = files["prometheus/prometheus.yml"].text
    assert QDRANT_KEY not in text
    assert "TESTSECRET" not in text
    config = yaml.safe_load(text)
    qdrant = next(c for c in config["scrape_configs"] if c["job_name"] == "qdrant")
    assert qdrant["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/secrets/qdrant_api_key",
    }
    assert qdrant["static_configs"][0]["targets"] == ["qdrant:6333"]
    token = files["prometheus/secrets/qdrant_api_key"]
    assert (token.text, token.mode, token.secret) == (QDRANT_KEY, 0o600, True)
    mounts = {m.source: m.target for m in SERVICE.container(ctx).files}
    assert mounts["prometheus/secrets/qdrant_api_key"] == "/etc/prometheus/secrets/qdrant_api_key"
    owners = {m.source: (m.uid, m.gid) for m in SERVICE.container(ctx).files}
    assert owners["prometheus/secrets/qdrant_api_key"] == (65534, 65534)  # nobody reads it
    # Jobs without a token have no credentials file.
    node = next(c for c in config["scrape_configs"] if c["job_name"] == "node")
    assert "authorization" not in node
    assert "QdrantDown" in {r.alert for r in SERVICE.rule_groups(ctx)["kb_availability"]}


def test_scrape_jobs_group_targets_and_refuse_conflicts() -> None:
    jobs = scrape_jobs(
        [
            ScrapeTarget(job="b", address="b2:1"),
            ScrapeTarget(job="a", address="a:1", interval_s=5),
            ScrapeTarget(job="b", address="b1:1"),
        ]
    )
    assert jobs == [
        ScrapeJob(job="a", path="/metrics", interval_s=5, bearer_secret=None, targets=("a:1",)),
        ScrapeJob(
            job="b", path="/metrics", interval_s=30, bearer_secret=None, targets=("b1:1", "b2:1")
        ),
    ]
    assert jobs[0].timeout_s == 5  # never longer than the interval
    with pytest.raises(ValueError, match="scrape job 'b'"):
        scrape_jobs(
            [ScrapeTarget(job="b", address="x:1"), ScrapeTarget(job="b", address="y:1", path="/m")]
        )


@pytest.mark.parametrize(
    ("profile", "expected_mb"),
    [
        # monitoring storage 50 GB, prometheus share 0.5 → 25 GB;
        # 25·10⁹ B · 0.8 = 20·10⁹ B / 1048576 = 19073.49 → 19073 MiB
        ("minimum", 19073),
        ("recommended", 19073),
        # 200 GB · 0.5 = 100 GB; 80·10⁹ B / 1048576 = 76293.95 → 76293 MiB
        ("large", 76293),
    ],
)
def test_retention_size_is_80_percent_of_prometheus_storage(
    make_stack: Callable[..., Stack], profile: str, expected_mb: int
) -> None:
    ctx = make_stack(profile).contexts["prometheus"]
    tune = SERVICE.tuning(ctx)
    assert tune.retention_size_mb == expected_mb
    command = SERVICE.container(ctx).command or []
    assert f"--storage.tsdb.retention.size={expected_mb}MB" in command
    assert "--storage.tsdb.retention.time=30d" in command
    # Lifecycle endpoints stay off: any process reaching the port could POST /-/quit.
    assert not [flag for flag in command if "lifecycle" in flag]


def test_retention_size_by_hand() -> None:
    assert retention_size_mb(1) == 762  # 0.8·10⁹ / 1048576 = 762.9
    assert retention_size_mb(25) == 19073


def test_container_publishes_on_loopback_and_checks_readiness(
    make_stack: Callable[..., Stack],
) -> None:
    ctx = make_stack("minimum").contexts["prometheus"]
    spec = SERVICE.container(ctx)
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 9090, 9090)
    ]
    assert spec.healthcheck is not None
    assert spec.healthcheck.test == [
        "CMD",
        "wget",
        "-qO",
        "/dev/null",
        "http://127.0.0.1:9090/-/ready",
    ]
    assert spec.volumes[0].target == "/prometheus"
    assert spec.extra_hosts == ["host.docker.internal:host-gateway"]
    no_app = make_stack("minimum", {"services": {"prometheus": {"scrape_app": False}}})
    assert no_app.contexts["prometheus"].settings.scrape_app is False
    assert not SERVICE.container(no_app.contexts["prometheus"]).extra_hosts
    assert "app" not in job_names(no_app.contexts["prometheus"])


def test_guide_alerts_are_fixed(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum").contexts["prometheus"]
    text = rendered(ctx)["prometheus/rules/kb_alerts.yml"].text
    groups = {g["name"]: g["rules"] for g in yaml.safe_load(text)["groups"]}
    rules = {r["alert"]: r for group in groups.values() for r in group}
    search = rules["HighSearchLatency"]["expr"]
    assert search == (
        "histogram_quantile(0.95, sum by (le) (rate(kb_search_duration_seconds_bucket[5m]))) > 0.5"
    )
    assert "sum by (le)" in rules["HighEmbeddingLatency"]["expr"]
    assert rules["HighEmbeddingLatency"]["expr"].endswith("> 2")
    assert rules["HighMemoryUsage"]["labels"] == {"severity": "warning"}
    # Jinja must not have eaten Prometheus' own template braces.
    assert (
        "{{ $value | humanizeDuration }}"
        in rules["HighSearchLatency"]["annotations"]["description"]
    )
    assert not any("celery_tasks_total" in r["expr"] for r in rules.values())


def test_down_alert_for_every_scraped_job_but_prometheus(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum").contexts["prometheus"]
    down = {r.alert: r for r in SERVICE.rule_groups(ctx)["kb_availability"]}
    assert sorted(down) == [
        "AlertmanagerDown",
        "AppDown",
        "EmbeddingsDown",
        "GrafanaDown",
        "NodeDown",
        "PostgresDown",
        "QdrantDown",
        "RedisDown",
    ]
    assert down["PostgresDown"].expr == 'up{job="postgres"} == 0'
    assert down["PostgresDown"].severity == "critical"


def test_document_backlog_reads_the_queue_length(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum", {"services": {"redis": {"enabled": False}}}).contexts["prometheus"]
    assert SERVICE.rule_groups(ctx)["kb_performance"][-1].alert == "HighMemoryUsage"
    with_redis = ctx._replace(enabled=ctx.enabled | {"redis"})
    backlog = SERVICE.rule_groups(with_redis)["kb_performance"][-1]
    assert backlog.alert == "DocumentProcessingBacklog"
    assert backlog.expr == 'max(redis_key_size{job="redis", key="document_processing"}) > 100'
    assert backlog.for_ == "5m"
    queues = [WorkQueue("ingest", "a"), WorkQueue("re-index", "b")]
    assert [r.alert for r in backlog_rules(queues, 5)] == [
        "IngestBacklog",
        "ReIndexBacklog",
    ]


def test_rendering_is_deterministic(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("large").contexts["prometheus"]
    first = [(f.path, f.text) for f in render_service(SERVICE, ctx)]
    second = [(f.path, f.text) for f in render_service(SERVICE, ctx)]
    assert first == second


def test_bad_retention_time_is_one_clear_error(make_stack: Callable[..., Stack]) -> None:
    with pytest.raises(SpecError, match="retention_time"):
        make_stack("minimum", {"services": {"prometheus": {"retention_time": "30 days"}}})


def _write(stack: Stack, out: Path) -> Path:
    write_tree(render_stack(stack), out)
    return out


@pytest.mark.validators
def test_promtool_accepts_rendered_config_with_credentials_file(
    make_stack: Callable[..., Stack],
    with_qdrant: Callable[[ServiceContext], ServiceContext],
    tmp_path: Path,
) -> None:
    require_tool("promtool")
    ctx = with_qdrant(make_stack("recommended").contexts["prometheus"])
    out = tmp_path / "out"
    write_tree(render_service(SERVICE, ctx), out)
    assert (out / "prometheus/secrets/qdrant_api_key").stat().st_mode & 0o777 == 0o600
    results = check_rendered(ctx, out)
    assert [(r.tool, r.outcome) for r in results] == [
        ("promtool check config", "ok"),
        ("promtool check rules", "ok"),
    ], results


@pytest.mark.validators
def test_promtool_fails_on_invalid_promql_with_its_line(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_tool("promtool")
    stack = make_stack("minimum")
    out = _write(stack, tmp_path / "out")
    rules = out / "prometheus/rules/kb_alerts.yml"
    lines = rules.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if 'up{job=\\"node\\"}' in line)
    lines[index] = '        expr: "up{job=\\"node\\" == 0"'
    rules.write_text("\n".join(lines) + "\n")
    results = {r.tool: r for r in check_rendered(stack.contexts["prometheus"], out)}
    for tool in ("promtool check config", "promtool check rules"):
        result = results[tool]
        assert result.outcome == "failed"
        assert result.path == "prometheus/rules/kb_alerts.yml"
        assert result.line == index + 1
        assert "parse error" in result.detail
        assert str(tmp_path) not in result.detail


@pytest.mark.validators
def test_promtool_fails_on_a_missing_credentials_file(
    make_stack: Callable[..., Stack],
    with_qdrant: Callable[[ServiceContext], ServiceContext],
    tmp_path: Path,
) -> None:
    require_tool("promtool")
    ctx = with_qdrant(make_stack("minimum").contexts["prometheus"])
    out = tmp_path / "out"
    write_tree(render_service(SERVICE, ctx), out)
    (out / "prometheus/secrets/qdrant_api_key").unlink()
    result = check_rendered(ctx, out)[0]
    assert result.outcome == "failed"
    assert "prometheus/secrets/qdrant_api_key" in result.detail


@pytest.mark.validators
def test_promtool_reports_unknown_fields_with_line(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_tool("promtool")
    stack = make_stack("minimum")
    out = _write(stack, tmp_path / "out")
    config = out / "prometheus/prometheus.yml"
    text = config.read_text().replace("  evaluation_interval:", "  evaluation_intervall:")
    config.write_text(text)
    line = 1 + text.splitlines().index(
        next(x for x in text.splitlines() if "evaluation_intervall" in x)
    )
    result = check_rendered(stack.contexts["prometheus"], out)[0]
    assert (result.path, result.outcome, result.line) == (
        "prometheus/prometheus.yml",
        "failed",
        line,
    )
    assert "evaluation_intervall" in result.detail


@pytest.mark.validators
@pytest.mark.parametrize("profile", ["minimum", "recommended", "large"])
def test_whole_monitoring_stack_passes_render_check(
    make_stack: Callable[..., Stack], tmp_path: Path, profile: str
) -> None:
    require_tool("promtool")
    require_tool("amtool")
    # redis is another branch's service: without it, its exporter rightly fails the check.
    stack = make_stack(profile, {"services": {"redis-exporter": {"enabled": False}}})
    results = validate_tree(stack, _write(stack, tmp_path / "out"))
    assert [r for r in results if not r.ok] == []
    tools = {r.tool for r in results}
    assert {"promtool check config", "promtool check rules", "amtool check-config"} <= tools
