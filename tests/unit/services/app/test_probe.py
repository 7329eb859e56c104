"""The app tier's bench, without a server: what it asks for, how fast, and what it must meet.

tests/integration/test_app_tier.py runs it for real, through nginx over HTTPS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kbinfra.probing.probe import ProbeContext, bench_plan
from kbinfra.services.app import probe as app_probe
from kbinfra.services.app.probe import bench_concurrency, bench_rate, bench_thresholds
from kbinfra.targets import open_target
from tests.unit.services.app.test_service import IMAGE, MakeStack, load_error, make_stack

__all__ = ["make_stack"]


def test_the_bench_path_defaults_to_the_health_path(make_stack: MakeStack) -> None:
    stack = make_stack("minimum", {"app": {"image": IMAGE, "health_path": "/livez"}})
    assert stack.spec.app.bench_target == "/livez"
    named = make_stack("minimum", {"app": {"image": IMAGE, "bench_path": "/search?q=lava&limit=3"}})
    assert named.spec.app.bench_target == "/search?q=lava&limit=3"


@pytest.mark.parametrize("path", ["search", "/a b", "/x?q=<script>", "/docs#top", "/x?q=\nHost:"])
def test_a_bench_path_is_a_path_and_a_plain_query(tmp_path: Path, path: str) -> None:
    assert "is not a path to bench" in load_error(tmp_path, {"image": IMAGE, "bench_path": path})


def test_bench_settings_apply_only_to_a_deployed_app(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"bench_path": "/health"})
    assert "app.bench_path applies only to an app kbinfra deploys" in message


def test_the_bench_paces_under_nginxs_rate_limit_and_meets_the_guides_p95(
    make_stack: MakeStack,
) -> None:
    stack = make_stack("minimum", {"app": {"image": IMAGE}})
    assert bench_rate(10) == pytest.approx(9.0)
    (p95,) = bench_thresholds(stack.spec.app)
    assert (p95.metric, p95.op, p95.limit) == ("p95_s", "<", 0.5)
    assert "HighSearchLatency" in p95.source


def test_enough_clients_to_keep_the_pace_at_the_p95_ceiling() -> None:
    assert bench_concurrency(9.0, 0.5) == 5  # 4.5 answers in flight at 0.5 s each
    assert bench_concurrency(2.0, 0.5) == 4  # never fewer than 4
    assert bench_concurrency(9.0, 30) == 32  # never more than 32


def test_the_stack_file_sets_the_p95_ceiling(make_stack: MakeStack) -> None:
    stack = make_stack("minimum", {"app": {"image": IMAGE, "bench_p95_s": 1.5}})
    (p95,) = bench_thresholds(stack.spec.app)
    assert (p95.limit, p95.source) == (1.5, "app.bench_p95_s")


def test_the_tier_is_benched_once_not_per_container(make_stack: MakeStack) -> None:
    stack = make_stack(
        "minimum",
        {"app": {"image": IMAGE, "replicas": 2, "migrate": ["migrate"],
                 "workers": [{"name": "documents", "command": ["worker"]}]}},
    )  # fmt: skip
    plan = bench_plan(quick=True, token="ab" * 6)
    target = open_target(stack.spec, stack.dir)
    for name in ("app-2", "app-migrate", "worker-documents-1"):
        # Returns before it reaches for nginx or the network: nothing here could answer.
        with ProbeContext(stack, stack.services[name], target) as probe:
            assert app_probe.bench(probe, plan) == []
