"""Grafana: the provisioned datasource, the guide's dashboard made valid, and a locked-down UI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kbinfra.render import render_service, render_stack, write_tree
from kbinfra.services.grafana.render_check import check_rendered, dashboard_problems
from kbinfra.services.grafana.service import (
    DASHBOARD_FILE,
    DATASOURCE_FILE,
    DATASOURCE_UID,
    SERVICE,
)
from kbinfra.stack import Stack
from kbinfra.validation import validate_tree

#: The guide's dashboard, as written.
GUIDE_DASHBOARD = {
    "dashboard": {
        "title": "PrivexBot KB System",
        "panels": [
            {
                "title": "Search Performance",
                "type": "graph",
                "targets": [{"expr": "rate(kb_search_total[5m])", "legendFormat": "Searches/sec"}],
            },
            {
                "title": "Vector Database Status",
                "type": "stat",
                "targets": [{"expr": "qdrant_collections_total", "legendFormat": "Collections"}],
            },
        ],
    }
}


def files(stack: Stack) -> dict[str, str]:
    return {f.path: f.text for f in render_service(SERVICE, stack.contexts["grafana"])}


def test_dashboard_is_valid_provisionable_json(make_stack: Callable[..., Stack]) -> None:
    document = json.loads(files(make_stack("minimum"))[DASHBOARD_FILE])
    assert dashboard_problems(document) == []
    assert document["title"] == "kb knowledge base"
    assert document["uid"] == "kbinfra-kb"
    assert isinstance(document["schemaVersion"], int)
    assert {p["type"] for p in document["panels"]} == {"timeseries", "stat"}
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            assert target["expr"]
            assert target["datasource"]["uid"] == DATASOURCE_UID


def test_dashboard_uses_metric_names_that_exist(make_stack: Callable[..., Stack]) -> None:
    text = files(make_stack("minimum"))[DASHBOARD_FILE]
    exprs = [t["expr"] for p in json.loads(text)["panels"] for t in p["targets"]]
    assert 'sum(collections_total{job="qdrant"})' in exprs
    assert 'sum(collections_vector_total{job="qdrant"})' in exprs
    assert not any("qdrant_collections_total" in e or "qdrant_points_total" in e for e in exprs)
    assert not any("celery_tasks_total" in e for e in exprs)
    assert all("sum by (le)" in e for e in exprs if "histogram_quantile" in e)


def test_queue_panel_follows_the_redis_exporter_queues(make_stack: Callable[..., Stack]) -> None:
    ctx = make_stack("minimum").contexts["grafana"]
    with_redis = ctx._replace(enabled=ctx.enabled | {"redis"})
    document = SERVICE.template_context(with_redis)["dashboard"]
    queue = next(p for p in document["panels"] if p["title"] == "Celery queue length")
    assert queue["targets"][0]["expr"] == (
        'sum by (key) (redis_key_size{job="redis", key=~"document_processing"})'
    )


def test_the_guides_dashboard_is_rejected() -> None:
    problems = dashboard_problems(GUIDE_DASHBOARD)
    assert any("not {'dashboard'" in p for p in problems)
    assert "missing panels" in problems
    inner = dashboard_problems(GUIDE_DASHBOARD["dashboard"])
    assert any("retired type 'graph'" in p for p in inner)
    assert any("gridPos" in p for p in inner)
    assert any("datasource" in p for p in inner)


def test_datasource_matches_the_dashboard(make_stack: Callable[..., Stack]) -> None:
    data: dict[str, Any] = yaml.safe_load(files(make_stack("minimum"))[DATASOURCE_FILE])
    [source] = data["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    assert source["type"] == "prometheus"
    off = make_stack("minimum", {"services": {"prometheus": {"enabled": False}}})
    assert yaml.safe_load(files(off)[DATASOURCE_FILE])["datasources"] == []


def test_container_is_locked_down(make_stack: Callable[..., Stack]) -> None:
    spec = SERVICE.container(make_stack("minimum").contexts["grafana"])
    assert spec.image == "grafana/grafana:13.2.1"
    assert [(p.host_ip, p.host_port) for p in spec.ports] == [("127.0.0.1", 3000)]
    assert spec.secret_env == {"GF_SECURITY_ADMIN_PASSWORD": "grafana_admin_password"}
    assert "GF_SECURITY_ADMIN_PASSWORD" not in spec.env
    assert all("TESTSECRET" not in value for value in spec.env.values())
    assert spec.env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert spec.env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert spec.env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    mounts = {m.source: m.target for m in spec.files}
    assert mounts[DASHBOARD_FILE] == "/etc/grafana/dashboards/kb-system.json"
    provider = yaml.safe_load(
        files(make_stack("minimum"))["grafana/provisioning/dashboards/kbinfra.yml"]
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_check_rendered(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack("minimum")
    ctx = stack.contexts["grafana"]
    out = tmp_path / "out"
    write_tree(render_service(SERVICE, ctx), out)
    assert [(r.tool, r.outcome) for r in check_rendered(ctx, out)] == [("dashboard", "ok")]
    broken = json.loads((out / DASHBOARD_FILE).read_text())
    del broken["panels"][0]["gridPos"]
    broken["panels"][1]["targets"][0]["expr"] = ""
    (out / DASHBOARD_FILE).write_text(json.dumps(broken))
    [result] = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert "gridPos" in result.detail
    assert "lacks expr" in result.detail
    (out / DASHBOARD_FILE).write_text("{")
    [result] = check_rendered(ctx, out)
    assert (result.outcome, result.line) == ("failed", 1)


def test_grafana_without_prometheus_fails_the_check(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("minimum", {"services": {"prometheus": {"enabled": False}}})
    write_tree(render_stack(stack), tmp_path / "out")
    results = validate_tree(stack, tmp_path / "out")
    [missing] = [r for r in results if r.outcome == "failed"]
    assert missing.path == "kbinfra.yaml"
    assert "services.grafana is enabled but prometheus is not" in missing.detail
    assert [r.outcome for r in results if r.tool == "dashboard"] == ["ok"]
