"""apply on the start graph, against the real Docker Engine: nginx comes up while its
upstreams still start, and a failed service stops only what needs it."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import Deployment, free_port, new_deployment
    from .testbed_support import Testbed
except ImportError:
    from stack_support import Deployment, free_port, new_deployment  # type: ignore[no-redef]
    from testbed_support import Testbed  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

#: How long the slowed upstream sleeps before it starts: far longer than nginx takes.
UPSTREAM_DELAY_S = 25


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _get(url: str) -> int:
    """The HTTP status of a GET (nginx's certificate is the stack's own: not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def slow_unstructured(testbed: Testbed, tmp_path: Path) -> Iterator[str]:
    """The test bed's Unstructured stand-in, made to sleep before it starts serving."""
    base = testbed.images["unstructured"]
    entrypoint = json.loads(
        _docker("image", "inspect", base, "--format", "{{json .Config.Entrypoint}}")
    )
    tag = f"kbt-slow-unstructured:{uuid.uuid4().hex[:8]}"
    start = " ".join(entrypoint or [])
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\n"
        f'ENTRYPOINT ["/bin/sh", "-c", "sleep {UPSTREAM_DELAY_S}; exec {start} \\"$@\\"", "slow"]\n'
    )
    _docker("build", "-q", "-t", tag, str(tmp_path))
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)


def _deployed(testbed: Testbed, folder: Path, services: tuple[str, ...]) -> Iterator[Deployment]:
    """A local stack of ``services`` (nginx on free public ports), destroyed afterwards."""
    deployment = new_deployment("local", folder, testbed, services)

    def public_ports(data: dict[str, Any]) -> None:
        nginx = data["services"]["nginx"]
        nginx["http_port"], nginx["https_port"] = free_port(), free_port()

    if "nginx" in services:
        deployment.edit(public_ports)
    yield deployment
    deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)


@pytest.fixture
def edge_and_upstream(testbed: Testbed, tmp_path: Path) -> Iterator[Deployment]:
    yield from _deployed(testbed, tmp_path / "stack", ("nginx", "unstructured"))


def test_nginx_serves_while_its_upstream_is_still_starting(
    edge_and_upstream: Deployment, slow_unstructured: str
) -> None:
    deployment = edge_and_upstream
    deployment.edit(lambda d: d["services"]["unstructured"].__setitem__("image", slow_unstructured))
    https = deployment.spec["services"]["nginx"]["https_port"]
    proc = deployment.popen("apply", "--yes", "--output", "json")
    assert proc.stderr is not None and proc.stdout is not None
    seen: list[str] = []
    statuses: dict[str, int] = {}
    for line in proc.stderr:
        seen.append(line)
        if "nginx: healthy in" in line:
            # Asked now, while the apply still waits for unstructured to come up.
            statuses["healthz"] = _get(f"https://127.0.0.1:{https}/healthz")
            statuses["route"] = _get(f"https://127.0.0.1:{https}/unstructured/general/v0/general")
            statuses["upstream healthy yet"] = sum("unstructured: healthy" in s for s in seen)
            break
    rest = proc.stderr.read()
    document = json.loads(proc.stdout.read())
    proc.wait(timeout=300)
    assert proc.returncode == 0, "".join(seen) + rest
    assert statuses == {"healthz": 200, "route": 502, "upstream healthy yet": 0}, "".join(seen)
    results = {r["service"]: r for r in document["services"]}
    assert {r["outcome"] for r in results.values()} == {"created"}
    nginx = results["nginx"]["healthy_after_s"]
    upstream = results["unstructured"]["healthy_after_s"]
    assert nginx is not None and upstream is not None
    assert nginx < UPSTREAM_DELAY_S <= upstream


@pytest.fixture
def stores_and_exporters(testbed: Testbed, tmp_path: Path) -> Iterator[Deployment]:
    services = ("postgres", "postgres-exporter", "redis", "redis-exporter", "node-exporter")
    yield from _deployed(testbed, tmp_path / "stack", services)


def test_a_failed_service_skips_only_what_needs_it(
    stores_and_exporters: Deployment, base_image: str
) -> None:
    deployment = stores_and_exporters
    # An image that has no PostgreSQL: its container cannot come up.
    deployment.edit(lambda d: d["services"]["postgres"].update(image=base_image, version=15))
    failed = deployment.run("apply", "--yes", "--output", "json", "--timeout", "60")
    assert failed.code == 1, failed.err
    assert "services" in failed.json(), failed.out + failed.err
    results = {r["service"]: r for r in failed.json()["services"]}
    assert results["postgres"]["outcome"] == "failed"
    assert results["postgres-exporter"]["outcome"] == "skipped"
    assert results["postgres-exporter"]["error"] == (
        "not applied: it waits for postgres, which failed"
    )
    for independent in ("redis", "redis-exporter", "node-exporter"):
        assert results[independent]["outcome"] == "created", results[independent]
        assert results[independent]["healthy_after_s"] is not None
        state = json.loads(
            _docker("inspect", deployment.container(independent), "--format", "{{json .State}}")
        )
        assert state["Running"], independent
    for missing in ("postgres", "postgres-exporter"):
        listed = _docker("ps", "-aq", "--filter", f"name=^{deployment.container(missing)}$")
        assert listed == "", missing
    uploaded = failed.json()["files_uploaded"]
    assert any(path.startswith("redis/") for path in uploaded)
    assert not any(path.startswith("postgres/") for path in uploaded)  # kept for the retry
    assert "postgres did not become healthy" in failed.err
