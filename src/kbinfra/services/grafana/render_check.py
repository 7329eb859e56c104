"""``kbinfra render --check`` for Grafana: it cannot run here, so the dashboard's structure
and the provisioned datasource are checked against what Grafana loads.
"""

import json
from pathlib import Path
from typing import Any

import yaml

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.services.grafana.service import (
    DASHBOARD_FILE,
    DATASOURCE_FILE,
    DATASOURCE_UID,
    SERVICE,
)


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """Grafana cannot run here; check the dashboard's structure and the datasource."""
    results: list[CheckResult] = []
    try:
        document = json.loads((out / DASHBOARD_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return [
            *results,
            CheckResult(DASHBOARD_FILE, "dashboard", "failed", error.msg, error.lineno),
        ]
    problems = dashboard_problems(document)
    if SERVICE.prometheus_url(ctx) is not None:
        problems += datasource_problems(out / DATASOURCE_FILE)
    results.append(
        CheckResult(
            DASHBOARD_FILE,
            "dashboard",
            "failed" if problems else "ok",
            "; ".join(problems),
        )
    )
    return results


def dashboard_problems(document: Any) -> list[str]:
    """What would keep Grafana from loading or showing the dashboard; empty when fine."""
    if not isinstance(document, dict):
        return ["the dashboard is not a JSON object"]
    problems = []
    if "dashboard" in document:
        problems.append("a provisioned dashboard is the model itself, not {'dashboard': ...}")
    for key in ("uid", "title", "schemaVersion", "panels"):
        if key not in document:
            problems.append(f"missing {key}")
    for index, panel in enumerate(document.get("panels") or []):
        name = f"panel {index + 1} ({panel.get('title', 'untitled')})"
        if panel.get("type") not in ("timeseries", "stat", "gauge", "table", "bargauge", "text"):
            problems.append(f"{name}: unknown or retired type {panel.get('type')!r}")
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE_UID:
            problems.append(f"{name}: datasource is not {DATASOURCE_UID}")
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{name}: gridPos needs integer x, y, w, h")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        for target in targets:
            if not target.get("expr") or not target.get("refId"):
                problems.append(f"{name}: a target lacks expr or refId")
    return problems


def datasource_problems(path: Path) -> list[str]:
    """The provisioned datasource must carry the uid every panel refers to."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    uids = [source.get("uid") for source in document.get("datasources") or []]
    if DATASOURCE_UID not in uids:
        return [f"{DATASOURCE_FILE} provides no datasource with uid {DATASOURCE_UID}"]
    return []
