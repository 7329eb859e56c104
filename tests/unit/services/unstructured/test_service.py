"""Unstructured API: its own host port, the guide's strategies in API terms, upstream env only."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kbinfra.errors import SpecError
from kbinfra.registry import get_service
from kbinfra.render import render_service, render_stack, write_tree
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.unstructured.render_check import check_rendered
from kbinfra.services.unstructured.service import (
    SERVICE,
    STRATEGIES_FILE,
    UnstructuredSettings,
    client_address,
    unstructured_tuning,
)
from kbinfra.stack import Stack, open_stack
from tests.conftest import FIXTURES, write_stack_dir

#: Every variable the upstream image reads (scripts/app-start.sh, prepline_general/api), plus
#: the OpenMP ones that torch, OpenBLAS and Tesseract read.
UPSTREAM_ENV = {
    "UNSTRUCTURED_API_KEY",
    "UNSTRUCTURED_MEMORY_FREE_MINIMUM_MB",
    "UNSTRUCTURED_PARALLEL_MODE_ENABLED",
    "UNSTRUCTURED_PARALLEL_MODE_URL",
    "UNSTRUCTURED_PARALLEL_MODE_THREADS",
    "UNSTRUCTURED_PARALLEL_MODE_SPLIT_SIZE",
    "MAX_LIFETIME_SECONDS",
    "OMP_NUM_THREADS",
    "OMP_THREAD_LIMIT",
}


def strategies(stack: Stack) -> tuple[str, dict[str, Any]]:
    files = {f.path: f.text for f in render_service(SERVICE, stack.contexts["unstructured"])}
    return files[STRATEGIES_FILE], json.loads(files[STRATEGIES_FILE])


def test_tuning_worked_by_hand() -> None:
    # minimum: 1 CPU, 4096 MiB. (4096 - 2048) // 1024 = 2 documents fit; 1 core → 1.
    tune = unstructured_tuning(cpus=1, memory_mb=4096)
    assert (tune.concurrency, tune.threads_per_document, tune.memory_free_minimum_mb) == (
        1,
        1,
        1024,
    )
    # recommended: 2 CPUs, 8192 MiB: 6 fit, 2 cores → 2 documents, 1 thread each.
    tune = unstructured_tuning(cpus=2, memory_mb=8192)
    assert (tune.concurrency, tune.threads_per_document) == (2, 1)
    # large: 8 CPUs, 16384 MiB: 14 fit, 8 cores → 8 documents.
    assert unstructured_tuning(cpus=8, memory_mb=16384).concurrency == 8
    # memory-bound: 8 CPUs, 4096 MiB → 2 documents, 4 threads each.
    tune = unstructured_tuning(cpus=8, memory_mb=4096)
    assert (tune.concurrency, tune.threads_per_document) == (2, 4)
    # never below one document, and overrides win.
    assert unstructured_tuning(cpus=0.5, memory_mb=1024).concurrency == 1
    tune = unstructured_tuning(cpus=8, memory_mb=16384, concurrency=2, memory_free_minimum_mb=0)
    assert (tune.concurrency, tune.threads_per_document, tune.memory_free_minimum_mb) == (2, 4, 0)


def test_port_no_longer_clashes_with_the_embedding_service(
    make_stack: Callable[..., Stack],
) -> None:
    # The guide published Unstructured on 8001, the embedding service's port.
    assert SERVICE.default_host_port == 8002
    assert SERVICE.default_host_port != get_service("embeddings").default_host_port
    stack = make_stack("minimum")
    ports = {
        name: [p.host_port for p in service.container(stack.contexts[name]).ports]
        for name, service in stack.services.items()
    }
    # behind its key gate, nginx publishes the API's host port (on loopback)
    assert ports["unstructured"] == []
    assert 8002 in ports["nginx"]
    assert ports["embeddings"] == [8001]
    alone = make_stack("minimum", {"services": {"nginx": {"enabled": False}}})
    spec = SERVICE.container(alone.contexts["unstructured"])
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 8002, 8000)
    ]
    with pytest.raises(SpecError, match="both use host port 8001"):
        make_stack("minimum", {"services": {"unstructured": {"port": 8001}}})


def test_strategies_are_the_guides_in_api_field_names(make_stack: Callable[..., Stack]) -> None:
    text, document = strategies(make_stack("recommended"))
    assert text == json.dumps(document, sort_keys=True, indent=2) + "\n"
    pdf, docx, default = (document["strategies"][k] for k in ("pdf", "docx", "default"))
    assert pdf == {
        "strategy": "hi_res",
        "hi_res_model_name": "yolox",
        "pdf_infer_table_structure": True,
        "skip_infer_table_types": [],
        "chunking_strategy": "by_title",
        "max_characters": 10000,
        "include_page_breaks": True,
    }
    assert docx["strategy"] == "hi_res"
    assert docx["include_page_breaks"] is False
    assert default == {"strategy": "auto", "pdf_infer_table_structure": False}
    assert "infer_table_structure" not in text.replace("pdf_infer_table_structure", "")
    assert document["limits"] == {
        "concurrent_documents": 2,
        "max_file_size_bytes": 50 * 1024 * 1024,
        "processing_timeout_s": 300,
    }
    # its clients on the stack network go through nginx, the API's key gate
    assert document["api"]["stack_network_url"] == "http://nginx:8002/general/v0/general"
    assert document["api"]["loopback_url"] == "http://127.0.0.1:8002/general/v0/general"
    assert document["api"]["api_key_header"] == "unstructured-api-key"


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (
            {"strategy": "hi_res", "infer_table_structure": True},
            "did you mean 'pdf_infer_table_structure'",
        ),
        ({"strategy": "accurate"}, "strategy"),
        ({"strategy": "fast", "max_characters": 500}, "need chunking_strategy"),
        (
            {
                "strategy": "fast",
                "chunking_strategy": "basic",
                "max_characters": 100,
                "overlap": 200,
            },
            "overlap \\(200\\) exceeds max_characters \\(100\\)",
        ),
        ({"strategy": "fast", "hi_res_model_name": "yolox"}, "hi_res or auto only"),
    ],
)
def test_bad_strategies_are_refused(
    make_stack: Callable[..., Stack], strategy: dict[str, object], message: str
) -> None:
    overrides = {"services": {"unstructured": {"strategies": {"default": strategy}}}}
    with pytest.raises(SpecError, match=message):
        make_stack("minimum", overrides)


def test_strategies_need_a_default_and_extension_keys() -> None:
    # (the stack fixture deep-merges overrides into the defaults, so test the model itself)
    with pytest.raises(ValidationError, match="needs a 'default' entry"):
        UnstructuredSettings(strategies={"pdf": {"strategy": "fast"}})
    with pytest.raises(ValidationError, match="not a file extension"):
        UnstructuredSettings(
            strategies={"default": {"strategy": "auto"}, ".PDF": {"strategy": "fast"}}
        )
    settings = UnstructuredSettings(strategies={"default": {"strategy": "fast"}})
    assert list(settings.strategies) == ["default"]


def test_container_sets_only_env_the_upstream_image_reads(
    make_stack: Callable[..., Stack],
) -> None:
    spec = SERVICE.container(make_stack("large").contexts["unstructured"])
    assert set(spec.env) | set(spec.secret_env) <= UPSTREAM_ENV
    # behind nginx's key gate the API holds its own key, never the clients'
    assert spec.secret_env == {"UNSTRUCTURED_API_KEY": "unstructured_upstream_key"}
    assert all("TESTSECRET" not in value for value in spec.env.values())
    assert spec.env["UNSTRUCTURED_MEMORY_FREE_MINIMUM_MB"] == "1024"
    assert spec.env["OMP_NUM_THREADS"] == "1"  # 8 cores, 8 documents
    assert "UNSTRUCTURED_PARALLEL_MODE_ENABLED" not in spec.env
    assert not spec.volumes  # nothing upstream reads /tmp/unstructured
    assert (spec.cpus, spec.memory_mb) == (8.0, 16384)


def test_parallel_mode_and_lifetime_when_asked(make_stack: Callable[..., Stack]) -> None:
    settings = {"parallel_mode": True, "parallel_split_pages": 4, "max_lifetime_s": 86400}
    stack = make_stack("recommended", {"services": {"unstructured": settings}})
    env = SERVICE.container(stack.contexts["unstructured"]).env
    assert env["UNSTRUCTURED_PARALLEL_MODE_ENABLED"] == "true"
    assert env["UNSTRUCTURED_PARALLEL_MODE_URL"] == "http://127.0.0.1:8000/general/v0/general"
    assert env["UNSTRUCTURED_PARALLEL_MODE_THREADS"] == "2"
    assert env["UNSTRUCTURED_PARALLEL_MODE_SPLIT_SIZE"] == "4"
    assert env["MAX_LIFETIME_SECONDS"] == "86400"


def test_health_check_uses_python_the_image_has(make_stack: Callable[..., Stack]) -> None:
    check = SERVICE.container(make_stack().contexts["unstructured"]).healthcheck
    assert check is not None
    assert check.test[:3] == ["CMD", "python3", "-c"]
    assert "urllib.request" in check.test[3]
    assert "http://127.0.0.1:8000/healthcheck" in check.test[3]
    assert "requests" not in check.test[3].replace("urllib.request", "")


def test_check_rendered_validates_the_strategies_file(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack()
    out = tmp_path / "out"
    write_tree(render_stack(stack), out)
    ctx = stack.contexts["unstructured"]
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "ok"

    path = out / STRATEGIES_FILE
    text = path.read_text().replace('"strategy": "hi_res"', '"strategy": "accurate"', 1)
    path.write_text(text)
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert result.detail.startswith("strategies.docx.strategy:")
    assert result.line is not None
    assert '"strategy": "accurate"' in text.splitlines()[result.line - 1]


@pytest.mark.parametrize(
    "where",
    [
        {"overrides": {"services": {"nginx": {"enabled": False}}}},
        {"nodes_file": FIXTURES / "swarm" / "nodes.yaml"},
    ],
    ids=["without-nginx", "swarm"],
)
def test_without_a_key_gate_the_api_checks_the_clients_key_itself(
    tmp_path: Path, where: dict[str, Any]
) -> None:
    stack = open_stack(write_stack_dir(tmp_path / "kb", **where))
    ctx = stack.contexts["unstructured"]
    assert not gated(ctx)
    spec = SERVICE.container(ctx)
    assert spec.secret_env == {"UNSTRUCTURED_API_KEY": "unstructured_api_key"}
    assert SERVICE.routes(ctx)[0].gate is None
    assert client_address(ctx) == "unstructured:8000"


def test_behind_the_gate_the_route_accepts_both_client_keys_during_a_rotation(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    ctx = stack.contexts["unstructured"]
    assert gated(ctx) and client_address(ctx) == "nginx:8002"
    (route,) = SERVICE.routes(ctx)
    assert route.gate is not None
    (grant,) = route.gate.grants
    assert grant.accepted == (ctx.secrets["unstructured_api_key"],)
    assert grant.upstream_key == ctx.secrets["unstructured_upstream_key"]
    new = "new-client-key-0123456789"
    rotating = dataclasses.replace(stack, overlap={"unstructured_api_key": new})
    (route,) = SERVICE.routes(rotating.contexts["unstructured"])
    assert route.gate is not None
    assert route.gate.grants[0].accepted == (ctx.secrets["unstructured_api_key"], new)
