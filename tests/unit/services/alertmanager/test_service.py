"""Alertmanager: severity routes, optional receivers, inhibition, and amtool on the result."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kbinfra.errors import SpecError
from kbinfra.render import render_service, write_tree
from kbinfra.services.alertmanager.render_check import check_rendered
from kbinfra.services.alertmanager.service import CONFIG_FILE, SERVICE
from kbinfra.stack import Stack
from kbinfra.validation import find_tool

EMAIL = {
    "email_to": "ops@example.com",
    "smtp_smarthost": "mail.example.com:587",
    "smtp_from": "kb@example.com",
}


def require_tool(name: str) -> None:
    """Validator tests fail in CI when the tool is missing, and skip on a laptop."""
    if find_tool(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; CI must install it")
        pytest.skip(f"{name} is not installed")


def config(stack: Stack) -> dict[str, Any]:
    files = {f.path: f.text for f in render_service(SERVICE, stack.contexts["alertmanager"])}
    data: dict[str, Any] = yaml.safe_load(files[CONFIG_FILE])
    return data


def test_routes_by_severity_with_a_default_receiver(make_stack: Callable[..., Stack]) -> None:
    data = config(make_stack("minimum"))
    route = data["route"]
    assert route["receiver"] == "default"
    assert [(r["receiver"], r["matchers"]) for r in route["routes"]] == [
        ("critical", ['severity="critical"']),
        ("warning", ['severity="warning"']),
    ]
    # Nothing configured to notify: receivers exist but send nowhere.
    assert data["receivers"] == [{"name": "default"}, {"name": "critical"}, {"name": "warning"}]
    assert data["inhibit_rules"] == [
        {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["alertname", "instance"],
        }
    ]


def test_webhook_and_email_reach_every_receiver(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        "minimum",
        {"services": {"alertmanager": {"webhook_url": "https://hooks.example.com/kb", **EMAIL}}},
    )
    data = config(stack)
    assert data["global"]["smtp_smarthost"] == "mail.example.com:587"
    assert data["global"]["smtp_require_tls"] is True
    for receiver in data["receivers"]:
        assert receiver["webhook_configs"] == [
            {"url": "https://hooks.example.com/kb", "send_resolved": True}
        ]
        assert receiver["email_configs"] == [{"to": "ops@example.com", "send_resolved": True}]


def test_the_webhook_url_is_a_secret(make_stack: Callable[..., Stack]) -> None:
    """A webhook URL is often a token: 0600, owned by the image's nobody, and redacted."""
    url = "https://hooks.example.com/services/T000/B000/XXXXsecrettoken"
    stack = make_stack("minimum", {"services": {"alertmanager": {"webhook_url": url}}})
    rendered = next(f for f in stack.rendered if f.path == CONFIG_FILE)
    assert (rendered.mode, rendered.secret) == (0o600, True)
    mount = next(m for m in stack.containers["alertmanager"].files if m.source == CONFIG_FILE)
    assert (mount.uid, mount.gid) == (65534, 65534)
    assert url not in stack.redact(f"error posting to {url}: 403")


def test_incomplete_email_settings_are_one_clear_error(make_stack: Callable[..., Stack]) -> None:
    with pytest.raises(SpecError, match="email_to, smtp_smarthost and smtp_from together"):
        make_stack("minimum", {"services": {"alertmanager": {"email_to": "ops@example.com"}}})
    with pytest.raises(SpecError, match="webhook_url"):
        make_stack("minimum", {"services": {"alertmanager": {"webhook_url": "hooks.example.com"}}})


def test_container(make_stack: Callable[..., Stack]) -> None:
    spec = SERVICE.container(make_stack("minimum").contexts["alertmanager"])
    assert spec.image == "prom/alertmanager:v0.34.1"
    assert [(p.host_ip, p.host_port) for p in spec.ports] == [("127.0.0.1", 9093)]
    assert "--cluster.listen-address=" in (spec.command or [])
    assert spec.healthcheck is not None
    assert spec.healthcheck.test[-1] == "http://127.0.0.1:9093/-/ready"
    assert [v.target for v in spec.volumes] == ["/alertmanager"]


@pytest.mark.validators
@pytest.mark.parametrize("overrides", [{}, {"webhook_url": "https://h.example.com/x", **EMAIL}])
def test_amtool_accepts_rendered_config(
    make_stack: Callable[..., Stack], tmp_path: Path, overrides: dict[str, Any]
) -> None:
    require_tool("amtool")
    stack = make_stack("minimum", {"services": {"alertmanager": overrides}})
    ctx = stack.contexts["alertmanager"]
    write_tree(render_service(SERVICE, ctx), tmp_path / "out")
    [result] = check_rendered(ctx, tmp_path / "out")
    assert (result.tool, result.outcome) == ("amtool check-config", "ok"), result


@pytest.mark.validators
def test_amtool_fails_on_a_route_to_an_unknown_receiver(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_tool("amtool")
    ctx = make_stack("minimum").contexts["alertmanager"]
    out = tmp_path / "out"
    write_tree(render_service(SERVICE, ctx), out)
    path = out / CONFIG_FILE
    path.write_text(path.read_text().replace("- receiver: warning", "- receiver: pager"))
    [result] = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert 'undefined receiver "pager"' in result.detail


@pytest.mark.validators
def test_amtool_reports_unknown_fields_with_line(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_tool("amtool")
    ctx = make_stack("minimum").contexts["alertmanager"]
    out = tmp_path / "out"
    write_tree(render_service(SERVICE, ctx), out)
    path = out / CONFIG_FILE
    text = path.read_text().replace("  group_wait: 30s", "  group_wiat: 30s")
    path.write_text(text)
    [result] = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert result.line == 1 + text.splitlines().index("  group_wiat: 30s")
