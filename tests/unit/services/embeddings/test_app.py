"""The embedding service's app, in-process, with the real all-MiniLM-L6-v2 on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.embeddings_app import load_app_module

pytestmark = pytest.mark.slow

MODEL = "all-MiniLM-L6-v2"


def config_data(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The shape `kbinfra render` writes (templates/embeddings/config.json.j2)."""
    data: dict[str, Any] = {
        "host": "0.0.0.0",
        "port": 8001,
        "models_path": str(tmp_path / "models"),
        "models": {
            MODEL: {
                "dimension": 384,
                "max_seq_length": 256,
                "memory_mb": 120,
                "path": str(tmp_path / "models" / MODEL),
            },
            "all-mpnet-base-v2": {
                "dimension": 768,
                "max_seq_length": 384,
                "memory_mb": 550,
                "path": str(tmp_path / "models" / "all-mpnet-base-v2"),
            },
        },
        "default_model": MODEL,
        "device": "auto",
        "half_precision_on_cuda": True,
        "offline": True,
        "workers": 1,
        "torch_threads": 2,
        "batch_size": 16,
        "api_key": {"required": False, "header": "X-API-Key", "env": "EMBEDDINGS_API_KEY"},
    }
    data.update(overrides)
    return data


def client_class() -> Any:
    """FastAPI's TestClient, imported only once the app's dependencies are known present."""
    from fastapi.testclient import TestClient  # noqa: PLC0415

    return TestClient


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    return load_app_module()


@pytest.fixture(scope="module")
def loaded_model(app_module: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Load the model once for the module: every test below reuses it."""
    tmp = tmp_path_factory.mktemp("model")
    config = app_module.ServiceConfig.model_validate(config_data(tmp))
    return app_module.load_model(config, MODEL)


def make_client(
    app_module: ModuleType, tmp_path: Path, loaded: Any, preload: bool = True, **overrides: Any
) -> Iterator[Any]:
    test_client = client_class()

    config = app_module.ServiceConfig.model_validate(config_data(tmp_path, **overrides))

    def reuse(config: Any, name: str) -> Any:
        if name == MODEL:
            return loaded
        return app_module.load_model(config, name)

    keys = app_module.ApiKeys(("k3y",)) if config.api_key.required else None
    app = app_module.create_app(config, loader=reuse, preload=preload, api_keys=keys)
    with test_client(app) as client:
        if preload:
            wait_healthy(client)
        yield client


def wait_healthy(client: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.05)


@pytest.fixture
def client(app_module: ModuleType, tmp_path: Path, loaded_model: Any) -> Iterator[Any]:
    yield from make_client(app_module, tmp_path, loaded_model)


def test_the_packaged_model_is_found_when_the_models_folder_is_empty(loaded_model: Any) -> None:
    assert loaded_model.dimension == 384
    assert (loaded_model.folder / "model.safetensors").is_file()
    assert loaded_model.device == "cpu"
    assert loaded_model.model.max_seq_length == 256


def test_embed_returns_one_384_dimensional_vector_per_text(client: Any) -> None:
    response = client.post("/embed", json={"texts": ["a cat sits on the mat", "stock markets"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL
    assert body["dimension"] == 384
    assert len(body["embeddings"]) == 2
    assert all(len(vector) == 384 for vector in body["embeddings"])
    assert body["elapsed_ms"] > 0


def test_normalised_vectors_have_unit_norm_and_raw_ones_need_not(client: Any) -> None:
    texts = ["The quick brown fox jumps over the lazy dog."]
    normalised = client.post("/embed", json={"texts": texts, "normalize": True}).json()
    raw = client.post("/embed", json={"texts": texts, "normalize": False}).json()
    norm = math.sqrt(sum(x * x for x in normalised["embeddings"][0]))
    raw_norm = math.sqrt(sum(x * x for x in raw["embeddings"][0]))
    assert norm == pytest.approx(1.0, abs=1e-5)
    # all-MiniLM-L6-v2 ends in a Normalize module, so its raw vectors are unit length too:
    # what matters is that both agree in direction.
    cosine = sum(
        a * b for a, b in zip(normalised["embeddings"][0], raw["embeddings"][0], strict=True)
    )
    assert cosine / raw_norm == pytest.approx(1.0, abs=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(client: Any) -> None:
    texts = ["How do I reset my password?", "I forgot my password", "The weather is sunny"]
    a, b, c = client.post("/embed", json={"texts": texts}).json()["embeddings"]

    def dot(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v, strict=True))

    assert dot(a, b) > dot(a, c) + 0.2


def test_batch_and_text_limits_answer_413_with_json(client: Any) -> None:
    too_many = client.post("/embed", json={"texts": ["x"] * 257})
    assert too_many.status_code == 413
    assert too_many.json()["error"] == "batch_too_large"
    assert "256" in too_many.json()["message"]
    too_long = client.post("/embed", json={"texts": ["ok", "y" * 16385]})
    assert too_long.status_code == 413
    assert too_long.json()["error"] == "text_too_long"
    assert "texts[1]" in too_long.json()["message"]


def test_bad_requests_answer_4xx_with_json(client: Any) -> None:
    empty = client.post("/embed", json={"texts": []})
    assert (empty.status_code, empty.json()["error"]) == (422, "empty_batch")
    wrong_type = client.post("/embed", json={"texts": "not a list"})
    assert (wrong_type.status_code, wrong_type.json()["error"]) == (422, "invalid_request")
    assert wrong_type.json()["message"].startswith("texts")
    unknown = client.post("/embed", json={"texts": ["x"], "model": "nope"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_model")


def test_a_configured_model_missing_locally_is_a_404_naming_the_folder(
    client: Any, tmp_path: Path
) -> None:
    response = client.post("/embed", json={"texts": ["x"], "model": "all-mpnet-base-v2"})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "model_not_installed"
    assert str(tmp_path / "models" / "all-mpnet-base-v2") in body["message"]
    assert client.get("/health").status_code == 200  # only the default model decides health


def test_health_is_503_until_the_default_model_is_warm(
    app_module: ModuleType, tmp_path: Path, loaded_model: Any
) -> None:
    for client in make_client(app_module, tmp_path, loaded_model, preload=False):
        before = client.get("/health")
        assert before.status_code == 503
        assert before.json()["status"] == "loading"
        client.app.state.service.preload_default()
        after = client.get("/health")
        assert after.status_code == 200
        assert after.json() == {"status": "ok", "model": MODEL}


def test_a_missing_default_model_keeps_the_service_unhealthy_and_says_where_it_looked(
    app_module: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    test_client = client_class()

    config = app_module.ServiceConfig.model_validate(
        config_data(tmp_path, default_model="all-mpnet-base-v2")
    )
    app = app_module.create_app(config, preload=False)
    with test_client(app) as client:
        app.state.service.preload_default()
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == "model_unavailable"
    folder = str(tmp_path / "models" / "all-mpnet-base-v2")
    assert folder in response.json()["message"]
    assert folder in caplog.text


def test_models_lists_every_configured_model(client: Any) -> None:
    body = client.get("/models").json()
    assert body["default"] == MODEL
    rows = {row["name"]: row for row in body["models"]}
    assert rows[MODEL]["loaded"] is True
    assert rows[MODEL]["dimension"] == 384
    assert rows["all-mpnet-base-v2"]["loaded"] is False


def test_metrics_expose_the_latency_histogram_the_alert_queries(client: Any) -> None:
    client.post("/embed", json={"texts": ["one", "two", "three"]})
    text = client.get("/metrics").text
    assert f'embedding_generation_duration_seconds_bucket{{le="2.0",model="{MODEL}"}}' in text
    assert f'embedding_generation_duration_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert f'embedding_texts_total{{model="{MODEL}"}} 3.0' in text
    assert 'embedding_requests_total{endpoint="/embed",status="200"} 1.0' in text
    assert f'embedding_model_load_seconds{{model="{MODEL}"}}' in text
    assert "embedding_service_ready 1.0" in text


def test_the_api_key_is_required_when_the_config_says_so(
    app_module: ModuleType, tmp_path: Path, loaded_model: Any
) -> None:
    overrides = {"api_key": {"required": True, "header": "X-API-Key", "env": "EMB_KEY"}}
    for client in make_client(app_module, tmp_path, loaded_model, **overrides):
        assert client.post("/embed", json={"texts": ["x"]}).status_code == 401
        wrong = client.post("/embed", json={"texts": ["x"]}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        right = client.post("/embed", json={"texts": ["x"]}, headers={"X-API-Key": "k3y"})
        assert right.status_code == 200
        assert client.get("/health").status_code == 200  # the health check sends no key


def test_every_key_of_the_keys_file_is_accepted_and_sighup_reloads_it(
    app_module: ModuleType, tmp_path: Path, loaded_model: Any
) -> None:
    import signal  # noqa: PLC0415

    path = tmp_path / "api_keys"
    path.write_text("old-key\nnew-key\n")
    marker = tmp_path / "loaded"
    settings = {"required": True, "header": "X-API-Key", "env": "UNSET_KEY", "file": str(path)}
    config = app_module.ServiceConfig.model_validate(config_data(tmp_path, api_key=settings))
    keys = app_module.ApiKeys.from_config(config.api_key, marker)
    assert marker.read_text() == app_module.file_digest(path.read_bytes())
    app = app_module.create_app(config, loader=lambda *_: loaded_model, api_keys=keys)

    def status(key: str) -> int:
        answer = client.post("/embed", json={"texts": ["x"]}, headers={"X-API-Key": key})
        return int(answer.status_code)

    previous = signal.getsignal(signal.SIGHUP)
    try:
        app_module.reload_on_hangup(keys)
        with client_class()(app) as client:
            wait_healthy(client)
            assert (status("old-key"), status("new-key"), status("other")) == (200, 200, 401)
            path.write_text("new-key\n")
            assert status("old-key") == 200  # read again only when told to
            signal.raise_signal(signal.SIGHUP)
            assert (status("old-key"), status("new-key")) == (401, 200)
            assert marker.read_text() == app_module.file_digest(b"new-key\n")
            # a file that cannot be used keeps the keys it had, and the marker says so
            path.write_text("\n")
            signal.raise_signal(signal.SIGHUP)
            assert (status("old-key"), status("new-key")) == (401, 200)
            assert marker.read_text() == app_module.file_digest(b"new-key\n")
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_config_without_a_keys_file_takes_the_one_key_of_its_env_var(
    app_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack rendered before the keys file: config.json names no file, the key is in
    EMBEDDINGS_API_KEY; the new image still serves it until the next apply replaces it."""
    monkeypatch.setenv("EMBEDDINGS_API_KEY", "env-key")
    settings = {"required": True, "header": "X-API-Key", "env": "EMBEDDINGS_API_KEY"}
    config = app_module.ServiceConfig.model_validate(config_data(tmp_path, api_key=settings))
    keys = app_module.ApiKeys.from_config(config.api_key)
    assert (keys.accepts("env-key"), keys.accepts("other"), keys.accepts("")) == (
        True,
        False,
        False,
    )
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(app_module.ConfigError, match="the keys file holds no key"):
        app_module.ApiKeys.from_config(config.api_key.model_copy(update={"file": str(empty)}))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"default_model": "nope"}, "default_model 'nope' is not in models"),
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"models": {}}, "models: Dictionary should have at least 1 item"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(
    app_module: ModuleType, tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_data(tmp_path, **change)))
    with pytest.raises(app_module.ConfigError) as error:
        app_module.load_config(path)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_or_broken_config_file_is_one_line(
    app_module: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(app_module.ConfigError, match="config file not found"):
        app_module.load_config(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "models": ,\n}')
    with pytest.raises(app_module.ConfigError, match=r"broken.json:2: not JSON"):
        app_module.load_config(broken)


@pytest.mark.parametrize(
    ("change", "env", "expected"),
    [
        (
            {"default_model": "x"},
            {},
            "{path}: default_model 'x' is not in models (all-MiniLM-L6-v2, all-mpnet-base-v2)",
        ),
        (
            {"api_key": {"required": True, "header": "X-API-Key", "env": "EMB_KEY"}},
            {"EMB_KEY": ""},
            "api_key.required is true but $EMB_KEY is empty or unset",
        ),
    ],
)
def test_the_service_refuses_to_start_with_one_line_and_exit_2(
    app_module: ModuleType,
    tmp_path: Path,
    change: dict[str, Any],
    env: dict[str, str],
    expected: str,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_data(tmp_path, **change)))
    result = subprocess.run(
        [sys.executable, app_module.__file__],
        env={**os.environ, "KBINFRA_EMBEDDINGS_CONFIG": str(path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == f"kbinfra-embeddings: {expected.format(path=path)}\n"


def test_the_hub_is_switched_off_before_anything_imports_it(app_module: ModuleType) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
