"""The embedding service's configuration: sizing worked by hand, offline models, config.json."""

from __future__ import annotations

import dataclasses
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kbinfra import __version__
from kbinfra.errors import SpecError
from kbinfra.render import render_service, render_stack, write_tree
from kbinfra.service_kit.dns_cache import DNS_CACHE_S
from kbinfra.service_kit.healthchecks import python_http_probe
from kbinfra.services.embeddings.render_check import check_rendered
from kbinfra.services.embeddings.service import (
    CONFIG_FILE,
    DEFAULT_MODELS,
    KEYS_FILE,
    SERVICE,
    EmbeddingModel,
    EmbeddingsSettings,
    _clamp_pow2,
    embeddings_tuning,
)
from kbinfra.stack import Stack, open_stack
from kbinfra.validation import free_port
from tests.conftest import FIXTURES, fixed_secret, write_stack_dir

MODELS = [EmbeddingModel.model_validate(m) for m in DEFAULT_MODELS]


def config(stack: Stack) -> tuple[str, dict[str, Any]]:
    files = {f.path: f.text for f in render_service(SERVICE, stack.contexts["embeddings"])}
    return files[CONFIG_FILE], json.loads(files[CONFIG_FILE])


def test_guides_three_models_are_the_default() -> None:
    settings = EmbeddingsSettings()
    assert [(m.name, m.dimension, m.max_seq_length) for m in settings.models] == [
        ("all-MiniLM-L6-v2", 384, 256),
        ("all-mpnet-base-v2", 768, 384),
        ("multi-qa-mpnet-base-dot-v1", 768, 512),
    ]
    assert settings.default_model == "all-MiniLM-L6-v2"
    assert settings.device == "auto"
    assert SERVICE.default_image == f"kbinfra/embeddings:{__version__}"


def test_cpu_tuning_worked_by_hand() -> None:
    # Models 120 + 550 + 550 = 1220 MiB; the longest sequence (512 tokens x 32 KiB) = 16 MiB.
    # One process; torch uses every core for each batch.
    # minimum: 2 CPUs, 4096 MiB: batch (4096 - 600 - 1220) / 16 = 142 → 128 → capped at 64.
    tune = embeddings_tuning(cpus=2, memory_mb=4096, models=MODELS, device="auto")
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (1, 2, 64)
    # recommended: 4 CPUs, 16384 MiB → 1 worker, 4 threads, batch capped at 64.
    tune = embeddings_tuning(cpus=4, memory_mb=16384, models=MODELS, device="cpu")
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (1, 4, 64)
    # large: 16 CPUs, 32768 MiB → 1 worker, 16 threads.
    tune = embeddings_tuning(cpus=16, memory_mb=32768, models=MODELS, device="cpu")
    assert (tune.workers, tune.torch_threads) == (1, 16)
    # An image of your own that forks: 3 workers share 16 cores (5 threads each) and the
    # memory: batch (8192 / 3 - 1820) / 16 = 56.9 → 32.
    tune = embeddings_tuning(cpus=16, memory_mb=8192, models=MODELS, device="cpu", workers=3)
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (3, 5, 32)


def test_one_small_model_batches_by_its_own_length() -> None:
    # MiniLM alone: 120 MiB, 256 tokens → 8 MiB a sequence. 2 CPUs, 1024 MiB:
    # 1024 // (600 + 120 + 256) = 1 worker; batch (1024 - 720) / 8 = 38 → 32.
    tune = embeddings_tuning(cpus=2, memory_mb=1024, models=MODELS[:1], device="cpu")
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (1, 2, 32)


def test_cuda_tuning_uses_one_worker() -> None:
    tune = embeddings_tuning(cpus=4, memory_mb=16384, models=MODELS, device="cuda")
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (1, 4, 128)


def test_overrides_win() -> None:
    tune = embeddings_tuning(
        cpus=8, memory_mb=16384, models=MODELS, device="cpu", workers=1, batch_size=16
    )
    assert (tune.workers, tune.torch_threads, tune.batch_size) == (1, 8, 16)


def test_too_little_memory_for_the_models_is_one_clear_error() -> None:
    # 600 + 1220 + 8 x 16 = 1948 MiB at least.
    with pytest.raises(SpecError, match="1 worker\\(s\\) need at least 1948 MiB"):
        embeddings_tuning(cpus=2, memory_mb=1900, models=MODELS, device="cpu")
    with pytest.raises(SpecError, match="4 worker\\(s\\) need at least 7792 MiB"):
        embeddings_tuning(cpus=8, memory_mb=4096, models=MODELS, device="cpu", workers=4)


@pytest.mark.parametrize(
    ("value", "expected"), [(142.2, 64), (56.9, 32), (9.5, 8), (3.0, 8), (0.5, 8)]
)
def test_clamp_pow2(value: float, expected: int) -> None:
    assert _clamp_pow2(value, 8, 64) == expected


def test_default_model_must_be_served(make_stack: Callable[..., Stack]) -> None:
    with pytest.raises(SpecError, match="default_model 'e5-large' is not in models"):
        make_stack("minimum", {"services": {"embeddings": {"default_model": "e5-large"}}})
    twice = [DEFAULT_MODELS[0], DEFAULT_MODELS[0]]
    with pytest.raises(ValidationError, match="more than once"):
        EmbeddingsSettings(models=twice)
    with pytest.raises(SpecError, match="device"):
        make_stack("minimum", {"services": {"embeddings": {"device": "gpu"}}})


def test_rendered_config_is_sorted_and_complete(make_stack: Callable[..., Stack]) -> None:
    text, document = config(make_stack("recommended"))
    assert text == json.dumps(document, sort_keys=True, indent=2) + "\n"
    assert document["models"]["all-mpnet-base-v2"] == {
        "dimension": 768,
        "max_seq_length": 384,
        "memory_mb": 550,
        "path": "/models/all-mpnet-base-v2",
    }
    assert document["default_model"] == "all-MiniLM-L6-v2"
    assert (document["workers"], document["torch_threads"], document["batch_size"]) == (1, 4, 64)
    assert document["offline"] is True
    assert document["half_precision_on_cuda"] is True
    assert document["api_key"] == {
        "env": "EMBEDDINGS_API_KEY",
        "file": "/etc/kbinfra/embeddings/keys/api_keys",
        "header": "X-API-Key",
        "required": True,
    }
    assert "TESTSECRET" not in text


def test_container_never_downloads_models(make_stack: Callable[..., Stack]) -> None:
    spec = SERVICE.container(make_stack("minimum").contexts["embeddings"])
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["TRANSFORMERS_OFFLINE"] == "1"
    assert spec.env["OMP_NUM_THREADS"] == "2"
    assert [(v.volume, v.target, v.data) for v in spec.volumes] == [
        ("kb-embeddings-models", "/models", True)
    ]
    assert [(f.source, f.target, f.uid) for f in spec.files] == [
        (CONFIG_FILE, "/etc/kbinfra/embeddings/config.json", 0),
        (KEYS_FILE, "/etc/kbinfra/embeddings/keys/api_keys", 10001),
    ]
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 8001, 8001)
    ]
    # the key is a file for the service's user, never an env var `docker inspect` shows
    assert spec.secret_env == {}
    assert all("TESTSECRET" not in value for value in spec.env.values())


def keys_file(stack: Stack) -> Any:
    return next(f for f in stack.rendered if f.path == KEYS_FILE)


def test_the_keys_file_holds_the_key_and_during_a_rotation_the_other_one(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    key = stack.secrets["embeddings_api_key"]
    rendered = keys_file(stack)
    assert (rendered.text, rendered.mode, rendered.secret) == (f"{key}\n", 0o600, True)
    other = fixed_secret("embeddings_api_key-next")
    moved = dataclasses.replace(
        stack,
        secrets={**stack.secrets, "embeddings_api_key": other},
        overlap={"embeddings_api_key": key},
    )
    assert keys_file(moved).text == "".join(f"{k}\n" for k in sorted((key, other)))
    added = dataclasses.replace(stack, overlap={"embeddings_api_key": other})
    # the same file whichever value clients hold: on a Swarm, no task replaced for it
    assert keys_file(added).text == keys_file(moved).text
    # the app tier, a client, holds the one value clients use
    assert moved.contexts["embeddings"].secrets["embeddings_api_key"] == other


def test_on_a_swarm_it_drains_for_as_long_as_nginx_keeps_a_dns_answer(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    local = SERVICE.config(make_stack("minimum").contexts["embeddings"])
    assert local.drain_s == 0  # one host: apply replaces it stop-first, no DNS flip to wait out
    folder = write_stack_dir(tmp_path / "swarm", nodes_file=FIXTURES / "swarm" / "nodes.yaml")
    swarm = SERVICE.config(open_stack(folder).contexts["embeddings"])
    assert swarm.drain_s == DNS_CACHE_S == 10


def test_a_change_of_the_keys_file_alone_is_reloaded_in_place(
    make_stack: Callable[..., Stack],
) -> None:
    reload = SERVICE.container(make_stack("minimum").contexts["embeddings"]).reload
    assert reload is not None
    assert tuple(reload.files) == (KEYS_FILE,)
    assert tuple(reload.test) == ("test", "-s", "/etc/kbinfra/embeddings/keys/api_keys")
    assert tuple(reload.command) == ("python", "/app/reload_keys.py")


def test_api_key_can_be_switched_off(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"embeddings": {"require_api_key": False}}})
    spec = SERVICE.container(stack.contexts["embeddings"])
    assert (spec.secret_env, spec.reload) == ({}, None)
    assert [f.source for f in spec.files] == [CONFIG_FILE]
    assert KEYS_FILE not in {f.path for f in stack.rendered}
    assert config(stack)[1]["api_key"]["required"] is False
    assert config(stack)[1]["api_key"]["file"] is None


def test_health_check_uses_only_the_standard_library(make_stack: Callable[..., Stack]) -> None:
    check = SERVICE.container(make_stack().contexts["embeddings"]).healthcheck
    assert check is not None
    assert check.test[:3] == ["CMD", "python3", "-c"]
    assert "import urllib.request" in check.test[3]
    assert "http://127.0.0.1:8001/health" in check.test[3]
    assert "import requests" not in check.test[3]


def test_prometheus_scrapes_the_metrics_endpoint(make_stack: Callable[..., Stack]) -> None:
    (target,) = SERVICE.scrape_targets(make_stack().contexts["embeddings"])
    assert (target.job, target.address, target.path) == (
        "embeddings",
        "embeddings:8001",
        "/metrics",
    )


def test_check_rendered_validates_config_against_the_model(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack()
    out = tmp_path / "out"
    write_tree(render_stack(stack), out)
    ctx = stack.contexts["embeddings"]
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "ok"

    path = out / CONFIG_FILE
    text = path.read_text().replace('"default_model": "all-MiniLM-L6-v2"', '"default_model": "x"')
    path.write_text(text)
    (result,) = check_rendered(ctx, out)
    assert result.outcome == "failed"
    assert "default_model 'x' is not in models" in result.detail

    text = text.replace('"workers": 1', '"workers": 0')
    path.write_text(text)
    (result,) = check_rendered(ctx, out)
    assert result.detail.startswith("workers:")
    assert result.line is not None
    assert '"workers": 0' in text.splitlines()[result.line - 1]


def test_health_probe_really_runs_with_the_standard_library() -> None:
    """The probe's Python exits 0 on a 200 and non-zero when nothing answers."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:

        def probe(path: str) -> int:
            _, _, flag, code = python_http_probe(f"http://127.0.0.1:{port}{path}", timeout_s=2)
            return subprocess.run([sys.executable, "-I", flag, code], check=False).returncode

        assert probe("/health") == 0
        assert probe("/broken") != 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe("/health") != 0


def test_a_container_made_before_the_keys_file_is_replaced_not_reloaded(
    make_stack: Callable[..., Stack],
) -> None:
    """A stack applied by a kbinfra that passed the key as EMBEDDINGS_API_KEY (and rendered
    config.json without ``api_key.file``): the next apply recreates its container with the
    keys file, so the key leaves its environment; a reload would keep the old container."""
    from kbinfra.containers import ObservedContainer  # noqa: PLC0415
    from kbinfra.plan import (  # noqa: PLC0415
        desired_service,
        desired_services,
        service_action,
        sha256_text,
    )

    stack = make_stack("minimum")
    rendered = render_stack(stack)
    desired = desired_services(stack, rendered)["embeddings"]
    by_path = {f.path: f for f in rendered}
    document = json.loads(by_path[CONFIG_FILE].text)
    del document["api_key"]["file"]
    before = {
        CONFIG_FILE: by_path[CONFIG_FILE]._replace(text=json.dumps(document, indent=2) + "\n")
    }
    old_spec = desired.spec._replace(
        secret_env={"EMBEDDINGS_API_KEY": "embeddings_api_key"},
        files=[f for f in desired.spec.files if f.source == CONFIG_FILE],
        reload=None,
    )
    old = desired_service(stack.spec.name, old_spec, SERVICE.stage, before, stack.secrets)
    observed = ObservedContainer(
        id="c0ffee",
        name=desired.container,
        state="running",
        status="Up 3 hours (healthy)",
        image=desired.spec.image,
        image_id="sha256:aaaa",
        labels=old.labels(stack.spec.name),
    )
    deployed = {path: sha256_text(f.text) for path, f in before.items()}
    action = service_action(desired, observed, None, deployed)
    assert action.action == "recreate"
    assert any("EMBEDDINGS_API_KEY" in reason for reason in action.reasons), action.reasons
    assert any(CONFIG_FILE in reason for reason in action.reasons), action.reasons
    # once recreated, a change of the keys file alone is a reload
    current = {f.path: sha256_text(f.text) for f in rendered}
    observed_now = dataclasses.replace(observed, labels=desired.labels(stack.spec.name))
    assert service_action(desired, observed_now, None, current).action == "nothing"
    current[KEYS_FILE] = "0" * 64
    assert service_action(desired, observed_now, None, current).action == "reload"
