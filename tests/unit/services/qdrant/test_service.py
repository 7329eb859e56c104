"""Qdrant's tuning worked by hand, the rendered config, the container and the schema check."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kbinfra.render import render_service
from kbinfra.service import ServiceContext
from kbinfra.services.qdrant.render_check import check_rendered, config_problems
from kbinfra.services.qdrant.service import SERVICE, qdrant_tuning, readyz_probe
from kbinfra.spec.yamlfile import parse_yaml
from kbinfra.stack import Stack


def test_tuning_minimum_profile_2_cpus_8gb_ssd() -> None:
    # cores 2; cpu budget = 2 - ceil(2/4) = 1; jobs = ceil(1/8) = 1.
    # segment = min(4 GiB, 8192 MiB * 1024 / 4 / 1) = min(4194304, 2097152) = 2097152 KiB.
    # wal = clamp(8192 // 256 = 32, 32, 128) = 32; under 4 cores: threshold 20000, no WAL ahead.
    tune = qdrant_tuning(cpus=2, memory_mb=8192, disk="ssd")
    assert tune.max_search_threads == 2
    assert tune.optimizer_cpu_budget == 1
    assert tune.max_optimization_threads == 1
    assert tune.default_segment_number == 2
    assert tune.max_segment_size_kb == 2_097_152
    assert tune.indexing_threshold_kb == 20_000
    assert tune.flush_interval_sec == 5
    assert tune.wal_capacity_mb == 32
    assert tune.wal_segments_ahead == 0


def test_tuning_recommended_profile_4_cpus_16gb_ssd() -> None:
    # budget = 4 - ceil(4/4) = 3; jobs = ceil(3/8) = 1; segments = max(2, 4) = 4.
    # segment = min(4194304, 16384 * 1024 / 4 / 1 = 4194304) = 4194304 KiB (4 GiB).
    # wal = 16384 // 256 = 64; 4 cores: threshold 10000, one WAL segment ahead.
    tune = qdrant_tuning(cpus=4, memory_mb=16384, disk="ssd")
    assert tune.max_search_threads == 4
    assert tune.optimizer_cpu_budget == 3
    assert tune.max_optimization_threads == 1
    assert tune.default_segment_number == 4
    assert tune.max_segment_size_kb == 4_194_304
    assert tune.indexing_threshold_kb == 10_000
    assert tune.wal_capacity_mb == 64
    assert tune.wal_segments_ahead == 1


def test_tuning_large_profile_16_cpus_72gb_nvme() -> None:
    # budget = 16 - ceil(16/4) = 12; jobs = ceil(12/8) = 2; segments 16.
    # segment = min(4194304, 73728 * 1024 / 4 / 2 = 9437184) = 4194304 KiB: the 4 GiB cap.
    # wal = 73728 // 256 = 288, capped at 128.
    tune = qdrant_tuning(cpus=16, memory_mb=73728, disk="nvme")
    assert tune.max_search_threads == 16
    assert tune.optimizer_cpu_budget == 12
    assert tune.max_optimization_threads == 2
    assert tune.default_segment_number == 16
    assert tune.max_segment_size_kb == 4_194_304
    assert tune.flush_interval_sec == 5
    assert tune.wal_capacity_mb == 128
    assert tune.wal_segments_ahead == 1


def test_tuning_half_a_cpu_and_an_hdd() -> None:
    # 0.5 CPUs still means one thread; the budget never drops to 0 (0 would mean "auto").
    tune = qdrant_tuning(cpus=0.5, memory_mb=2048, disk="hdd")
    assert (tune.max_search_threads, tune.optimizer_cpu_budget) == (1, 1)
    assert tune.default_segment_number == 2
    assert tune.max_segment_size_kb == 2048 * 1024 // 4
    assert tune.flush_interval_sec == 10
    assert tune.wal_capacity_mb == 32


@pytest.mark.parametrize(
    ("profile", "threads", "segment_kb"),
    [("minimum", 2, 2_097_152), ("recommended", 4, 4_194_304), ("large", 16, 4_194_304)],
)
def test_rendered_config_carries_the_tuning(
    make_stack: Callable[..., Stack], profile: str, threads: int, segment_kb: int
) -> None:
    ctx = make_stack(profile).contexts["qdrant"]
    (config,) = render_service(SERVICE, ctx)
    assert config.path == "qdrant/config.yaml"
    data = yaml.safe_load(config.text)
    assert data["storage"]["performance"]["max_search_threads"] == threads
    assert data["storage"]["optimizers"]["max_segment_size_kb"] == segment_kb
    assert data["storage"]["storage_path"] == "/qdrant/storage"
    assert data["storage"]["snapshots_path"] == "/qdrant/snapshots"
    assert data["service"]["enable_tls"] is False
    assert data["service"]["enable_cors"] is False
    assert data["cluster"]["enabled"] is False
    assert data["telemetry_disabled"] is True
    assert "api_key" not in data["service"]
    assert "memmap_threshold" not in config.text
    assert "TESTSECRET" not in config.text


def test_container_passes_keys_by_env_and_publishes_on_loopback(
    make_stack: Callable[..., Stack],
) -> None:
    # without nginx, its key gate: Qdrant checks its clients' keys and publishes its own ports
    stack = make_stack("recommended", {"services": {"nginx": {"enabled": False}}})
    spec = SERVICE.container(stack.contexts["qdrant"])
    assert spec.image == "qdrant/qdrant:v1.19.0"
    assert spec.secret_env == {
        "QDRANT__SERVICE__API_KEY": "qdrant_api_key",
        "QDRANT__SERVICE__READ_ONLY_API_KEY": "qdrant_read_only_api_key",
    }
    assert all("TESTSECRET" not in value for value in spec.env.values())
    assert spec.env["RUN_MODE"] == "production"
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 6333, 6333),
        ("127.0.0.1", 6334, 6334),
    ]
    assert [(v.volume, v.target) for v in spec.volumes] == [
        ("kb-qdrant-storage", "/qdrant/storage"),
        ("kb-qdrant-snapshots", "/qdrant/snapshots"),
    ]
    assert [(f.source, f.target) for f in spec.files] == [
        ("qdrant/config.yaml", "/qdrant/config/production.yaml")
    ]
    assert (spec.cpus, spec.memory_mb) == (4.0, 16384)


def test_health_check_probes_readyz_with_bash_only(make_stack: Callable[..., Stack]) -> None:
    check = SERVICE.container(make_stack().contexts["qdrant"]).healthcheck
    assert check is not None
    assert check.test[:3] == ["CMD", "bash", "-c"]
    script = check.test[3]
    assert "/dev/tcp/127.0.0.1/6333" in script
    assert "GET /readyz HTTP/1.1" in script
    assert " 200 " in script
    assert "curl" not in script and "wget" not in script


class _Readyz(http.server.BaseHTTPRequestHandler):
    """Answers /readyz like Qdrant: 200 once ready, 503 before."""

    protocol_version = "HTTP/1.1"
    status = 503

    def do_GET(self) -> None:
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (404, False)])
def test_readyz_probe_really_speaks_http(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Readyz,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        probe = readyz_probe(server.server_address[1])
        done = subprocess.run(["bash", "-c", probe], capture_output=True, timeout=10, check=False)
    finally:
        thread.join(5)
        server.server_close()
    assert (done.returncode == 0) is healthy


def test_grpc_port_can_be_left_unpublished(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        "minimum", {"services": {"qdrant": {"grpc_port": None}, "nginx": {"enabled": False}}}
    )
    spec = SERVICE.container(stack.contexts["qdrant"])
    assert [p.container_port for p in spec.ports] == [6333]


def test_scrape_target_uses_qdrants_own_read_only_key(make_stack: Callable[..., Stack]) -> None:
    # behind nginx's key gate Prometheus scrapes Qdrant itself, with Qdrant's own key
    (target,) = SERVICE.scrape_targets(make_stack().contexts["qdrant"])
    assert (target.job, target.address, target.path) == ("qdrant", "qdrant:6333", "/metrics")
    assert target.bearer_secret == "qdrant_upstream_read_only_api_key"
    alone = make_stack("minimum", {"services": {"nginx": {"enabled": False}}})
    (target,) = SERVICE.scrape_targets(alone.contexts["qdrant"])
    assert target.bearer_secret == "qdrant_read_only_api_key"


@pytest.mark.parametrize("profile", ["minimum", "recommended", "large"])
def test_schema_check_passes_every_profile(
    rendered: Callable[..., tuple[ServiceContext, Path]], profile: str
) -> None:
    ctx, out = rendered("qdrant", profile)
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "ok", result.detail
    assert result.tool == "qdrant schema (v1.19.0)"


GUIDE_CONFIG = """\
log_level: INFO
service:
  http_port: 6333
  api_key: hunter2
storage:
  storage_path: /qdrant/storage
  raft_logs_path: /qdrant/raft_logs
  performance:
    max_search_threads: 4
    max_indexing_threads: 2
  wal_capacity_mb: 32
  optimizers:
    memmap_threshold_kb: 200000
    flush_interval_sec: "5"
    vacuum_min_vector_number: 10
cluster:
  enabled: false
"""


def test_schema_check_fails_on_the_guides_config_with_lines(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    ctx = make_stack().contexts["qdrant"]
    (tmp_path / "qdrant").mkdir()
    (tmp_path / "qdrant" / "config.yaml").write_text(GUIDE_CONFIG)
    results = check_rendered(ctx, tmp_path)
    found = {(r.line, r.detail.split(":")[0].split(" is ")[0]) for r in results}
    assert all(r.outcome == "failed" for r in results)
    assert found == {
        (4, "service.api_key holds a secret"),
        (7, "unknown key storage.raft_logs_path"),
        (10, "unknown key storage.performance.max_indexing_threads"),
        (11, "unknown key storage.wal_capacity_mb"),
        (13, "storage.optimizers.memmap_threshold_kb"),
        (14, "storage.optimizers.flush_interval_sec must be int, not '5'"),
        (15, "storage.optimizers.vacuum_min_vector_number must be at least 100, not 10"),
    }
    by_line = {r.line: r.detail for r in results}
    assert "did you mean storage.hnsw_index.max_indexing_threads?" in by_line[10]
    assert "did you mean storage.wal.wal_capacity_mb?" in by_line[11]
    assert "deprecated since Qdrant 1.15" in by_line[13]


def test_schema_check_reports_unparsable_yaml(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    (tmp_path / "qdrant").mkdir()
    (tmp_path / "qdrant" / "config.yaml").write_text("storage: [unclosed\n")
    (result,) = check_rendered(make_stack().contexts["qdrant"], tmp_path)
    assert result.outcome == "failed"


def test_schema_accepts_opaque_sections_and_rejects_bools_for_ints() -> None:
    text = "logger:\n  format: json\nstorage:\n  wal:\n    wal_segments_ahead: true\n"
    doc = parse_yaml(text, Path("config.yaml"), what="qdrant config")
    (problem,) = config_problems(doc.data, doc.lines)
    assert problem.key == "storage.wal.wal_segments_ahead"
    assert problem.line == 5
