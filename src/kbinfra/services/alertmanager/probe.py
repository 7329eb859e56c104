"""Alertmanager: ready, and routing alerts as rendered (the receivers and routes it loaded).
No benchmark: it handles a few alerts, not load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import CheckRow, Checks, ProbeContext, require
from kbinfra.services.alertmanager.service import CONFIG_FILE

if TYPE_CHECKING:
    import httpx

TIMEOUT_S = 15.0


def client(base_url: str) -> httpx.Client:
    import httpx  # noqa: PLC0415

    return httpx.Client(base_url=base_url, timeout=TIMEOUT_S)


def routing(config: dict[str, Any]) -> dict[str, Any]:
    """What decides where an alert goes: receivers, and each route's receiver and matchers."""
    route = config.get("route") or {}
    return {
        "receivers": sorted(r.get("name") for r in config.get("receivers") or []),
        "receiver": route.get("receiver"),
        "routes": [
            (r.get("receiver"), sorted(r.get("matchers") or [])) for r in route.get("routes") or []
        ],
    }


def check_ready(base: str) -> str:
    with client(base) as http:
        response = http.get("/-/ready")
    require(response.status_code == 200, f"/-/ready answered HTTP {response.status_code}")
    return "/-/ready 200"


def check_routing(base: str, rendered_text: str) -> str:
    import yaml  # noqa: PLC0415

    with client(base) as http:
        status = http.get("/api/v2/status").json()
    loaded = routing(yaml.safe_load(status["config"]["original"]) or {})
    wanted = routing(yaml.safe_load(rendered_text) or {})
    require(loaded == wanted, f"loaded {loaded}, rendered {wanted}")
    return f"receivers {', '.join(wanted['receivers'])}; {len(wanted['routes'])} routes as rendered"


def checks(probe: ProbeContext) -> list[CheckRow]:
    rows = Checks(probe.name)
    rows.run(
        "ready",
        "reachable",
        lambda: check_ready(probe.url()),
        fix="check `kbinfra status` and the container's log",
    )

    def routes() -> str:
        text = next(f.text for f in probe.stack.rendered if f.path == CONFIG_FILE)
        return check_routing(probe.url(), text)

    rows.run(
        "routing-as-rendered",
        "configured",
        routes,
        fix="Alertmanager loaded another config than rendered: `kbinfra apply`",
        needs="ready",
    )
    return rows.rows


__all__ = ["checks"]
