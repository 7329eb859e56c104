"""Unstructured API: document partitioning, with the guide's strategies rendered for the app.

The upstream image (quay.io/unstructured-io/unstructured-api) runs one uvicorn process through
``scripts/app-start.sh``. It reads only these environment variables, all set here when they
apply: ``UNSTRUCTURED_API_KEY`` (checked against the ``unstructured-api-key`` header),
``UNSTRUCTURED_MEMORY_FREE_MINIMUM_MB`` (503 below that much *host* memory: psutil reads
/proc/meminfo, not the container's limit), ``UNSTRUCTURED_PARALLEL_MODE_ENABLED|URL|THREADS|
SPLIT_SIZE`` and ``MAX_LIFETIME_SECONDS``. Threads inside one document are bounded with the
OpenMP variables that torch, OpenBLAS and Tesseract read.

The API takes one key, read at start. When the stack's nginx runs beside it (on one host),
nginx is its key gate (:class:`kbinfra.service.KeyGate`): clients send
``unstructured_api_key`` to nginx (``nginx:8002`` on the stack network, the host port on
127.0.0.1, ``/unstructured/`` over HTTPS), which accepts it and sends the API its own key,
``unstructured_upstream_key``, held only by nginx and the API. Rotating the clients' key is then
a reload of nginx, never a restart of the API. Without nginx (or on a Swarm) the API checks
``unstructured_api_key`` itself, as upstream documents.
"""

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kbinfra.service import (
    ContainerSpec,
    HealthCheck,
    KeyGate,
    KeyGrant,
    Route,
    Service,
    ServiceContext,
    ServiceSettings,
)
from kbinfra.service_kit.healthchecks import python_http_probe
from kbinfra.service_kit.key_gate import client_address as gated_client_address
from kbinfra.service_kit.key_gate import gated

if TYPE_CHECKING:
    pass

STRATEGIES_FILE = "unstructured/strategies.json"
API_PATH = "/general/v0/general"
API_KEY_HEADER = "unstructured-api-key"
PORT = 8000
#: The key clients send, and the API's own key behind nginx's key gate.
CLIENT_SECRET = "unstructured_api_key"
UPSTREAM_SECRET = "unstructured_upstream_key"
#: nginx's listener for the API's clients on the stack network.
GATE_PORT = 8002
#: Answers 200 without the API key.
HEALTH_PATH = "/healthcheck"

# Sizing (MiB): the API process with its layout, table and OCR models loaded, and the peak of
# one hi_res document on top of it (rendered page images, layout and table inference).
PROCESS_MB = 2048
DOCUMENT_MB = 1024

_EXTENSION = r"^[a-z0-9]{1,10}$"


class PartitionParams(BaseModel):
    """Form fields of ``POST /general/v0/general``; only those set are sent.

    The guide's ``infer_table_structure`` is not an API field (the API ignores unknown form
    fields): tables are controlled by ``skip_infer_table_types`` and, for PDFs,
    ``pdf_infer_table_structure``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["auto", "fast", "hi_res", "ocr_only"]
    hi_res_model_name: str | None = Field(None, pattern=r"^[a-z0-9_]+$")
    pdf_infer_table_structure: bool | None = None
    skip_infer_table_types: list[Annotated[str, Field(pattern=_EXTENSION)]] | None = None
    include_page_breaks: bool | None = None
    coordinates: bool | None = None
    unique_element_ids: bool | None = None
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{3}(_[a-z]+)?$")]] | None = None
    chunking_strategy: Literal["basic", "by_title"] | None = None
    max_characters: int | None = Field(None, ge=1)
    new_after_n_chars: int | None = Field(None, ge=1)
    combine_under_n_chars: int | None = Field(None, ge=0)
    overlap: int | None = Field(None, ge=0)
    overlap_all: bool | None = None
    multipage_sections: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        chunking = (
            "max_characters",
            "new_after_n_chars",
            "combine_under_n_chars",
            "overlap",
            "overlap_all",
            "multipage_sections",
        )
        if self.chunking_strategy is None:
            stray = [name for name in chunking if getattr(self, name) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} need chunking_strategy (basic or by_title)")
        if self.multipage_sections is not None and self.chunking_strategy != "by_title":
            raise ValueError("multipage_sections applies to chunking_strategy by_title only")
        limit = self.max_characters
        if limit is not None:
            for name in ("new_after_n_chars", "combine_under_n_chars", "overlap"):
                value = getattr(self, name)
                if value is not None and value > limit:
                    raise ValueError(f"{name} ({value}) exceeds max_characters ({limit})")
        if self.hi_res_model_name is not None and self.strategy not in ("hi_res", "auto"):
            raise ValueError("hi_res_model_name applies to strategy hi_res or auto only")
        return self


def _has_default(strategies: dict[str, PartitionParams]) -> dict[str, PartitionParams]:
    if "default" not in strategies:
        raise ValueError("needs a 'default' entry for file types without their own")
    for key in strategies:
        if key != "default" and re.fullmatch(_EXTENSION, key) is None:
            raise ValueError(f"{key!r} is not a file extension: lowercase letters and digits")
    return strategies


Strategies = Annotated[dict[str, PartitionParams], AfterValidator(_has_default)]

# The guide's STRATEGIES, in API field names: its "infer_table_structure: true" means "infer
# tables for this type" (skip none; for PDFs also pdf_infer_table_structure); "false" leaves
# the API's default, which skips tables in PDFs and images. The guide sent
# hi_res_model_name=yolox with every request; here only with the hi_res strategies.
# A plain, JSON-able value so that `kbinfra init` can write it into kbinfra.yaml.
DEFAULT_STRATEGIES: Any = {
    "pdf": {
        "strategy": "hi_res",
        "hi_res_model_name": "yolox",
        "pdf_infer_table_structure": True,
        "skip_infer_table_types": [],
        "chunking_strategy": "by_title",
        "max_characters": 10000,
        "include_page_breaks": True,
    },
    "docx": {
        "strategy": "hi_res",
        "hi_res_model_name": "yolox",
        "skip_infer_table_types": [],
        "include_page_breaks": False,
    },
    "default": {"strategy": "auto", "pdf_infer_table_structure": False},
}


class UnstructuredSettings(ServiceSettings):
    strategies: Strategies = Field(
        default=DEFAULT_STRATEGIES,
        validate_default=True,
        description="Partition form fields per file extension, plus a default (for the app)",
    )
    max_upload_mb: int = Field(
        50, ge=1, le=10240, description="Largest document the app should send, in MB"
    )
    processing_timeout_s: int = Field(
        300, ge=10, le=3600, description="How long the app waits for one document, seconds"
    )
    concurrency: int | None = Field(
        None, ge=1, le=256, description="Documents processed at once; empty: from CPUs and memory"
    )
    memory_free_minimum_mb: int | None = Field(
        None, ge=0, description="Answer 503 below this much free host memory; empty: 1024"
    )
    parallel_mode: bool = Field(
        False, description="Upstream parallel mode: split PDFs into pages sent back to the API"
    )
    parallel_split_pages: int = Field(
        1, ge=1, le=1000, description="Pages per split in parallel mode"
    )
    max_lifetime_s: int | None = Field(
        None, ge=60, description="Restart the API after this many seconds; empty: never"
    )


class UnstructuredTune(NamedTuple):
    concurrency: int
    threads_per_document: int
    memory_free_minimum_mb: int


def unstructured_tuning(
    *,
    cpus: float,
    memory_mb: int,
    concurrency: int | None = None,
    memory_free_minimum_mb: int | None = None,
) -> UnstructuredTune:
    """Documents at once: one per whole CPU, as many as fit next to the loaded models.

    Threads inside one document share what is left, so concurrent documents do not
    oversubscribe the container's CPUs.
    """
    cores = max(1, math.floor(cpus))
    fits = max(1, (memory_mb - PROCESS_MB) // DOCUMENT_MB)
    documents = concurrency or min(cores, fits)
    return UnstructuredTune(
        concurrency=documents,
        threads_per_document=max(1, cores // documents),
        memory_free_minimum_mb=(
            DOCUMENT_MB if memory_free_minimum_mb is None else memory_free_minimum_mb
        ),
    )


class ApiAccess(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stack_network_url: str = Field(pattern=r"^http://[a-z0-9.-]+:\d+/")
    loopback_url: str | None = Field(None, pattern=r"^http://127\.0\.0\.1:\d+/")
    api_key_header: Literal["unstructured-api-key"]
    api_key_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_file_size_bytes: int = Field(ge=1)
    processing_timeout_s: int = Field(ge=1)
    concurrent_documents: int = Field(ge=1)


class StrategiesDocument(BaseModel):
    """``unstructured/strategies.json``: what the app needs to call the API well."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: ApiAccess
    limits: Limits
    strategies: Strategies


class Unstructured(Service):
    name = "unstructured"
    allocation = "unstructured"
    settings_model = UnstructuredSettings
    default_image = "quay.io/unstructured-io/unstructured-api:0.1.14"
    container_port = PORT
    # The guide published it on 8001, where the embedding service listens.
    default_host_port = 8002
    secrets = (CLIENT_SECRET, UPSTREAM_SECRET)
    stage = "service"
    # Upstream's start script; the API reads UNSTRUCTURED_API_KEY only from its environment.
    image_start = ("scripts/app-start.sh",)
    health_path = HEALTH_PATH

    def tuning(self, ctx: ServiceContext) -> UnstructuredTune:
        settings: UnstructuredSettings = ctx.settings
        return unstructured_tuning(
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            concurrency=settings.concurrency,
            memory_free_minimum_mb=settings.memory_free_minimum_mb,
        )

    def document(self, ctx: ServiceContext) -> StrategiesDocument:
        settings: UnstructuredSettings = ctx.settings
        return StrategiesDocument(
            api=ApiAccess(
                stack_network_url=f"http://{client_address(ctx)}{API_PATH}",
                loopback_url=(
                    f"http://127.0.0.1:{settings.port}{API_PATH}" if settings.port else None
                ),
                api_key_header=API_KEY_HEADER,
                api_key_env="UNSTRUCTURED_API_KEY",
            ),
            limits=Limits(
                max_file_size_bytes=settings.max_upload_mb * 1024 * 1024,
                processing_timeout_s=settings.processing_timeout_s,
                concurrent_documents=self.tuning(ctx).concurrency,
            ),
            strategies=settings.strategies,
        )

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {"document": self.document(ctx).model_dump(mode="json", exclude_none=True)}

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: UnstructuredSettings = ctx.settings
        tune = self.tuning(ctx)
        threads = str(tune.threads_per_document)
        env = {
            "UNSTRUCTURED_MEMORY_FREE_MINIMUM_MB": str(tune.memory_free_minimum_mb),
            "OMP_NUM_THREADS": threads,
            "OMP_THREAD_LIMIT": threads,
        }
        if settings.parallel_mode:
            # Pages go back to this same API over loopback, as upstream's own smoke test does.
            env |= {
                "UNSTRUCTURED_PARALLEL_MODE_ENABLED": "true",
                "UNSTRUCTURED_PARALLEL_MODE_URL": f"http://127.0.0.1:{PORT}{API_PATH}",
                "UNSTRUCTURED_PARALLEL_MODE_THREADS": str(tune.concurrency),
                "UNSTRUCTURED_PARALLEL_MODE_SPLIT_SIZE": str(settings.parallel_split_pages),
            }
        if settings.max_lifetime_s is not None:
            env["MAX_LIFETIME_SECONDS"] = str(settings.max_lifetime_s)
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            env=env,
            secret_env={"UNSTRUCTURED_API_KEY": UPSTREAM_SECRET if gated(ctx) else CLIENT_SECRET},
            # behind its key gate, nginx publishes the host port: the API's clients there
            # send the key nginx accepts
            ports=[] if gated(ctx) else ctx.loopback_port(PORT),
            # The image has python3 (no curl).
            healthcheck=HealthCheck(
                test=python_http_probe(f"http://127.0.0.1:{PORT}{self.health_path}"),
                interval_s=15,
                timeout_s=10,
                retries=8,
                start_period_s=60,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            stop_timeout_s=60,
            # Uploaded documents are spooled to /tmp: on disk, not in memory.
            scratch=("/tmp",),
        )

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        return {
            "UNSTRUCTURED_API_URL": f"http://{client_address(ctx)}{API_PATH}",
            "UNSTRUCTURED_API_KEY": ctx.secrets[CLIENT_SECRET],
        }

    def routes(self, ctx: ServiceContext) -> list[Route]:
        settings: UnstructuredSettings = ctx.settings
        gate = (
            KeyGate(
                header=API_KEY_HEADER,
                grants=(KeyGrant(ctx.accepted(CLIENT_SECRET), ctx.secrets[UPSTREAM_SECRET]),),
                port=GATE_PORT,
                host_port=settings.port,
                secrets=(CLIENT_SECRET, UPSTREAM_SECRET),
            )
            if gated(ctx)
            else None
        )
        # hi_res partitioning of a long PDF takes minutes.
        return [
            Route(prefix="/unstructured/", address=self.address(), long_running=True, gate=gate)
        ]


def client_address(ctx: ServiceContext) -> str:
    """Where the API's clients on the stack network send their requests."""
    return gated_client_address(ctx, SERVICE, GATE_PORT)


SERVICE = Unstructured()
SERVICES = (SERVICE,)
