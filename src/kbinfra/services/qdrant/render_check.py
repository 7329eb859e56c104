"""``kbinfra render --check`` for Qdrant: no Qdrant binary runs here, so every key of the
rendered config is checked against the keys the pinned version reads.
"""

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from kbinfra.errors import SpecError
from kbinfra.service import CheckResult, ServiceContext
from kbinfra.services.qdrant.service import CONFIG_FILE, SERVICE
from kbinfra.spec.yamlfile import parse_yaml


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """No Qdrant binary runs here: check every key against the pinned version's schema."""
    tool = f"qdrant schema ({SERVICE.default_image.rsplit(':', 1)[-1]})"
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
