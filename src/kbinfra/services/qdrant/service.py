"""Qdrant: thread and segment tuning from the profile, api keys by env, a schema-checked config."""

import difflib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import Field

from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    PortBinding,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    VolumeMount,
)
from kbinfra.spec.profile import DiskKind

if TYPE_CHECKING:
    from kbinfra.validation import CheckResult

KIB_PER_GIB = 1024 * 1024
#: One segment never grows past this (KiB): bigger segments make each HNSW build long.
MAX_SEGMENT_CAP_KB = 4 * KIB_PER_GIB
#: Index-building threads one optimization job should get: Qdrant's guidance is 8-16.
THREADS_PER_OPTIMIZATION_JOB = 8
CONFIG_FILE = "qdrant/config.yaml"
#: The official image runs from /qdrant with RUN_MODE=production, so it merges
#: config/config.yaml, then config/production.yaml (this file), then QDRANT__* env vars.
CONFIG_TARGET = "/qdrant/config/production.yaml"
HTTP_PORT = 6333
GRPC_PORT = 6334


def readyz_probe(port: int = HTTP_PORT) -> str:
    """A bash script that succeeds only when Qdrant's /readyz answers 200.

    The official image (debian slim) has bash but neither curl nor wget, so bash's /dev/tcp
    speaks HTTP/1.1; /readyz needs no api key and answers 503 until every shard is loaded.
    """
    request = "GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n"
    return (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && "
        'read -r status <&3 && [[ "$status" == *" 200 "* ]]'
    )


class QdrantSettings(ServiceSettings):
    grpc_port: int | None = Field(
        GRPC_PORT, ge=1, le=65535, description="Host port for gRPC on 127.0.0.1; empty: none"
    )
    collection_dimension: int = Field(
        384, ge=1, le=65536, description="Vector size of the knowledge-base collection"
    )

    def host_ports(self) -> list[int]:
        return [p for p in (self.port, self.grpc_port) if p is not None]


class QdrantTune(NamedTuple):
    """The settings derived from the CPUs, memory and disk the profile gives Qdrant."""

    max_search_threads: int
    optimizer_cpu_budget: int
    default_segment_number: int
    max_segment_size_kb: int
    indexing_threshold_kb: int
    flush_interval_sec: int
    max_optimization_threads: int
    wal_capacity_mb: int
    wal_segments_ahead: int


def qdrant_tuning(*, cpus: float, memory_mb: int, disk: DiskKind) -> QdrantTune:
    """Qdrant's threads, segments and WAL for ``cpus`` cores and ``memory_mb`` of RAM.

    docs/services/qdrant.md explains each formula; the tests work them by hand.
    """
    cores = max(1, math.floor(cpus))
    # A quarter of the cores (at least one) stays free for searches while indexing runs.
    budget = max(1, cores - math.ceil(cores / 4))
    jobs = max(1, math.ceil(budget / THREADS_PER_OPTIMIZATION_JOB))
    # A rebuild holds the old and the new segment: all jobs together within a quarter of RAM.
    segment_kb = min(MAX_SEGMENT_CAP_KB, memory_mb * 1024 // 4 // jobs)
    return QdrantTune(
        max_search_threads=cores,
        optimizer_cpu_budget=budget,
        # Qdrant: a multiple of the search threads, so each thread searches one segment.
        default_segment_number=max(2, cores),
        max_segment_size_kb=segment_kb,
        # Small CPUs index less often: a plain scan of 20 MB of vectors is still fast.
        indexing_threshold_kb=20_000 if cores < 4 else 10_000,
        flush_interval_sec=10 if disk == "hdd" else 5,
        max_optimization_threads=jobs,
        wal_capacity_mb=min(128, max(32, memory_mb // 256)),
        wal_segments_ahead=0 if cores < 4 else 1,
    )


class KeyRule(NamedTuple):
    """What one config key accepts: YAML types (``None`` for null) and a lower bound."""

    types: tuple[type | None, ...]
    minimum: float | None = None


INT = KeyRule((int,), 0)
INT_ANY = KeyRule((int,))
INT_OR_NULL = KeyRule((int, None), 0)
BOOL = KeyRule((bool,))
BOOL_OR_NULL = KeyRule((bool, None))
STR = KeyRule((str,))
STR_OR_NULL = KeyRule((str, None))
FLOAT = KeyRule((float, int), 0)
PORT = KeyRule((int,), 1)
PORT_OR_NULL = KeyRule((int, None), 1)

_OPTIMIZER_KEYS = {
    "deleted_threshold": FLOAT,
    "vacuum_min_vector_number": KeyRule((int,), 100),
    "default_segment_number": INT,
    "max_segment_size_kb": KeyRule((int, None), 1),
    "max_segment_size": KeyRule((int, None), 1),
    "indexing_threshold_kb": INT_OR_NULL,
    "indexing_threshold": INT_OR_NULL,
    "flush_interval_sec": INT,
    "max_optimization_threads": INT_OR_NULL,
    "prevent_unoptimized": BOOL_OR_NULL,
}

#: The keys Qdrant v1.19 reads from its config file, as dotted paths. Sources: config/config.yaml
#: (the annotated reference), src/settings.rs (service, cluster, tls, top level),
#: lib/storage/src/types.rs (storage, performance) and lib/collection/src/optimizers_builder.rs
#: (optimizers) in github.com/qdrant/qdrant, 1.17-1.19. Qdrant's loader (the `config` crate with
#: serde) silently ignores keys it does not know, so a typo or a key at the wrong level (the
#: guide's `storage.wal_capacity_mb`) would simply not apply: this table is what catches it.
QDRANT_CONFIG_KEYS: dict[str, KeyRule] = {
    "log_level": STR,
    "telemetry_disabled": BOOL,
    "per_collection_metrics_enabled": BOOL,
    "storage.storage_path": STR,
    "storage.snapshots_path": STR,
    "storage.snapshots_config.snapshots_storage": STR,
    "storage.temp_path": STR_OR_NULL,
    "storage.on_disk_payload": BOOL,
    "storage.update_concurrency": INT_OR_NULL,
    "storage.node_type": STR,
    "storage.mmap_advice": STR,
    "storage.update_queue_size": INT_OR_NULL,
    "storage.handle_collection_load_errors": BOOL,
    "storage.recovery_mode": STR_OR_NULL,
    "storage.shard_transfer_method": STR_OR_NULL,
    "storage.max_collections": INT_OR_NULL,
    "storage.wal.wal_capacity_mb": KeyRule((int,), 1),
    "storage.wal.wal_segments_ahead": INT,
    "storage.performance.max_search_threads": INT,
    "storage.performance.max_optimization_threads": INT,
    "storage.performance.optimizer_cpu_budget": INT_ANY,
    "storage.performance.optimizer_io_budget": INT,
    "storage.performance.update_rate_limit": INT_OR_NULL,
    "storage.performance.search_timeout_sec": INT_OR_NULL,
    "storage.performance.incoming_shard_transfers_limit": INT_OR_NULL,
    "storage.performance.outgoing_shard_transfers_limit": INT_OR_NULL,
    "storage.performance.async_scorer": BOOL_OR_NULL,
    "storage.performance.max_concurrent_collection_loads": INT_OR_NULL,
    "storage.performance.max_concurrent_shard_loads": INT_OR_NULL,
    "storage.performance.max_concurrent_segment_loads": INT_OR_NULL,
    **{f"storage.optimizers.{key}": rule for key, rule in _OPTIMIZER_KEYS.items()},
    **{f"storage.optimizers_overwrite.{key}": rule for key, rule in _OPTIMIZER_KEYS.items()},
    "storage.hnsw_index.m": INT,
    "storage.hnsw_index.ef_construct": KeyRule((int,), 4),
    "storage.hnsw_index.full_scan_threshold_kb": INT,
    "storage.hnsw_index.max_indexing_threads": INT,
    "storage.hnsw_index.on_disk": BOOL,
    "storage.hnsw_index.payload_m": INT_OR_NULL,
    "storage.collection.replication_factor": KeyRule((int,), 1),
    "storage.collection.write_consistency_factor": KeyRule((int,), 1),
    "storage.collection.shard_number_per_node": KeyRule((int,), 1),
    "storage.collection.vectors.on_disk": BOOL_OR_NULL,
    "service.host": STR,
    "service.http_port": PORT,
    "service.grpc_port": PORT_OR_NULL,
    "service.metrics_port": PORT_OR_NULL,
    "service.max_request_size_mb": KeyRule((int,), 1),
    "service.max_workers": INT_OR_NULL,
    "service.enable_cors": BOOL,
    "service.enable_tls": BOOL,
    "service.verify_https_client_certificate": BOOL,
    "service.jwt_rbac": BOOL_OR_NULL,
    "service.hide_jwt_dashboard": BOOL_OR_NULL,
    "service.static_content_dir": STR_OR_NULL,
    "service.enable_static_content": BOOL_OR_NULL,
    "service.slow_query_secs": KeyRule((float, int, None), 0),
    "service.hardware_reporting": BOOL_OR_NULL,
    "service.metrics_prefix": STR_OR_NULL,
    "cluster.enabled": BOOL,
    "cluster.peer_id": INT_OR_NULL,
    "cluster.grpc_timeout_ms": KeyRule((int,), 1),
    "cluster.connection_timeout_ms": KeyRule((int,), 1),
    "cluster.resharding_enabled": BOOL,
    "cluster.p2p.port": PORT_OR_NULL,
    "cluster.p2p.connection_pool_size": KeyRule((int,), 1),
    "cluster.p2p.enable_tls": BOOL,
    "cluster.consensus.max_message_queue_size": INT,
    "cluster.consensus.tick_period_ms": KeyRule((int,), 1),
    "cluster.consensus.bootstrap_timeout_sec": KeyRule((int,), 1),
    "cluster.consensus.message_timeout_ticks": KeyRule((int,), 1),
    "cluster.consensus.compact_wal_entries": INT,
    "tls.cert": STR,
    "tls.key": STR,
    "tls.ca_cert": STR_OR_NULL,
    "tls.cert_ttl": INT_OR_NULL,
    "audit.enabled": BOOL,
    "audit.dir": STR,
    "audit.rotation": STR,
    "audit.max_log_files": INT,
    "audit.trust_forwarded_headers": BOOL,
}

#: Sections whose inner keys are free-form or versioned with their own schema (quantization
#: configs, S3 credentials, logger, strict mode): accepted below this prefix without a check.
OPAQUE_SECTIONS = (
    "logger",
    "storage.snapshots_config.s3_config",
    "storage.collection.quantization",
    "storage.collection.strict_mode",
    "inference",
    "gpu",
    "debugger",
    "feature_flags",
)

_MEMMAP_GONE = (
    "deprecated since Qdrant 1.15 (it no longer decides what is memory-mapped); "
    "use the on_disk flags of vectors and HNSW indexes instead"
)
#: Keys Qdrant still parses but no longer honours, with what replaced them.
DEPRECATED_KEYS = {
    f"storage.{section}.{key}": _MEMMAP_GONE
    for section in ("optimizers", "optimizers_overwrite")
    for key in ("memmap_threshold", "memmap_threshold_kb")
}

#: Keys that hold secrets: kbinfra passes them by env, never in the file.
SECRET_KEYS = ("service.api_key", "service.read_only_api_key", "service.alt_api_key")


class ConfigProblem(NamedTuple):
    key: str
    line: int | None
    message: str


def _is_opaque(key: str) -> bool:
    return any(key == section or key.startswith(f"{section}.") for section in OPAQUE_SECTIONS)


def _leaves(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested mapping as ``(dotted.key, value)``; opaque sections are leaves."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_opaque(dotted):
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _type_matches(value: Any, rule: KeyRule) -> bool:
    for kind in rule.types:
        if kind is None and value is None:
            return True
        # YAML's true/false are bools, and bool is an int in Python: keep them apart.
        if (
            kind is not None
            and isinstance(value, kind)
            and not (isinstance(value, bool) and kind is not bool)
        ):
            return True
    return False


def _suggestion(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = sorted(k for k in QDRANT_CONFIG_KEYS if k.rsplit(".", 1)[-1] == leaf)
    if same_leaf:
        return f"; did you mean {same_leaf[0]}?"
    close = difflib.get_close_matches(key, list(QDRANT_CONFIG_KEYS), n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""


def key_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``key: value`` in a Qdrant config file, or None."""
    if key in SECRET_KEYS:
        return f"{key} holds a secret: pass it as an environment variable, not in the file"
    if key in DEPRECATED_KEYS:
        return f"{key} is {DEPRECATED_KEYS[key]}"
    rule = QDRANT_CONFIG_KEYS.get(key)
    if rule is None:
        return f"unknown key {key}: Qdrant ignores it silently{_suggestion(key)}"
    if not _type_matches(value, rule):
        kinds = " or ".join("null" if kind is None else kind.__name__ for kind in rule.types)
        return f"{key} must be {kinds}, not {value!r}"
    if rule.minimum is not None and isinstance(value, int | float) and value < rule.minimum:
        return f"{key} must be at least {rule.minimum:g}, not {value!r}"
    return None


def config_problems(data: dict[str, Any], lines: dict[Any, int]) -> list[ConfigProblem]:
    """Unknown, deprecated, secret-bearing or mistyped keys in a parsed Qdrant config."""
    problems = []
    for key, value in _leaves(data):
        message = None if _is_opaque(key) else key_problem(key, value)
        if message is not None:
            problems.append(ConfigProblem(key, lines.get(tuple(key.split("."))), message))
    return problems


class Qdrant(Service):
    name = "qdrant"
    allocation = "qdrant"
    settings_model = QdrantSettings
    default_image = "qdrant/qdrant:v1.19.0"
    container_port = HTTP_PORT
    default_host_port = HTTP_PORT
    secrets = ("qdrant_api_key", "qdrant_read_only_api_key")
    stage = "data"

    def tuning(self, ctx: ServiceContext) -> QdrantTune:
        return qdrant_tuning(
            cpus=ctx.resources.cpus, memory_mb=ctx.resources.memory_mb, disk=ctx.profile.host.disk
        )

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "tune": self.tuning(ctx),
            "image": ctx.image,
            "http_port": HTTP_PORT,
            "grpc_port": GRPC_PORT,
        }

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: QdrantSettings = ctx.settings
        ports = ctx.loopback_port(HTTP_PORT)
        if settings.grpc_port is not None:
            ports.append(
                PortBinding(
                    host_ip="127.0.0.1", host_port=settings.grpc_port, container_port=GRPC_PORT
                )
            )
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            # The image's default; set explicitly so a changed default cannot skip our file.
            env={"RUN_MODE": "production"},
            secret_env={
                "QDRANT__SERVICE__API_KEY": "qdrant_api_key",
                "QDRANT__SERVICE__READ_ONLY_API_KEY": "qdrant_read_only_api_key",
            },
            ports=ports,
            volumes=[
                VolumeMount(volume=ctx.volume("storage"), target="/qdrant/storage"),
                VolumeMount(volume=ctx.volume("snapshots"), target="/qdrant/snapshots"),
            ],
            files=[FileMount(source=CONFIG_FILE, target=CONFIG_TARGET)],
            healthcheck=HealthCheck(
                test=["CMD", "bash", "-c", readyz_probe()],
                interval_s=10,
                timeout_s=5,
                retries=12,
                start_period_s=60,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            stop_timeout_s=60,
        )

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        # /metrics needs a key once one is set; the read-only key has the global read access
        # it asks for, and Qdrant accepts it as ``Authorization: Bearer``.
        return [
            ScrapeTarget(
                job="qdrant",
                address=self.address(),
                path="/metrics",
                bearer_secret="qdrant_read_only_api_key",
            )
        ]

    def check_rendered(self, ctx: ServiceContext, out: Path) -> list["CheckResult"]:
        """No Qdrant binary runs here: check every key against the pinned version's schema."""
        from kbinfra.errors import SpecError  # noqa: PLC0415
        from kbinfra.spec.yamlfile import parse_yaml  # noqa: PLC0415
        from kbinfra.validation import CheckResult  # noqa: PLC0415

        tool = f"qdrant schema ({self.default_image.rsplit(':', 1)[-1]})"
        path = out / CONFIG_FILE
        try:
            doc = parse_yaml(path.read_text(encoding="utf-8"), path, what="qdrant config")
        except SpecError as error:
            return [CheckResult(CONFIG_FILE, tool, "failed", error.what)]
        problems = config_problems(doc.data, doc.lines)
        if not problems:
            keys = sum(1 for _ in _leaves(doc.data))
            return [CheckResult(CONFIG_FILE, tool, "ok", f"{keys} keys known to Qdrant")]
        return [CheckResult(CONFIG_FILE, tool, "failed", p.message, p.line) for p in problems]


SERVICE = Qdrant()
SERVICES = (SERVICE,)
