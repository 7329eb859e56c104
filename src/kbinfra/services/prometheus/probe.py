"""Prometheus: ready, every scrape target up, and running with the rendered flags and alert
rules. No benchmark: it is measured by what it scrapes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import CheckRow, Checks, ProbeContext, require, require_same
from kbinfra.services.prometheus.service import RULES_FILE

if TYPE_CHECKING:
    import httpx

TIMEOUT_S = 15.0
#: A target that is not up is judged by a scrape taken after the check began: wait at most
#: one scrape interval (plus this margin) for it, so a check right after apply does not fail
#: on a scrape taken before the target's container existed.
SCRAPE_MARGIN_S = 5.0
MAX_WAIT_S = 75.0


def client(base_url: str) -> httpx.Client:
    import httpx  # noqa: PLC0415

    return httpx.Client(base_url=base_url, timeout=TIMEOUT_S)


def parse_duration(text: str) -> float:
    """Prometheus durations as it reports them (``30s``, ``1m``, ``1m30s``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, number = 0.0, ""
    index = 0
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text.startswith("ms", index) else char
        total += float(number or 0) * units.get(unit, 0)
        number = ""
        index += len(unit)
    return total


def target_summary(targets: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """Jobs that are up, lines for the ones down, and the jobs never scraped yet."""
    up, down, unknown = [], [], []
    for target in targets:
        job = str(target.get("labels", {}).get("job", "?"))
        health = target.get("health")
        if health == "up":
            up.append(job)
        elif health == "unknown":
            unknown.append(job)
        else:
            error = str(target.get("lastError") or "no error given")
            down.append(f"{job} ({target.get('scrapeUrl')}): {error}")
    return sorted(up), down, sorted(unknown)


def check_ready(base: str) -> str:
    with client(base) as http:
        response = http.get("/-/ready")
    require(response.status_code == 200, f"/-/ready answered HTTP {response.status_code}")
    return "/-/ready 200"


def _key(target: Mapping[str, Any]) -> str:
    return f"{target.get('labels', {}).get('job')} {target.get('scrapeUrl')}"


def stale_failures(
    targets: Sequence[Mapping[str, Any]], first_seen: Mapping[str, str]
) -> list[Mapping[str, Any]]:
    """Targets not up whose last scrape is still the one seen when the check began.

    Right after an apply a target may have failed a scrape taken before its container
    existed; only a scrape taken since then tells whether it is down.
    """
    return [
        t
        for t in targets
        if t.get("health") != "up" and first_seen.get(_key(t)) == t.get("lastScrape")
    ]


def check_targets(base: str) -> str:
    started = time.monotonic()
    with client(base) as http:
        targets = http.get("/api/v1/targets").json()["data"]["activeTargets"]
        first_seen = {_key(t): str(t.get("lastScrape")) for t in targets if t.get("health") != "up"}
        while True:
            waiting = stale_failures(targets, first_seen)
            longest = max(
                (parse_duration(str(t.get("scrapeInterval", "0s"))) for t in waiting),
                default=0.0,
            )
            waited = time.monotonic() - started
            if not waiting or waited > min(MAX_WAIT_S, longest + SCRAPE_MARGIN_S):
                break
            time.sleep(1)
            targets = http.get("/api/v1/targets").json()["data"]["activeTargets"]
    up, down, unknown = target_summary(targets)
    require(bool(targets), "Prometheus scrapes nothing")
    require(not down, "down: " + "; ".join(down))
    require(not unknown, f"never scraped after {waited:.0f}s: {', '.join(unknown)}")
    return f"{len(up)} targets up: {', '.join(up)}"


#: Flags kbinfra leaves at their default, which check still reads back: lifecycle on would let
#: any process that reaches the port stop Prometheus (POST /-/quit).
LOCKED_DEFAULTS = {"web.enable-lifecycle": "false"}


def expected_flags(command: Sequence[str]) -> dict[str, str]:
    """``--name=value`` (and bare ``--name`` = true) of the container's command, over
    :data:`LOCKED_DEFAULTS`."""
    flags = dict(LOCKED_DEFAULTS)
    for argument in command:
        if not argument.startswith("--"):
            continue
        name, sep, value = argument[2:].partition("=")
        flags[name] = value if sep else "true"
    return flags


_BYTE_UNITS = {
    "B": 1,
    "KB": 1 << 10,
    "MB": 1 << 20,
    "GB": 1 << 30,
    "TB": 1 << 40,
    "PB": 1 << 50,
    "EB": 1 << 60,
}
_SIZE = re.compile(r"(\d+)\s*([KMGTPE]?i?B)")
_DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")


def normalise_flag(value: str | None) -> str | None:
    """One spelling per value: Prometheus prints ``19073MB`` back as ``18GiB641MiB`` and
    ``720h`` as ``30d``; both sides become bytes or seconds. Its "MB" is 2^20 bytes."""
    if value is None:
        return None
    parts = _SIZE.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
        return f"{sum(int(n) * _BYTE_UNITS[u.replace('i', '')] for n, u in parts)}B"
    if _DURATION.match(value):
        return f"{parse_duration(value):g}s"
    return value


def check_flags(base: str, expected: dict[str, str]) -> str:
    with client(base) as http:
        running = http.get("/api/v1/status/flags").json()["data"]
    want = {name: normalise_flag(value) or "" for name, value in expected.items()}
    return require_same(want, {name: normalise_flag(running.get(name)) for name in expected})


def rendered_alerts(rules_text: str) -> set[str]:
    import yaml  # noqa: PLC0415

    doc = yaml.safe_load(rules_text) or {}
    return {
        str(rule["alert"])
        for group in doc.get("groups") or []
        for rule in group.get("rules") or []
        if "alert" in rule
    }


def check_rules(base: str, expected: set[str]) -> str:
    with client(base) as http:
        groups = http.get("/api/v1/rules").json()["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g.get("rules", []) if r.get("type") == "alerting"}
    missing, extra = sorted(expected - loaded), sorted(loaded - expected)
    require(not missing and not extra, f"missing {missing or '-'}, not rendered {extra or '-'}")
    return f"{len(loaded)} alert rules loaded as rendered"


def checks(probe: ProbeContext) -> list[CheckRow]:
    rows = Checks(probe.name)
    rows.run(
        "ready",
        "reachable",
        lambda: check_ready(probe.url()),
        fix="check `kbinfra status` and the container's log",
    )
    rows.run(
        "scrape-targets-up",
        "reachable",
        lambda: check_targets(probe.url()),
        fix="see lastError above: a service is down, or its credentials are wrong; the app "
        "target needs your API running (or services.prometheus.scrape_app: false)",
        needs="ready",
    )
    command = probe.service.container(probe.ctx).command or []
    rows.run(
        "flags-as-rendered",
        "configured",
        lambda: check_flags(probe.url(), expected_flags(command)),
        fix="Prometheus runs with other flags than rendered: `kbinfra apply` recreates it",
        needs="ready",
    )

    def rules() -> str:
        text = next(f.text for f in probe.stack.rendered if f.path == RULES_FILE)
        return check_rules(probe.url(), rendered_alerts(text))

    rows.run(
        "alert-rules-as-rendered",
        "configured",
        rules,
        fix="Prometheus loaded other rules than rendered: `kbinfra apply` recreates it",
        needs="ready",
    )
    return rows.rows


__all__ = ["checks"]
