"""The fit decision: does a profile's allocation fit the engine it is deployed to?"""

from __future__ import annotations

from typing import Any

import pytest

from kbinfra.capacity import (
    MIB,
    Demand,
    EngineCapacity,
    assess_fit,
    demands_of,
    shortfalls,
    stack_fit,
)
from kbinfra.errors import KbinfraError
from tests.conftest import PROFILES

# The test bed's machine: 2 CPUs, 25276510208 bytes of memory as `docker info` reports it.
TESTBED = EngineCapacity(cpus=2, memory_mb=25276510208 // MIB)
# The services the test bed has images for (no Grafana, no embedding service).
TESTBED_OFF = {"services": {"grafana": {"enabled": False}, "embeddings": {"enabled": False}}}


def test_engine_capacity_reads_ncpu_and_memtotal_in_mib() -> None:
    info = {"NCPU": 2, "MemTotal": 25276510208, "ServerVersion": "20.10.24"}
    assert EngineCapacity.from_info(info, where="local") == EngineCapacity(2, 24105)


@pytest.mark.parametrize(
    "info",
    [{}, {"NCPU": 2}, {"NCPU": 0, "MemTotal": 1 << 30}, {"NCPU": True, "MemTotal": 1 << 30},
     {"NCPU": "2", "MemTotal": 1 << 30}, {"NCPU": 2, "MemTotal": -1}],
)  # fmt: skip
def test_engine_capacity_refuses_what_it_cannot_read(info: dict[str, Any]) -> None:
    with pytest.raises(KbinfraError, match="NCPU") as raised:
        EngineCapacity.from_info(info, where="ssh://root@db1:22")
    assert raised.value.where == "ssh://root@db1:22"
    assert raised.value.fix is not None


def test_memory_fits_up_to_exactly_what_the_engine_has() -> None:
    engine = EngineCapacity(cpus=4, memory_mb=8192)
    exact = [Demand("postgres", 1, 4096), Demand("redis", 1, 4096)]
    assert shortfalls(exact, engine) == ()
    over = [Demand("postgres", 1, 4096), Demand("redis", 1, 4097)]
    (found,) = shortfalls(over, engine)
    assert "8.0 GiB of memory" in found and "0.0 GiB more" in found


def test_one_container_wider_than_the_engine_is_a_shortfall_naming_it() -> None:
    engine = EngineCapacity(cpus=2, memory_mb=65536)
    demands = [Demand("qdrant", 2, 1024), Demand("postgres", 16, 1024), Demand("redis", 4, 64)]
    (found,) = shortfalls(demands, engine)
    assert "2 services" in found
    assert "(postgres 16, redis 4)" in found
    assert "qdrant" not in found
    (alone,) = shortfalls([Demand("postgres", 3, 64)], engine)
    assert alone.startswith("1 service is given more CPUs than the engine's 2 (postgres 3)")


def test_cpus_handed_out_beyond_the_engine_in_total_only_warn() -> None:
    engine = EngineCapacity(cpus=2, memory_mb=65536)
    fit = assess_fit("mine", [Demand("a", 2, 1024), Demand("b", 1.5, 1024)], engine)
    assert fit.fits
    assert fit.shortfalls == ()
    (warning,) = fit.warnings
    assert "3.5 CPUs on an engine with 2" in warning


def test_the_largest_fitting_candidate_is_named_and_never_the_refused_profile() -> None:
    engine = EngineCapacity(cpus=4, memory_mb=10000)
    candidates = [
        ("small", [Demand("db", 1, 2000)]),
        ("medium", [Demand("db", 4, 9000)]),
        ("wide", [Demand("db", 8, 4000)]),  # fits in memory, not in CPUs
        ("big", [Demand("db", 2, 20000)]),
    ]
    fit = assess_fit("big", [Demand("db", 2, 20000)], engine, candidates)
    assert not fit.fits
    assert fit.fitting_profile == "medium"
    assert "profile medium" not in fit.refusal()
    assert "`profile: medium`" in fit.fix()
    assert "--allow-oversized-profile" in fit.fix()


def test_no_candidate_fits_says_so() -> None:
    engine = EngineCapacity(cpus=1, memory_mb=512)
    fit = assess_fit("big", [Demand("db", 2, 1024)], engine, [("small", [Demand("db", 1, 600)])])
    assert fit.fitting_profile is None
    assert "no built-in profile fits" in fit.fix()


def test_a_profile_that_fits_does_not_look_at_candidates() -> None:
    def never() -> Any:
        raise AssertionError("candidates were loaded for a profile that fits")
        yield

    fit = assess_fit("ok", [Demand("db", 1, 100)], EngineCapacity(2, 1000), never())
    assert fit.fits and fit.fitting_profile is None


@pytest.mark.parametrize("profile", PROFILES)
def test_demands_are_the_limits_the_containers_get(make_stack: Any, profile: str) -> None:
    stack = make_stack(profile)
    wanted = {d.service: (d.cpus, d.memory_mb) for d in demands_of(stack.services, stack.profile)}
    created = {name: (c.cpus, c.memory_mb) for name, c in stack.containers.items()}
    assert wanted == created


def test_large_on_the_test_bed_is_refused_and_minimum_named(make_stack: Any) -> None:
    fit = stack_fit(make_stack("large", TESTBED_OFF), TESTBED)
    assert not fit.fits
    assert fit.fitting_profile == "minimum"
    line = fit.refusal()
    assert "profile large does not fit the engine (2 CPUs, 23.5 GiB of memory)" in line
    assert "more than the engine has" in line
    assert "postgres 16" in line
    assert "\n" not in line + fit.fix()
    document = fit.as_json()
    assert document["fits"] is False
    assert document["engine"] == {"cpus": 2, "memory_mb": 24105}
    assert document["fitting_profile"] == "minimum"
    assert document["wanted"]["largest_cpus"] == 16


def test_minimum_fits_the_test_bed_with_its_services(make_stack: Any) -> None:
    fit = stack_fit(make_stack("minimum", TESTBED_OFF), TESTBED)
    assert fit.fits, fit.shortfalls
    assert fit.memory_mb <= TESTBED.memory_mb
