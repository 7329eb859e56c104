"""Properties of rendering over many valid profiles: deterministic, within limits, no leaks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbinfra.render import render_stack
from kbinfra.services.postgres.service import MB
from kbinfra.services.postgres.service import SERVICE as POSTGRES
from kbinfra.stack import open_stack
from tests.conftest import edit_stack_file, write_stack_dir

GROUPS = ("qdrant", "postgres", "redis", "embeddings", "unstructured", "app", "monitoring")


@st.composite
def valid_profiles(draw: st.DrawFn) -> dict[str, Any]:
    """Profiles a user could write: every budget fits on the host.

    The embedding service needs room for the guide's three models (kbinfra refuses less with
    one line, tested in test_embeddings.py), so its budget starts at 4 GB here.
    """
    services = {
        group: {
            "cpus": draw(st.integers(1, 64)) / 4,
            "memory": f"{draw(st.integers(8 if group == 'embeddings' else 1, 64)) * 512}MB",
            "storage": f"{draw(st.integers(1, 500))}GB",
        }
        for group in GROUPS
    }
    memory = sum(int(s["memory"].removesuffix("MB")) for s in services.values())
    storage = sum(int(s["storage"].removesuffix("GB")) for s in services.values())
    return {
        "name": "random",
        "host": {
            "cpus": draw(st.integers(1, 128)),
            "memory": f"{memory + draw(st.integers(0, 65536))}MB",
            "storage": f"{storage + draw(st.integers(0, 1000))}GB",
            "disk": draw(st.sampled_from(["ssd", "nvme", "hdd"])),
        },
        "services": services,
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(profile=valid_profiles(), workload=st.sampled_from(["web", "oltp", "dw", "mixed"]))
def test_any_valid_profile_renders_the_same_bytes_twice_within_its_limits(
    tmp_path_factory: Any, profile: dict[str, Any], workload: str
) -> None:
    folder = write_stack_dir(tmp_path_factory.mktemp("stack"))
    profile_path = folder / "random.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    edit_stack_file(folder, {"profile": "random.yaml", "workload": workload})
    stack = open_stack(folder)

    first, second = render_stack(stack), render_stack(open_stack(Path(folder)))
    assert [(f.path, f.text, f.mode) for f in first] == [(f.path, f.text, f.mode) for f in second]

    for file in first:
        if not file.secret:
            assert "TESTSECRET" not in file.text, file.path

    ctx = stack.contexts["postgres"]
    tune = POSTGRES.tuning(ctx)
    memory_kb = ctx.resources.memory_mb * MB
    assert tune.shared_buffers_kb + tune.maintenance_work_mem_kb <= memory_kb
    assert tune.effective_cache_size_kb <= memory_kb
    for name, context in stack.contexts.items():
        spec = stack.services[name].container(context)
        assert spec.memory_mb <= profile_memory_mb(profile), name
        assert all(p.host_ip == "127.0.0.1" for p in spec.ports) or name == "nginx"


def profile_memory_mb(profile: dict[str, Any]) -> int:
    return int(profile["host"]["memory"].removesuffix("MB"))
