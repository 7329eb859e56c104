"""benchmarks/apply.py's pure parts: reading apply's JSON, the targets and the report."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "apply.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_apply", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _apply_json(services: list[dict[str, Any]]) -> str:
    return json.dumps({"stack": "kb", "ok": True, "services": services})


def _entry(service: str, outcome: str, seconds: float, healthy: float | None = None) -> Any:
    entry: dict[str, Any] = {"service": service, "outcome": outcome, "seconds": seconds}
    if healthy is not None:
        entry["healthy_after_s"] = healthy
    return entry


def test_the_gate_figure_is_read_when_apply_reports_it(bench: ModuleType) -> None:
    text = _apply_json(
        [
            _entry("postgres", "created", 9.0, 6.5),
            _entry("unstructured", "created", 17.0, 15.9),
            _entry("redis", "unchanged", 0.0),
        ]
    )
    sample = bench.parse_apply_json(text, 19.0)
    assert sample.gated
    slowest = sample.slowest()
    assert (slowest.service, slowest.figure) == ("unstructured", 15.9)
    check = bench.cold_check("local", [sample])
    assert check.ok is True  # 19.0 / 15.9 = 1.19
    assert "1.19x" in check.measured and "healthy_after_s" in check.note


def test_without_the_gate_figure_seconds_stand_in_and_the_note_says_so(
    bench: ModuleType,
) -> None:
    text = _apply_json([_entry("postgres", "created", 7.0), _entry("nginx", "created", 11.0)])
    sample = bench.parse_apply_json(text, 60.0)
    assert not sample.gated
    check = bench.cold_check("local", [sample])
    assert check.ok is False  # 60 / 11 = 5.45
    assert "5.45x" in check.measured
    assert "no healthy_after_s" in check.note


def test_one_change_is_measured_against_the_changed_service(bench: ModuleType) -> None:
    fast = bench.parse_apply_json(
        _apply_json([_entry("postgres", "recreated", 5.0, 3.0), _entry("redis", "unchanged", 0)]),
        5.6,
    )
    slow = bench.parse_apply_json(_apply_json([_entry("postgres", "recreated", 5.0)]), 7.5)
    assert bench.change_check("local", [fast], "postgres").ok is True
    missed = bench.change_check("local", [slow], "postgres")
    assert missed.ok is False and "+2.50s" in missed.measured
    nothing = bench.change_check("local", [], "postgres")
    assert nothing.ok is None and nothing.measured == "not measured"


def test_noop_targets_against_the_peer_and_over_ssh(bench: ModuleType) -> None:
    ours = bench.Series("kbinfra", "local", bench.NOOP, [0.30, 0.20, 0.25])
    peer = bench.Series("pyinfra", "local", bench.NOOP, [1.25, 1.30, 1.20])
    check = bench.noop_peer_check(ours, peer)
    assert check.ok is True and check.measured.startswith("5.0x")
    assert bench.noop_peer_check(ours, None).ok is None
    ssh = bench.Series("kbinfra", "ssh://u@h:22", bench.NOOP, [0.6, 0.7, 0.65])
    assert bench.noop_ssh_check(ssh).ok is False


def test_the_report_puts_each_target_next_to_its_numbers(bench: ModuleType) -> None:
    cold = bench.parse_apply_json(_apply_json([_entry("qdrant", "created", 12.0, 10.0)]), 12.5)
    noop = bench.parse_apply_json(_apply_json([_entry("qdrant", "unchanged", 0.0)]), 0.3)
    change = bench.parse_apply_json(_apply_json([_entry("postgres", "recreated", 4.0)]), 4.5)
    runs = {"local": {bench.COLD: [cold], bench.NOOP: [noop], bench.CHANGE: [change]}}
    series = [
        bench.Series("kbinfra", "local", bench.COLD, [12.5]),
        bench.Series("kbinfra", "local", bench.NOOP, [0.3]),
        bench.Series("kbinfra", "local", bench.CHANGE, [4.5]),
        bench.Series("pyinfra", "local", bench.NOOP, [1.2]),
    ]
    checks = bench.target_checks(runs, series)
    assert [c.ok for c in checks] == [True, True, False]  # 1.2 / 0.3 = 4x < 5x
    report = bench.format_report(series, checks, "load average: 0.5")
    row = next(line for line in report.splitlines() if "pyinfra local" in line)
    assert row.split() == ["no-op", "apply", "pyinfra", "local", "1.20s", "1.20-1.20s", "1"]
    assert "pass cold apply, local: 1.25x" in report
    assert "MISS no-op vs pyinfra, local: 4.0x" in report
    assert "never asserted" in report


def test_kbinfra_is_compiled_as_pip_installs_it_even_without_bytecode_writes(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "benchpkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    assert bench.compile_package("benchpkg", env) == package
    compiled = {p.name.split(".")[0] for p in package.rglob("__pycache__/*.pyc")}
    assert compiled == {"__init__", "module"}
    assert bench.compile_package("no_such_benchmark_package", env) is None


def test_the_peer_publishes_on_free_ports_not_the_fixed_ones(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "peer-source"
    source.mkdir()
    workload = {
        "kbpeer": {
            "project": "kbpeer",
            "network": "kbpeer",
            "config_root": "/srv/kbpeer",
            "services": [
                {"name": "qdrant", "host_port": 16333, "vars": {}},
                {"name": "redis", "host_port": 16379, "vars": {"maxclients": 1}},
            ],
        }
    }
    (source / "workload.yaml").write_text(yaml.safe_dump(workload))
    free = iter([40001, 40002])
    monkeypatch.setattr(bench, "_free_port", lambda: next(free))

    peer = bench.Peer(source, tmp_path / "pyinfra", tmp_path / "work")

    written = yaml.safe_load(peer.workload_file.read_text())["kbpeer"]
    assert [s["host_port"] for s in written["services"]] == [40001, 40002]
    assert written["config_root"] == str(tmp_path / "work" / "config")
