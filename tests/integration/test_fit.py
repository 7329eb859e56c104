"""plan and apply refuse a profile that does not fit the real engine they deploy to.

The test bed's engine is this machine (2 CPUs, 24 GB here): the ``large`` profile gives
PostgreSQL alone 16 CPUs and 64 GB. Nothing is deployed: the refusal comes first.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.stack_support import Deployment, new_deployment

if TYPE_CHECKING:
    import docker

    from tests.integration.testbed_support import Testbed

pytestmark = pytest.mark.integration


@pytest.fixture
def large_stack(tmp_path: Path, testbed: Testbed, docker_client: docker.DockerClient) -> Deployment:
    info = docker_client.info()
    if info["NCPU"] >= 16 and info["MemTotal"] >= 256 * 1024**3:
        pytest.skip("this engine is big enough for the large profile")
    deployment = new_deployment("local", tmp_path / "stack", testbed, testbed.images)
    deployment.edit(lambda data: data.update(profile="large"))
    return deployment


def _stack_containers(name: str) -> str:
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=kbinfra.stack={name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_plan_and_apply_refuse_large_on_a_small_engine(large_stack: Deployment) -> None:
    planned = large_stack.run("plan")
    assert planned.code == 2, planned.out + planned.err
    assert planned.out == ""
    (line,) = planned.err.strip().splitlines()
    assert "Traceback" not in line
    assert "profile large does not fit the engine" in line
    assert "more than the engine has" in line
    assert re.search(r"postgres 16\b", line), line
    fitting = re.search(r"`profile: (\w+)`", line)
    assert fitting is not None and fitting[1] in ("minimum", "recommended"), line
    assert "--allow-oversized-profile" in line

    applied = large_stack.run("apply", "--yes")
    assert applied.code == 2, applied.out + applied.err
    assert "profile large does not fit the engine" in applied.err
    assert _stack_containers(large_stack.name) == ""


def test_allow_oversized_profile_plans_with_a_warning_and_the_fit_in_json(
    large_stack: Deployment,
) -> None:
    planned = large_stack.run("plan", "--allow-oversized-profile", "--output", "json")
    assert planned.code == 3, planned.err
    assert "warning: profile large does not fit the engine" in planned.err
    assert "deploying it anyway" in planned.err
    fit = planned.json()["fit"]
    assert fit["profile"] == "large"
    assert fit["fits"] is False
    assert fit["fitting_profile"] in ("minimum", "recommended")
    assert fit["engine"]["cpus"] >= 1
    assert fit["wanted"]["memory_mb"] > fit["engine"]["memory_mb"] or fit["engine"]["cpus"] < 16
    assert fit["shortfalls"]


def test_minimum_fits_the_test_bed(tmp_path: Path, testbed: Testbed) -> None:
    deployment = new_deployment("local", tmp_path / "stack", testbed, testbed.images)
    planned = deployment.run("plan", "--output", "json")
    assert planned.code == 3, planned.err
    fit = planned.json()["fit"]
    assert fit["fits"] is True, fit["shortfalls"]
    assert "does not fit" not in planned.err
