"""PGTune's formulas, worked by hand, and the rendered PostgreSQL files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.render import render_service
from kbinfra.service import ServiceContext
from kbinfra.services.postgres.render_check import check_rendered, postgres_bin_dirs
from kbinfra.services.postgres.service import (
    GB,
    MB,
    SERVICE,
    expected_settings,
    format_kb,
    major_version,
    normalise_setting,
    pgtune,
)
from kbinfra.stack import Stack

Rendered = Callable[..., tuple[ServiceContext, Path]]
EditOnce = Callable[[Path, str, str], int]


def test_pgtune_web_8gb_2cpu_ssd_matches_hand_calculation() -> None:
    # RAM 8 GB = 8388608 kB. shared_buffers = 2097152 kB (2GB); cache = 6GB;
    # maintenance = 524288 kB (512MB); wal_buffers = 3% of 2GB = 62914 kB → capped 16MB.
    # Fewer than 4 CPUs: no parallel settings, W = 8.
    # work_mem = (8388608 - 2097152) / ((200 + 8) * 3) = 6291456 / 624 = 10082 kB.
    tune = pgtune(memory_kb=8 * GB, cpus=2, workload="web", disk="ssd", version=17)
    assert tune.shared_buffers_kb == 2 * GB
    assert tune.effective_cache_size_kb == 6 * GB
    assert tune.maintenance_work_mem_kb == 512 * MB
    assert tune.wal_buffers_kb == 16 * MB
    assert tune.work_mem_kb == 10082
    assert tune.max_connections == 200
    assert tune.max_worker_processes is None
    assert tune.random_page_cost == 1.1
    assert tune.effective_io_concurrency == 200
    assert tune.huge_pages == "try"
    assert (tune.min_wal_size_kb, tune.max_wal_size_kb) == (1 * GB, 4 * GB)
    assert tune.wal_compression == "lz4"
    assert tune.jit == "off"


def test_pgtune_oltp_64gb_16cpu_nvme_parallel_settings() -> None:
    # shared_buffers 16GB; parallel: W = 16, gather = min(ceil(16/2), 4) = 4.
    # work_mem = (67108864 - 16777216) / ((300 + 16) * 3) = 50331648 / 948 = 53092 kB.
    tune = pgtune(memory_kb=64 * GB, cpus=16, workload="oltp", disk="nvme", version=17)
    assert tune.max_worker_processes == 16
    assert tune.max_parallel_workers == 16
    assert tune.max_parallel_workers_per_gather == 4
    assert tune.max_parallel_maintenance_workers == 4
    assert tune.work_mem_kb == 53092
    assert tune.effective_io_concurrency == 1000
    assert tune.maintenance_work_mem_kb == 4 * GB
    assert (tune.min_wal_size_kb, tune.max_wal_size_kb) == (2 * GB, 8 * GB)


def test_pgtune_dw_halves_work_mem_and_caps_maintenance_at_8gb() -> None:
    # dw: maintenance = RAM/8 = 16GB → capped at 8GB; work_mem halved.
    # 4 CPUs: parallel settings apply, so W = 4:
    # work_mem = (134217728 - 33554432) / ((40 + 4) * 3) / 2 = 100663296 / 132 / 2 = 381300 kB.
    tune = pgtune(memory_kb=128 * GB, cpus=4, workload="dw", disk="hdd", version=14)
    assert tune.maintenance_work_mem_kb == 8 * GB
    assert tune.work_mem_kb == 381300
    assert tune.random_page_cost == 4.0
    assert tune.effective_io_concurrency == 2
    assert tune.wal_compression == "on"
    assert tune.jit is None
    assert tune.default_statistics_target == 500


def test_pgtune_small_memory_floors_work_mem_at_4mb() -> None:
    tune = pgtune(memory_kb=1 * GB, cpus=1, workload="mixed", disk="ssd", version=16)
    assert tune.work_mem_kb == 4 * MB
    assert tune.huge_pages == "off"


def test_format_kb_uses_largest_exact_unit() -> None:
    assert format_kb(2 * GB) == "2GB"
    assert format_kb(1536 * MB) == "1536MB"
    assert format_kb(10082) == "10082kB"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("postgres:17.6-bookworm", 17),
        ("registry.local:5000/mirror/postgres:16", 16),
        ("kbinfra-testbed/postgres:15-abc123", 15),
    ],
)
def test_major_version_from_tag(image: str, expected: int) -> None:
    assert major_version(image, None) == expected


def test_major_version_needs_a_numeric_tag_or_override() -> None:
    with pytest.raises(SpecError, match=r"set services\.postgres\.version"):
        major_version("registry.local:5000/postgres:latest", None)
    assert major_version("postgres:latest", 16) == 16


def test_tcp_logins_only_from_the_stack_network_and_only_as_named_roles(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum", {"services": {"postgres": {"user": "app"}}})
    files = {f.path: f.text for f in render_service(SERVICE, stack.contexts["postgres"])}
    rules = [
        line.split()
        for line in files["postgres/pg_hba.conf"].splitlines()
        if line and not line.startswith("#")
    ]
    tcp = [rule for rule in rules if rule[0] == "host"]
    roles = "app,kbinfra_monitor,kbinfra_monitor_a,kbinfra_monitor_b,+kbinfra_bench"
    assert tcp == [["host", "all", roles, "samenet", "scram-sha-256"]]
    assert [rule[0] for rule in rules] == ["local", "host"]  # no 0.0.0.0/0, no ::/0


def test_rendered_files_are_scram_only_and_use_pg13_column_names(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("recommended")
    files = {f.path: f.text for f in render_service(SERVICE, stack.contexts["postgres"])}
    hba = files["postgres/pg_hba.conf"]
    methods = {line.split()[-1] for line in hba.splitlines() if line and not line.startswith("#")}
    assert methods == {"scram-sha-256"}
    sql = files["postgres/initdb/10-monitoring.sql"]
    assert "total_exec_time" in sql
    assert "mean_time" not in sql.replace("mean_exec_time", "")
    assert "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" in sql
    assert "indexrelname" in sql
    conf = files["postgres/postgresql.conf"]
    assert "shared_buffers = 2GB" in conf  # recommended gives PostgreSQL 8 GB
    assert "shared_preload_libraries = 'pg_stat_statements'" in conf


def test_container_keeps_password_out_of_env_values(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum")
    spec = SERVICE.container(stack.contexts["postgres"])
    assert spec.secret_env == {}  # the superuser's password is a file: POSTGRES_PASSWORD_FILE
    assert spec.env["POSTGRES_PASSWORD_FILE"] == "/etc/postgresql/roles/superuser"
    assert all("TESTSECRET" not in value for value in spec.env.values())
    assert [(p.host_ip, p.host_port) for p in spec.ports] == [("127.0.0.1", 5432)]


# --- check_rendered: the real postgres ------------------------------------------------------


def test_normalise_setting_reads_postgres_base_units() -> None:
    # postgres -C prints shared_buffers in 8 kB pages and max_wal_size in MB.
    assert normalise_setting("shared_buffers", "262144") == "2097152kB"
    assert normalise_setting("shared_buffers", "2GB") == "2097152kB"
    assert normalise_setting("wal_buffers", "2048") == "16384kB"
    assert normalise_setting("work_mem", "10082kB") == "10082kB"
    assert normalise_setting("max_wal_size", "4096") == "4194304kB"
    assert normalise_setting("random_page_cost", "1.1") == "1.1"
    assert normalise_setting("max_connections", "200") == "200.0"
    assert normalise_setting("jit", "'off'") == "off"


def test_expected_settings_skip_what_is_not_rendered() -> None:
    tune = pgtune(memory_kb=8 * GB, cpus=2, workload="web", disk="ssd", version=17)
    expected = expected_settings(tune)
    assert expected["shared_buffers"] == "2097152kB"
    assert expected["work_mem"] == "10082kB"
    assert "max_worker_processes" not in expected  # fewer than 4 CPUs: not rendered


@pytest.fixture
def postgres_tool(require_tool: Callable[..., str]) -> str:
    return require_tool("postgres", *postgres_bin_dirs())


@pytest.mark.validators
@pytest.mark.parametrize("profile", ["minimum", "recommended", "large"])
def test_real_postgres_reads_back_every_profile(
    rendered: Rendered, postgres_tool: str, profile: str
) -> None:
    ctx, out = rendered("postgres", profile)
    results = check_rendered(ctx, out)
    assert [(r.path, r.outcome) for r in results] == [
        ("postgres/postgresql.conf", "ok"),
        ("postgres/pg_hba.conf", "ok"),
    ], results
    count = len(expected_settings(SERVICE.tuning(ctx)))
    assert f"read all {count} tuned settings" in results[0].detail
    assert "refused psql without a password" in results[1].detail


@pytest.mark.validators
def test_real_postgres_names_an_unknown_parameter_and_its_line(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    ctx, out = rendered("postgres")
    line = edit_once(out / "postgres/postgresql.conf", "shared_buffers =", "shared_bufers =")
    (result,) = check_rendered(ctx, out)
    assert (result.path, result.outcome, result.line) == (
        "postgres/postgresql.conf",
        "failed",
        line,
    )
    assert 'unrecognized configuration parameter "shared_bufers"' in result.detail


@pytest.mark.validators
def test_real_postgres_names_an_invalid_value_and_its_line(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    ctx, out = rendered("postgres")
    line = edit_once(
        out / "postgres/postgresql.conf", "wal_compression = lz4", "wal_compression = lz5"
    )
    (result,) = check_rendered(ctx, out)
    assert (result.outcome, result.line) == ("failed", line)
    assert 'invalid value for parameter "wal_compression": "lz5"' in result.detail
    assert "Available values" in result.detail  # PostgreSQL's HINT


@pytest.mark.validators
def test_real_postgres_catches_a_later_line_overriding_the_tuning(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    ctx, out = rendered("postgres")
    conf = out / "postgres/postgresql.conf"
    conf.write_text(conf.read_text() + "work_mem = 1MB\n")
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert result.line == len(conf.read_text().splitlines())
    assert result.detail.startswith("PostgreSQL reads work_mem as 1024kB, kbinfra tuned it to")


@pytest.mark.validators
def test_real_postgres_start_catches_a_missing_preload_library(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    # postgres -C does not load libraries; only the real start finds this one.
    ctx, out = rendered("postgres")
    conf = out / "postgres/postgresql.conf"
    line = edit_once(conf, "'pg_stat_statements'", "'pg_stat_statement'")
    conf_result, start_result = check_rendered(ctx, out)
    assert conf_result.outcome == "ok"
    assert (start_result.path, start_result.outcome) == ("postgres/postgresql.conf", "failed")
    assert start_result.detail.startswith('could not access file "pg_stat_statement"')
    assert start_result.line == line


@pytest.mark.validators
def test_real_postgres_reports_a_bad_hba_line(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    ctx, out = rendered("postgres")
    line = edit_once(out / "postgres/pg_hba.conf", "samenet   scram-sha-256", "samenet   scram")
    _, result = check_rendered(ctx, out)
    assert (result.path, result.outcome, result.line) == ("postgres/pg_hba.conf", "failed", line)
    assert 'invalid authentication method "scram"' in result.detail


@pytest.mark.validators
def test_real_postgres_fails_an_hba_that_trusts(
    rendered: Rendered, edit_once: EditOnce, postgres_tool: str
) -> None:
    ctx, out = rendered("postgres")
    edit_once(
        out / "postgres/pg_hba.conf",
        "local   all       all               scram-sha-256",
        "local all all trust",
    )
    _, result = check_rendered(ctx, out)
    assert (result.path, result.outcome) == ("postgres/pg_hba.conf", "failed")
    assert "without a password" in result.detail
