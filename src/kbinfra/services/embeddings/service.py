"""The embedding service: kbinfra's own sentence-transformers API, and its rendered config.

The service's FastAPI app and image (``kbinfra images build``) come in a later issue; this
module decides its configuration: which models, on which device, how many workers, threads
and how large a batch, all read by the app from ``config.json``. Models load from the
``models`` volume only: the container runs with the Hugging Face hub switched off.
"""

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kbinfra import __version__
from kbinfra.errors import SpecError
from kbinfra.service import (
    AlertRule,
    ContainerSpec,
    FileMount,
    HealthCheck,
    Panel,
    Reload,
    RenderedFile,
    Route,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.dns_cache import DNS_CACHE_S
from kbinfra.service_kit.healthchecks import python_http_probe
from kbinfra.service_kit.monitoring import p95
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    pass

CONFIG_FILE = "embeddings/config.json"
CONFIG_TARGET = "/etc/kbinfra/embeddings/config.json"
#: The API keys the service accepts, one a line (two during a rotation), 0600 for its user:
#: a file, not an env var, so no key is in ``docker inspect``; re-read in place on a change.
KEYS_FILE = "embeddings/keys/api_keys"
KEYS_TARGET = "/etc/kbinfra/embeddings/keys/api_keys"
#: The image's user (its Dockerfile's ``useradd --uid``), which alone reads the keys file.
SERVICE_UID = 10001
#: Run in the container by apply's reload: SIGHUP, then wait until the keys are loaded.
RELOAD_KEYS = ("python", "/app/reload_keys.py")
API_KEY_HEADER = "X-API-Key"
#: What clients of the service (the app tier) read the key from; the service itself read it
#: from there before the keys file (a config with no ``api_key.file`` still does).
API_KEY_ENV = "EMBEDDINGS_API_KEY"
PORT = 8001
#: Answers 200 without a key once the default model is loaded.
HEALTH_PATH = "/health"
#: The histogram the service's app exports for each embedding request.
LATENCY_BUCKET = "embedding_generation_duration_seconds_bucket"

Device = Literal["auto", "cpu", "cuda"]

# Sizing (MiB). One worker process holds Python, torch and the tokenizers (RUNTIME_MB), every
# configured model, and the activations of one batch. A transformer layer's activations cost
# about 32 KiB per token at hidden size 768 (12 heads of attention scores, 4 bytes each, plus
# the 3072-wide feed-forward): a 512-token sequence needs about 16 MiB while it is encoded.
RUNTIME_MB = 600
TOKEN_ACTIVATION_KIB = 32
GUIDE_BATCH = 32
MIN_BATCH = 8
MAX_CPU_BATCH = 64  # on CPU, larger batches stop paying: the cores are already saturated
CUDA_BATCH = 128  # GPU memory is not in the profile; 128 x 8 MiB (FP16) fits any CUDA card

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9._-]{1,96})?$")


class EmbeddingModel(BaseModel):
    """One sentence-transformers model, stored under ``models_path/name``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_MODEL_NAME.pattern)
    dimension: int = Field(ge=1, le=65536)
    max_seq_length: int = Field(ge=8, le=32768)
    memory_mb: int = Field(ge=1, description="Resident size once loaded (FP32 weights + 25%)")


# The guide's three models. memory_mb: parameters (model cards: 22.7M and 109.5M) x 4 bytes,
# plus a quarter for tokenizer, pooling and allocator slack. A plain, JSON-able value so that
# `kbinfra init` can write it into kbinfra.yaml.
DEFAULT_MODELS: Any = [
    {"name": "all-MiniLM-L6-v2", "dimension": 384, "max_seq_length": 256, "memory_mb": 120},
    {"name": "all-mpnet-base-v2", "dimension": 768, "max_seq_length": 384, "memory_mb": 550},
    {
        "name": "multi-qa-mpnet-base-dot-v1",
        "dimension": 768,
        "max_seq_length": 512,
        "memory_mb": 550,
    },
]


class EmbeddingsSettings(ServiceSettings):
    models: list[EmbeddingModel] = Field(
        default=DEFAULT_MODELS,
        validate_default=True,
        min_length=1,
        description="Models served: name, dimension, max_seq_length, memory_mb",
    )
    default_model: str = Field("all-MiniLM-L6-v2", description="Model used when none is asked")
    device: Device = Field("auto", description="auto (CUDA when present, FP16 there), cpu, cuda")
    models_path: str = Field(
        "/models", pattern=r"^/\S*$", description="Where the models volume is mounted"
    )
    require_api_key: bool = Field(
        True, description=f"Clients must send {API_KEY_HEADER} (nginx exposes /embeddings/)"
    )
    workers: int | None = Field(
        None, ge=1, le=64, description="server processes; empty: 1 (kbinfra's image runs one)"
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="Texts encoded per batch; empty: from memory"
    )

    @model_validator(mode="after")
    def _default_is_served(self) -> Self:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"models lists {', '.join(duplicates)} more than once")
        if self.default_model not in names:
            raise ValueError(
                f"default_model {self.default_model!r} is not in models ({', '.join(names)})"
            )
        return self


class EmbeddingsTune(NamedTuple):
    workers: int
    torch_threads: int
    batch_size: int


def sequence_mb(models: list[EmbeddingModel]) -> float:
    """Activation memory of the longest sequence any model accepts."""
    return max(m.max_seq_length for m in models) * TOKEN_ACTIVATION_KIB / 1024


def embeddings_tuning(
    *,
    cpus: float,
    memory_mb: int,
    models: list[EmbeddingModel],
    device: Device,
    workers: int | None = None,
    batch_size: int | None = None,
) -> EmbeddingsTune:
    """Workers, torch threads and batch size for the service's CPUs and memory.

    kbinfra's image serves from one process (its metrics and warm-up are per process), and
    torch spreads each batch over every core the container has; ``workers`` above 1 is for
    an image of your own that forks. The batch takes what memory is left after the runtime
    and the models. ``auto`` is sized as CPU: the GPU is found only at run time.
    """
    cores = max(1, math.floor(cpus))
    models_mb = sum(m.memory_mb for m in models)
    per_sequence = sequence_mb(models)
    if device == "cuda":
        count = workers or 1
        batch = batch_size or CUDA_BATCH
    else:
        count = workers or 1
        budget = memory_mb / count - RUNTIME_MB - models_mb
        batch = batch_size or _clamp_pow2(budget / per_sequence, MIN_BATCH, MAX_CPU_BATCH)
    # Every worker loads its own copy of every model (on CUDA too, through host memory).
    smallest = count * (RUNTIME_MB + models_mb + MIN_BATCH * per_sequence)
    if memory_mb < smallest:
        raise SpecError(
            f"embeddings has {memory_mb} MiB but {count} worker(s) need at least "
            f"{math.ceil(smallest)} MiB (each: {RUNTIME_MB} runtime + {models_mb} models "
            f"+ a batch of {MIN_BATCH})",
            fix="raise the embeddings memory in the profile, or serve fewer models or workers",
        )
    return EmbeddingsTune(workers=count, torch_threads=max(1, cores // count), batch_size=batch)


def _clamp_pow2(value: float, low: int, high: int) -> int:
    """The largest power of two not above ``value``, kept within [low, high]."""
    power = 2 ** math.floor(math.log2(value)) if value >= 1 else 1
    return min(high, max(low, power))


class ServedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: int = Field(ge=1)
    max_seq_length: int = Field(ge=8)
    memory_mb: int = Field(ge=1)
    path: str = Field(pattern=r"^/\S+$")


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool
    header: str
    env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    #: The keys file the service reads (and re-reads on SIGHUP); None when no key is required.
    file: str | None = Field(None, pattern=r"^/\S+$")


class EmbeddingsConfig(BaseModel):
    """``embeddings/config.json``, read by the embedding service at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(ge=1, le=65535)
    models_path: str = Field(pattern=r"^/\S*$")
    models: dict[str, ServedModel] = Field(min_length=1)
    default_model: str
    device: Device
    half_precision_on_cuda: bool
    offline: Literal[True]
    workers: int = Field(ge=1)
    torch_threads: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    api_key: ApiKey
    #: Seconds it keeps answering after its stop signal (a Swarm task replaced start-first:
    #: clients that resolved it before it left DNS still reach it); 0 stops at once.
    drain_s: int = Field(0, ge=0, le=300)

    @model_validator(mode="after")
    def _default_is_served(self) -> Self:
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")
        return self


class Embeddings(Service):
    name = "embeddings"
    allocation = "embeddings"
    settings_model = EmbeddingsSettings
    # Built locally by `kbinfra images build`; tagged with the kbinfra version that built it.
    default_image = f"kbinfra/embeddings:{__version__}"
    container_port = PORT
    default_host_port = PORT
    secrets = ("embeddings_api_key",)
    stage = "service"
    health_path = HEALTH_PATH
    # The image's command (the Dockerfile's CMD). It reads its keys from a file kbinfra
    # renders, so no secret is passed in its environment.
    image_start = ("python", "/app/app.py")

    def keeps_state(self, ctx: ServiceContext) -> bool:
        """The models volume holds model files copied in by hand, which the service only
        reads: each node that runs it has its own copy, so it is replicated, not pinned."""
        return False

    def tuning(self, ctx: ServiceContext) -> EmbeddingsTune:
        settings: EmbeddingsSettings = ctx.settings
        return embeddings_tuning(
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            models=settings.models,
            device=settings.device,
            workers=settings.workers,
            batch_size=settings.batch_size,
        )

    def config(self, ctx: ServiceContext) -> EmbeddingsConfig:
        settings: EmbeddingsSettings = ctx.settings
        tune = self.tuning(ctx)
        root = settings.models_path.rstrip("/")
        return EmbeddingsConfig(
            host="0.0.0.0",
            port=PORT,
            models_path=settings.models_path,
            models={
                m.name: ServedModel(
                    dimension=m.dimension,
                    max_seq_length=m.max_seq_length,
                    memory_mb=m.memory_mb,
                    path=f"{root}/{m.name}",
                )
                for m in settings.models
            },
            default_model=settings.default_model,
            device=settings.device,
            half_precision_on_cuda=True,
            offline=True,
            workers=tune.workers,
            torch_threads=tune.torch_threads,
            batch_size=tune.batch_size,
            api_key=ApiKey(
                required=settings.require_api_key,
                header=API_KEY_HEADER,
                env=API_KEY_ENV,
                file=KEYS_TARGET if settings.require_api_key else None,
            ),
            drain_s=DNS_CACHE_S if ctx.stack.target == SWARM_TARGET else 0,
        )

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """The keys file: the key clients use and, during a rotation, the other one, sorted:
        the same two keys make the same file whichever clients hold (on a Swarm, a task
        replaced the fewer times)."""
        settings: EmbeddingsSettings = ctx.settings
        if not settings.require_api_key:
            return []
        text = "".join(f"{key}\n" for key in sorted(ctx.accepted("embeddings_api_key")))
        return [RenderedFile(KEYS_FILE, text, mode=0o600, secret=True)]

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {"config": self.config(ctx).model_dump(mode="json")}

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: EmbeddingsSettings = ctx.settings
        tune = self.tuning(ctx)
        threads = str(tune.torch_threads)
        files = [FileMount(source=CONFIG_FILE, target=CONFIG_TARGET)]
        if settings.require_api_key:
            files.append(
                FileMount(source=KEYS_FILE, target=KEYS_TARGET, uid=SERVICE_UID, gid=SERVICE_UID)
            )
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            env={
                "KBINFRA_EMBEDDINGS_CONFIG": CONFIG_TARGET,
                # Never reach the hub at run time: models come from the volume or not at all.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "SENTENCE_TRANSFORMERS_HOME": settings.models_path,
                "HF_HOME": f"{settings.models_path.rstrip('/')}/.hf",
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                # uvicorn's workers are forked; tokenizers' own thread pool would deadlock.
                "TOKENIZERS_PARALLELISM": "false",
            },
            ports=ctx.loopback_port(PORT),
            volumes=[VolumeMount(volume=ctx.volume("models"), target=settings.models_path)],
            files=files,
            # The image has Python but not `requests` (the guide's health check imported it).
            healthcheck=HealthCheck(
                test=python_http_probe(f"http://127.0.0.1:{PORT}{self.health_path}"),
                interval_s=15,
                timeout_s=10,
                retries=8,
                start_period_s=60,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            tmpfs=(TmpfsMount("/tmp"),),
            # A change of the keys file alone (a key added or revoked by `kbinfra secrets
            # rotate`) is delivered into the running service, which re-reads it: no restart,
            # no request refused. Anything else (config.json) recreates it.
            reload=(
                Reload(files=(KEYS_FILE,), test=("test", "-s", KEYS_TARGET), command=RELOAD_KEYS)
                if settings.require_api_key
                else None
            ),
        )

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        return [ScrapeTarget(job="embeddings", address=self.address(), path="/metrics")]

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        settings: EmbeddingsSettings = ctx.settings
        env = {"EMBEDDINGS_URL": f"http://{self.address()}"}
        if settings.require_api_key:
            env[API_KEY_ENV] = ctx.secrets["embeddings_api_key"]
        return env

    def routes(self, ctx: ServiceContext) -> list[Route]:
        return [Route(prefix="/embeddings/", address=self.address())]

    def alert_rules(self, ctx: ServiceContext) -> list[AlertRule]:
        """The guide's HighEmbeddingLatency, on the service's own histogram."""
        return [
            AlertRule(
                alert="HighEmbeddingLatency",
                expr=f"{p95(LATENCY_BUCKET)} > 2",
                for_="2m",
                severity="warning",
                summary="Embedding generation is slow",
                description="95th percentile embedding time is {{ $value | humanizeDuration }}",
            )
        ]

    def dashboard_panels(self, ctx: ServiceContext) -> list[Panel]:
        return [
            Panel(
                "Embedding latency (p95)",
                "timeseries",
                (0, 22, 12, 8),
                [(p95(LATENCY_BUCKET), "p95")],
                "s",
            )
        ]


SERVICE = Embeddings()
SERVICES = (SERVICE,)
