"""The pure half of `kbinfra check` and `kbinfra bench`: verdicts, statistics, parsing, tables.

No Docker and no network here; tests/integration/test_check.py runs the probes for real.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from kbinfra.errors import KbinfraError
from kbinfra.probing import stack_checks as stack_probe
from kbinfra.probing.probe import (
    BenchResult,
    CheckFailedError,
    Checks,
    LatencyStats,
    Pacer,
    Threshold,
    bench_plan,
    bench_rows,
    check_rows_ok,
    differences,
    is_bench_name,
    latency_stats,
    percentile,
    prometheus_text,
    require_same,
    run_load,
)
from kbinfra.probing.run import STACK, probe_module, select
from kbinfra.registry import all_services
from kbinfra.services.alertmanager import probe as alertmanager
from kbinfra.services.embeddings import probe as embeddings
from kbinfra.services.nginx import probe as nginx
from kbinfra.services.postgres import probe as postgres
from kbinfra.services.prometheus import probe as prometheus
from kbinfra.services.qdrant import probe as qdrant
from kbinfra.services.redis import probe as redis
from kbinfra.stack import Stack


# --------------------------------------------------------------------------- statistics
def test_percentiles_by_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]  # 1..100
    # nearest rank: ceil(p * n): p50 of 100 is the 50th, p95 the 95th, p99 the 99th value.
    assert percentile(samples, 0.50) == 50
    assert percentile(samples, 0.95) == 95
    assert percentile(samples, 0.99) == 99
    # 20 samples: p95 is the 19th (ceil(19.0)), p99 the 20th (ceil(19.8)).
    twenty = [float(n) for n in range(1, 21)]
    assert percentile(twenty, 0.95) == 19
    assert percentile(twenty, 0.99) == 20
    assert percentile([7.0], 0.99) == 7


def test_latency_stats_sorts_and_summarises() -> None:
    stats = latency_stats([0.3, 0.1, 0.2, 0.4])
    assert stats == LatencyStats(count=4, mean=0.25, p50=0.2, p95=0.4, p99=0.4, max=0.4)
    assert latency_stats([]) is None


# --------------------------------------------------------------------------- thresholds
def _result(**changes: Any) -> BenchResult:
    values: dict[str, Any] = {
        "service": "qdrant",
        "name": "search",
        "workload": "w",
        "client": "kbinfra (httpx)",
        "concurrency": 4,
        "duration_s": 2.0,
        "operations": 100,
        "unit": "searches",
        "latency": latency_stats([0.1] * 19 + [0.6]),
        "latency_of": "per search",
        "thresholds": (Threshold("p95_s", "<", 0.5, "guide"),),
    }
    values.update(changes)
    return BenchResult(**values)


def test_threshold_verdicts() -> None:
    assert Threshold("p95_s", "<", 0.5, "x").met_by(0.49)
    assert not Threshold("p95_s", "<", 0.5, "x").met_by(0.5)
    assert Threshold("throughput", ">=", 100, "x").met_by(100)
    result = _result()
    assert result.throughput == 50
    assert result.ok  # p95 of 19 x 0.1 s and one 0.6 s is 0.1 s
    slow = _result(latency=latency_stats([0.6] * 20))
    assert not slow.ok
    assert slow.as_json()["thresholds"][0] == {
        "metric": "p95_s",
        "op": "<",
        "limit": 0.5,
        "value": 0.6,
        "source": "guide",
        "ok": False,
    }


def test_a_benchmark_that_did_not_run_is_never_ok() -> None:
    assert not _result(error="boom").ok
    recall = _result(thresholds=(Threshold("recall_at_10", ">=", 0.9, "x"),))
    assert not recall.ok  # no recall measured: not met
    assert _result(thresholds=recall.thresholds, extra={"recall_at_10": 0.95}).ok


def test_bench_table_rows_show_numbers_and_verdicts() -> None:
    rows = bench_rows([_result(), _result(name="x", error="pgbench is not in the image")])
    assert rows[0][:5] == ("qdrant", "search", "kbinfra (httpx)", "c=4 2.0s", "50.0 searches/s")
    assert rows[0][6] == "100.0 ms"
    assert "ok p95_s < 0.5 s" in rows[0][8]
    assert rows[1][8] == "ERROR: pgbench is not in the image"


def test_prometheus_text_is_valid_exposition() -> None:
    text = prometheus_text("kb", [_result(extra={"recall_at_10": 1.0}), _result(error="x")])
    lines = text.splitlines()
    assert "# TYPE kbinfra_bench_throughput_per_second gauge" in lines
    assert (
        'kbinfra_bench_throughput_per_second{stack="kb",service="qdrant",benchmark="search",'
        'unit="searches",client="kbinfra (httpx)"} 50' in lines
    )
    assert (
        'kbinfra_bench_latency_seconds{stack="kb",service="qdrant",benchmark="search",'
        'quantile="0.95"} 0.1' in lines
    )
    assert 'kbinfra_bench_ok{stack="kb",service="qdrant",benchmark="search"} 0' in lines
    count = 'kbinfra_bench_latency_seconds_count{stack="kb",service="qdrant",benchmark="search"}'
    assert f"{count} 20" in lines
    if (promtool := shutil.which("promtool")) is not None:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr


# --------------------------------------------------------------------------- check rows
def test_checks_record_pass_fail_errors_and_dependencies() -> None:
    rows = Checks("redis")

    def boom() -> str:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    def failing() -> str:
        raise CheckFailedError("GET without a login answered")

    assert rows.run("a", "reachable", lambda: "PONG", fix="f")
    assert not rows.run("b", "reachable", boom, fix="start it")
    assert not rows.run("c", "locked-down", failing, fix="lock it")
    assert not rows.run("d", "configured", lambda: "never", fix="x", needs="b")
    assert rows.run("e", "configured", lambda: "ok", fix="x", needs="a")
    by_name = {r.check: r for r in rows.rows}
    assert by_name["b"].value == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert by_name["c"].value == "GET without a login answered"
    assert by_name["d"].value == "not run: b failed"
    assert by_name["b"].as_json()["fix"] == "start it"
    assert by_name["a"].as_json()["fix"] == ""  # hints only where something failed
    assert not check_rows_ok(rows.rows)
    assert check_rows_ok([by_name["a"], by_name["e"]])
    assert not check_rows_ok([])


def test_settings_differences() -> None:
    expected = {"maxmemory": "100", "appendonly": "yes"}
    assert differences(expected, {"maxmemory": "100", "appendonly": "yes"}) == []
    assert differences(expected, {"maxmemory": "50"}) == [
        "maxmemory running 50, rendered 100",
        "appendonly running None, rendered yes",
    ]
    assert require_same(expected, expected) == "maxmemory=100, appendonly=yes"
    with pytest.raises(CheckFailedError, match="maxmemory running 1"):
        require_same(expected, {"maxmemory": "1", "appendonly": "yes"})


# --------------------------------------------------------------------------- bench plan
def test_bench_prefix_is_random_and_recognisable() -> None:
    plan = bench_plan(quick=True, token="0123abcd4567")
    assert plan.prefix == "kbinfra_bench_0123abcd4567"
    assert plan.quick and plan.seconds < bench_plan(quick=False, token="ab" * 6).seconds
    assert is_bench_name(plan.prefix) and is_bench_name(plan.prefix + ":17")
    assert not is_bench_name("kb_documents")
    with pytest.raises(ValueError, match="hex"):
        bench_plan(quick=True, token="x; DROP TABLE users")


def test_run_load_stops_at_the_operation_budget() -> None:
    def make(index: int) -> tuple[Callable[[], int], Callable[[], None]]:
        return (lambda: 1), (lambda: None)

    plan = bench_plan(quick=True, token="ab" * 6)
    run = run_load(make, concurrency=3, budget=plan.budget(50, seconds=30), stop=plan.stop)
    # Each worker claims before it runs: at most concurrency - 1 over the budget.
    assert 50 <= run.operations <= 52
    assert run.error is None and len(run.samples) == run.operations


def test_run_load_stops_at_the_time_budget_and_on_stop() -> None:
    def make(index: int) -> tuple[Callable[[], int], Callable[[], None]]:
        def op() -> int:
            time.sleep(0.01)
            return 1

        return op, (lambda: None)

    plan = bench_plan(quick=True, token="ab" * 6)
    run = run_load(make, concurrency=2, budget=plan.budget(10**9, seconds=0.2), stop=plan.stop)
    assert 0 < run.operations < 10**9
    plan.stop.set()
    stopped = run_load(make, concurrency=2, budget=plan.budget(10**9, seconds=30), stop=plan.stop)
    assert stopped.operations == 0


def test_run_load_reports_the_first_error_and_closes_every_worker() -> None:
    closed: list[int] = []

    def make(index: int) -> tuple[Callable[[], int], Callable[[], None]]:
        def op() -> int:
            if index == 1:
                raise RuntimeError("server went away")
            time.sleep(0.005)
            return 1

        return op, (lambda: closed.append(index))

    plan = bench_plan(quick=True, token="ab" * 6)
    run = run_load(make, concurrency=2, budget=plan.budget(10**9, seconds=30), stop=plan.stop)
    assert run.error == "RuntimeError: server went away"
    assert sorted(closed) == [0, 1]


def test_run_load_zero_means_no_work_left() -> None:
    left = [5]
    lock = threading.Lock()

    def make(index: int) -> tuple[Callable[[], int], Callable[[], None]]:
        def op() -> int:
            with lock:
                if not left[0]:
                    return 0
                left[0] -= 1
                return 1

        return op, (lambda: None)

    plan = bench_plan(quick=True, token="ab" * 6)
    run = run_load(make, concurrency=2, budget=plan.budget(10**9, seconds=30), stop=plan.stop)
    assert run.operations == 5 and len(run.samples) == 5


def test_a_pacer_spaces_slots_across_workers_and_never_saves_up_idle_time() -> None:
    now = [100.0]
    pacer = Pacer(4.0, clock=lambda: now[0])
    # Three workers claim at once: the slots are 0.25 s apart, shared, not per worker.
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] = 110.0  # idle for a while: no burst of saved-up slots afterwards
    assert [pacer.delay() for _ in range(2)] == [0.0, 0.25]
    with pytest.raises(ValueError, match="pace"):
        Pacer(0)


def test_run_load_with_a_pacer_keeps_the_rate_and_measures_only_the_operation() -> None:
    def make(index: int) -> tuple[Callable[[], int], Callable[[], None]]:
        return (lambda: 1), (lambda: None)

    plan = bench_plan(quick=True, token="ab" * 6)
    run = run_load(
        make, concurrency=3, budget=plan.budget(11, seconds=30), stop=plan.stop, pacer=Pacer(50)
    )
    assert 11 <= run.operations <= 13
    # 11 slots 20 ms apart take at least 0.2 s; none of that wait is in a sample.
    assert run.elapsed_s >= 0.19
    assert sum(run.samples) < 0.1


# --------------------------------------------------------------------------- discovery
def test_probes_are_found_by_the_services_module() -> None:
    services = all_services()
    found = {name for name, s in services.items() if probe_module(s) is not None}
    assert found == {
        "qdrant",
        "postgres",
        "redis",
        "embeddings",
        "unstructured",
        "nginx",
        "prometheus",
        "alertmanager",
        "app-tier",
    }
    for name in found:
        module = probe_module(services[name])
        assert module is not None and callable(module.checks)


def test_only_selects_services_and_the_stack(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"grafana": {"enabled": False}}})
    assert select(stack, [])[-1] == STACK
    assert select(stack, ["redis", "qdrant"]) == ["qdrant", "redis"]  # deployment order
    assert select(stack, ["redis,stack"]) == ["redis", STACK]
    with pytest.raises(KbinfraError, match="grafana: not an enabled service"):
        select(stack, ["grafana"])


def test_check_and_bench_help_import_no_client_library() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kbinfra.cli import app\n"
        "for args in (['check', '--help'], ['bench', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "    assert '--only' in result.output\n"
        "heavy = {'docker', 'paramiko', 'psycopg', 'redis', 'httpx', 'qdrant_client'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


# --------------------------------------------------------------------------- stack-wide
def test_secret_file_modes() -> None:
    modes = {".env": 0o600, "redis/users.acl": 0o644, "nginx/tls/key.pem": 0o400}
    expected = [".env", "redis/users.acl", "nginx/tls/key.pem", "prometheus/secrets/x"]
    assert stack_probe.mode_problems(expected, modes) == [
        "prometheus/secrets/x missing",
        "redis/users.acl 0644",
    ]
    assert stack_probe.private(0o600) and stack_probe.private(0o400)
    assert not stack_probe.private(0o640)


def _binding(service: str | None, ip: str, port: int, inside: int) -> stack_probe.Binding:
    return stack_probe.Binding(f"kb-{service}", service, ip, port, inside)


def test_only_declared_public_ports_may_leave_loopback() -> None:
    allowed = {("nginx", 80, 80), ("nginx", 443, 443)}
    bindings = [
        _binding("nginx", "0.0.0.0", 443, 443),
        _binding("nginx", "::", 80, 80),
        _binding("redis", "127.0.0.1", 6379, 6379),
        _binding("postgres", "::1", 5432, 5432),
        _binding("redis", "0.0.0.0", 16379, 6379),
        _binding("nginx", "0.0.0.0", 8443, 443),
        _binding(None, "192.168.1.5", 9000, 9000),
    ]
    exposed = stack_probe.public_bindings(bindings, allowed)
    assert [b.describe() for b in exposed] == [
        "kb-redis 0.0.0.0:16379->6379",
        "kb-nginx 0.0.0.0:8443->443",
        "kb-None 192.168.1.5:9000->9000",
    ]
    with pytest.raises(CheckFailedError, match=re.escape("kb-redis 0.0.0.0:16379->6379")):
        stack_probe.check_published(bindings, allowed)


def test_bindings_from_the_engines_container_list() -> None:
    listed = [
        {
            "Names": ["/kb-nginx"],
            "Labels": {"kbinfra.service": "nginx"},
            "Ports": [
                {"IP": "0.0.0.0", "PrivatePort": 443, "PublicPort": 8443, "Type": "tcp"},
                {"PrivatePort": 8080, "Type": "tcp"},  # exposed only
            ],
        }
    ]
    assert stack_probe.bindings_from(listed, "kbinfra.service") == [
        stack_probe.Binding("kb-nginx", "nginx", "0.0.0.0", 8443, 443)
    ]


def test_allowed_public_ports_come_from_the_container_specs(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum", {"services": {"nginx": {"http_port": 8080, "https_port": 8443}}})
    assert stack_probe.allowed_public(stack) == {("nginx", 8080, 80), ("nginx", 8443, 443)}


# --------------------------------------------------------------------------- redis
def test_redis_dangerous_commands_are_asked_with_dryrun() -> None:
    asked: list[tuple[str, ...]] = []

    def dryrun(command: tuple[str, ...]) -> str:
        asked.append(command)
        return "OK" if command[0] == "KEYS" else "This user has no permissions"

    assert redis.dangerous_allowed(dryrun) == ["KEYS *"]
    assert ("FLUSHALL",) in asked and ("DEBUG", "SLEEP", "0") in asked


def test_redis_expected_config_and_floors(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    ctx = stack.contexts["redis"]
    tune = stack.services["redis"].tuning(ctx)
    expected = redis.expected_config(tune, "noeviction")  # type: ignore[arg-type]
    # minimum: Redis gets 2 GiB; maxmemory is 70% of it, in bytes: 1433 MiB.
    assert expected["maxmemory"] == str(1433 * 1024 * 1024)
    assert expected["maxmemory-policy"] == "noeviction"
    # 0.5 CPU: half of one core's floors.
    assert redis.floors(0.5) == {"plain": 1000.0, "pipelined": 10000.0}
    assert redis.floors(4) == redis.FLOOR_PER_CORE


def test_redis_bench_user_may_touch_only_its_keys() -> None:
    rules = redis.bench_user_rules("kbinfra_bench_ab12", "pw")
    assert "~kbinfra_bench_ab12:*" in rules and "-@dangerous" in rules and "resetkeys" in rules
    assert rules.index("resetkeys") < rules.index("~kbinfra_bench_ab12:*")


def test_redis_benchmark_csv() -> None:
    output = (
        "WARNING: Could not fetch server CONFIG\n"
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
        '"p99_latency_ms","max_latency_ms"\n'
        '"SET k:__rand_int__ x EX 60","37735.85","0.083","0.024","0.071","0.143","0.375","2.215"\n'
    )
    parsed = redis.parse_benchmark_csv(output, 2000)
    assert parsed is not None
    rps, latency = parsed
    assert rps == 37735.85
    assert latency.p50 == pytest.approx(0.000071) and latency.p99 == pytest.approx(0.000375)
    assert latency.count == 2000
    assert redis.parse_benchmark_csv("NOAUTH Authentication required.\n", 2000) is None


# --------------------------------------------------------------------------- postgres
def test_weak_pg_hba_rules() -> None:
    rows = [
        (3, "local", ["all"], ["all"], None, "scram-sha-256", None),
        (4, "host", ["all"], ["all"], "0.0.0.0", "md5", None),
        (5, "host", ["all"], ["kb"], "::", "trust", None),
        (6, "hostssl", ["all"], ["all"], "0.0.0.0", "cert", None),
        (7, None, None, None, None, None, "invalid authentication method"),
    ]
    assert postgres.weak_hba_rules(rows) == [
        "line 4: host all all 0.0.0.0 md5",
        "line 5: host all kb :: trust",
        "line 7: invalid authentication method",
    ]


def test_pgbench_output_parsing() -> None:
    summary = postgres.parse_pgbench_summary(
        "transaction type: /tmp/x.sql\nnumber of transactions actually processed: 1766\n"
        "number of failed transactions: 0 (0.000%)\nlatency average = 6.797 ms\n"
        "tps = 588.583612 (without initial connection time)\n"
    )
    assert summary == {"transactions": 1766.0, "failed": 0.0, "tps": 588.583612}
    log = "0 1 5120 0 1700000000 123456\n1 1 20480 0 1700000000 223456\nnoise\n"
    assert postgres.parse_pgbench_log(log) == [0.00512, 0.02048]


def test_pgbench_script_uses_only_the_runs_tables() -> None:
    script = postgres.tpcb_script("kbinfra_bench_ab12")
    assert "UPDATE kbinfra_bench_ab12_accounts SET abalance = abalance + :delta" in script
    assert "INSERT INTO kbinfra_bench_ab12_history" in script
    assert "pgbench_" not in script
    assert script.startswith("\\set aid random(1, :naccounts)")


def test_postgres_thresholds_follow_the_disk() -> None:
    ssd = {t.metric: t.limit for t in postgres.thresholds(1, "ssd")}
    hdd = {t.metric: t.limit for t in postgres.thresholds(4, "hdd")}
    assert ssd == {"throughput": 100, "p95_s": 0.1}
    assert hdd == {"throughput": 80, "p95_s": 0.5}


# --------------------------------------------------------------------------- qdrant
def test_qdrant_collection_defaults(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    tune = stack.services["qdrant"].tuning(stack.contexts["qdrant"])
    expected = qdrant.expected_collection_config(tune)  # type: ignore[arg-type]
    assert expected["optimizer_config.max_segment_size"] == str(tune.max_segment_size_kb)  # type: ignore[attr-defined]
    reported = {
        "optimizer_config": {"default_segment_number": 2, "indexing_threshold": 20000},
        "wal_config": {"wal_capacity_mb": 32},
    }
    found = qdrant.reported_config(reported, list(expected))
    assert found["optimizer_config.default_segment_number"] == "2"
    assert found["wal_config.wal_segments_ahead"] is None


def test_recall_at_10() -> None:
    exact = [list(range(10)), list(range(10, 20))]
    assert qdrant.recall_at_10(exact, exact) == 1.0
    half = [[*range(5), 90, 91, 92, 93, 94], list(range(10, 20))]
    assert qdrant.recall_at_10(half, exact) == 0.75
    assert qdrant.recall_at_10([], []) == 0.0


def test_qdrant_thresholds_include_the_guides_search_alert() -> None:
    limits = qdrant.thresholds(2)
    assert (
        Threshold("p95_s", "<", 0.5, "guide alert HighSearchLatency (p95 > 0.5 s)")
        in limits["search"]
    )
    assert limits["upsert"][0].limit == 1000


# --------------------------------------------------------------------------- nginx
def test_security_header_problems() -> None:
    good = {name: value for name, value in nginx.SECURITY_HEADERS}
    assert nginx.header_problems({k.lower(): v for k, v in good.items()}) == []
    bad = dict(good)
    del bad["X-Frame-Options"]
    bad["X-XSS-Protection"] = "1; mode=block"
    assert nginx.header_problems(bad) == [
        "X-Frame-Options missing",
        "X-XSS-Protection: '1; mode=block', want '0'",
    ]


def test_legacy_tls_client_offers_nothing_newer_than_tls_1_1() -> None:
    context = nginx.legacy_tls_context()
    assert context.maximum_version == ssl.TLSVersion.TLSv1_1
    assert context.minimum_version == ssl.TLSVersion.TLSv1


# --------------------------------------------------------------------------- embeddings
def test_embeddings_without_a_required_key_fails_without_asking() -> None:
    # Nothing listens on port 9: the verdict comes from the setting alone.
    with pytest.raises(CheckFailedError, match="require_api_key is false"):
        embeddings.check_refuses_without_key("http://127.0.0.1:9", required=False)


# --------------------------------------------------------------------------- prometheus
def test_prometheus_durations_targets_and_flags() -> None:
    assert prometheus.parse_duration("30s") == 30
    assert prometheus.parse_duration("1m30s") == 90
    assert prometheus.parse_duration("500ms") == 0.5
    up, down, unknown = prometheus.target_summary(
        [
            {"labels": {"job": "redis"}, "health": "up"},
            {
                "labels": {"job": "app"},
                "health": "down",
                "scrapeUrl": "http://h:8000/metrics",
                "lastError": "connection refused",
            },
            {"labels": {"job": "qdrant"}, "health": "unknown"},
        ]
    )
    assert (up, down, unknown) == (
        ["redis"],
        ["app (http://h:8000/metrics): connection refused"],
        ["qdrant"],
    )
    assert prometheus.expected_flags(["--a=1", "--web.enable-x", "y"]) == {
        "a": "1",
        "web.enable-x": "true",
        "web.enable-lifecycle": "false",  # read back even though the command leaves it out
    }
    # Prometheus prints sizes back in its own way; both sides compare as bytes/seconds.
    assert prometheus.normalise_flag("19073MB") == prometheus.normalise_flag("18GiB641MiB")
    assert prometheus.normalise_flag("30d") == prometheus.normalise_flag("720h")
    assert prometheus.normalise_flag("/prometheus") == "/prometheus"


def test_only_a_fresh_scrape_decides_that_a_target_is_down() -> None:
    first = {"redis http://redis-exporter:9121/metrics": "2026-01-01T00:00:00Z"}
    down = {
        "labels": {"job": "redis"},
        "scrapeUrl": "http://redis-exporter:9121/metrics",
        "health": "down",
        "lastScrape": "2026-01-01T00:00:00Z",
    }
    assert prometheus.stale_failures([down], first) == [down]
    rescraped = {**down, "lastScrape": "2026-01-01T00:00:30Z"}
    assert prometheus.stale_failures([rescraped], first) == []
    assert prometheus.stale_failures([{**down, "health": "up"}], first) == []


def test_rendered_alert_names() -> None:
    text = (
        "groups:\n  - name: a\n    rules:\n      - alert: QdrantDown\n        expr: up == 0\n"
        "      - record: x\n        expr: y\n  - name: b\n    rules: []\n"
    )
    assert prometheus.rendered_alerts(text) == {"QdrantDown"}


def test_alertmanager_routing_summary() -> None:
    config = {
        "route": {
            "receiver": "default",
            "routes": [{"receiver": "critical", "matchers": ['severity="critical"']}],
        },
        "receivers": [{"name": "critical"}, {"name": "default"}],
    }
    assert alertmanager.routing(config) == {
        "receivers": ["critical", "default"],
        "receiver": "default",
        "routes": [("critical", ['severity="critical"'])],
    }
