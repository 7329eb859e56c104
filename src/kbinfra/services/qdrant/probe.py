"""Qdrant: ready, the api key lists collections, nothing without a key, no writes with the
read-only key, and a new collection gets the rendered optimizer and WAL settings. Bench: a
temporary collection of the configured dimension, upserts in batches, searches, and
recall@10 of the default search against an exact one.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import (
    CHECK_PREFIX,
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    Operation,
    ProbeContext,
    Threshold,
    failed_bench,
    is_bench_name,
    latency_stats,
    require,
    require_same,
    run_load,
    uninterrupted,
)
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.qdrant.service import (
    API_KEY,
    READ_ONLY_KEY,
    UPSTREAM_API_KEY,
    UPSTREAM_READ_ONLY_KEY,
    QdrantSettings,
    QdrantTune,
)

if TYPE_CHECKING:
    import httpx

TIMEOUT_S = 30.0
#: The guide's HighSearchLatency alert: p95 of a knowledge-base search above 0.5 s.
SEARCH_P95_S = 0.5
#: Qdrant's HNSW defaults (m 16, ef_construct 100) find at least this share of the exact top
#: 10 on embedding-like data; below it the index (or its parameters) is broken.
RECALL_FLOOR = 0.9
UPLOAD_FLOOR_PER_CORE = 500.0  # vectors/s: a sanity floor, an order below a healthy server
BATCH = 256
UPLOAD_CONCURRENCY = 2
SEARCH_CONCURRENCY = 4
CLUSTERS = 64  # bench vectors lie around this many centres, as embeddings of topics do
GREEN_WAIT_S = 120.0
#: A read, which both client keys may call, with an empty request message.
LIST_METHOD = "/qdrant.Collections/List"


def client(base_url: str, key: str | None, timeout: float = TIMEOUT_S) -> httpx.Client:
    import httpx  # noqa: PLC0415

    headers = {"api-key": key} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout)


def expected_collection_config(tune: QdrantTune) -> dict[str, str]:
    """What ``GET /collections/{c}`` reports for a collection created without overrides:
    Qdrant copies the server's storage.optimizers and storage.wal into it at creation."""
    return {
        "optimizer_config.default_segment_number": str(tune.default_segment_number),
        "optimizer_config.max_segment_size": str(tune.max_segment_size_kb),
        "optimizer_config.indexing_threshold": str(tune.indexing_threshold_kb),
        "optimizer_config.flush_interval_sec": str(tune.flush_interval_sec),
        "optimizer_config.max_optimization_threads": str(tune.max_optimization_threads),
        "wal_config.wal_capacity_mb": str(tune.wal_capacity_mb),
        "wal_config.wal_segments_ahead": str(tune.wal_segments_ahead),
    }


def reported_config(config: dict[str, Any], names: Sequence[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        section, key = name.split(".", 1)
        value = (config.get(section) or {}).get(key)
        found[name] = None if value is None else str(value)
    return found


def _status(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}"


# --------------------------------------------------------------------------- checks
def check_ready(base: str) -> str:
    with client(base, None) as http:
        response = http.get("/readyz")
    require(response.status_code == 200, f"/readyz answered {_status(response)}")
    return "/readyz 200"


def check_collections(base: str, key: str) -> str:
    with client(base, key) as http:
        response = http.get("/collections")
    require(response.status_code == 200, f"GET /collections with the key: {_status(response)}")
    names = [c["name"] for c in response.json()["result"]["collections"]]
    return f"GET /collections with the api key: {len(names)} collections"


def check_refuses_without_key(base: str) -> str:
    with client(base, None) as http:
        response = http.get("/collections")
    require(
        response.status_code in (401, 403),
        f"GET /collections without a key answered {_status(response)}",
    )
    return f"{_status(response)} without a key"


def check_refuses_other_keys(base: str, own_keys: Sequence[str]) -> str:
    """Through the key gate, a made-up key and Qdrant's own keys are refused, in ``api-key``
    and as a Bearer token: only the clients' keys go through (Qdrant's own are nginx's to
    send, never a client's)."""
    import httpx  # noqa: PLC0415

    keys = [("a made-up key", "kbinfra-check-" + secrets.token_urlsafe(16))]
    keys += [("Qdrant's own key", key) for key in own_keys]
    with httpx.Client(base_url=base, timeout=TIMEOUT_S) as http:
        for what, key in keys:
            for form, headers in (
                ("api-key", {"api-key": key}),
                ("Bearer", {"Authorization": f"Bearer {key}"}),
            ):
                response = http.get("/collections", headers=headers)
                require(
                    response.status_code == 401,
                    f"GET /collections with {what} ({form}): {_status(response)}",
                )
    return "HTTP 401 for a made-up key and for Qdrant's own, in api-key and as Bearer"


def check_grpc_with_api_key(address: tuple[str, int], api_key: str) -> str:
    """Through the key gate's gRPC listener, the clients' key lists collections."""
    from kbinfra.probing.grpc_status import OK, grpc_status  # noqa: PLC0415

    answer = grpc_status(*address, LIST_METHOD, [("api-key", api_key)], timeout_s=TIMEOUT_S)
    require(answer.code == OK, f"{LIST_METHOD}: gRPC status {answer.code} {answer.message}")
    return f"{LIST_METHOD}: OK"


def check_grpc_refuses_other_keys(address: tuple[str, int], own_keys: Sequence[str]) -> str:
    """Through the key gate's gRPC listener, a made-up key and Qdrant's own keys are
    refused (UNAUTHENTICATED), in ``api-key`` and as a Bearer token."""
    from kbinfra.probing.grpc_status import UNAUTHENTICATED, grpc_status  # noqa: PLC0415

    keys = [("a made-up key", "kbinfra-check-" + secrets.token_urlsafe(16))]
    keys += [("Qdrant's own key", key) for key in own_keys]
    for what, key in keys:
        for form, metadata in (
            ("api-key", ("api-key", key)),
            ("Bearer", ("authorization", f"Bearer {key}")),
        ):
            answer = grpc_status(*address, LIST_METHOD, [metadata], timeout_s=TIMEOUT_S)
            require(
                answer.code == UNAUTHENTICATED,
                f"{LIST_METHOD} with {what} ({form}): gRPC status {answer.code} {answer.message}",
            )
    return "UNAUTHENTICATED for a made-up key and for Qdrant's own, in api-key and as Bearer"


def check_read_only_key(base: str, read_only_key: str, api_key: str) -> str:
    """The read-only key reads but cannot create a collection (403, not 401: a key Qdrant
    does not know would be refused for that reason and prove nothing)."""
    name = f"{CHECK_PREFIX}{secrets.token_hex(6)}"
    with client(base, read_only_key) as http:
        read = http.get("/collections")
        require(read.status_code == 200, f"the read-only key cannot read: {_status(read)}")
        write = http.put(f"/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}})
    if write.status_code < 300:
        with client(base, api_key) as admin:
            admin.delete(f"/collections/{name}")
        raise CheckFailedError("the read-only key created a collection")
    require(write.status_code == 403, f"write with the read-only key: {_status(write)}")
    return "reads 200, collection create 403"


def check_collection_defaults(base: str, key: str, dimension: int, tune: QdrantTune) -> str:
    name = f"{CHECK_PREFIX}{secrets.token_hex(6)}"
    expected = expected_collection_config(tune)
    with client(base, key) as http:
        created = http.put(
            f"/collections/{name}", json={"vectors": {"size": dimension, "distance": "Cosine"}}
        )
        require(created.status_code == 200, f"creating {name}: {_status(created)}")
        try:
            info = http.get(f"/collections/{name}")
            require(info.status_code == 200, f"reading {name}: {_status(info)}")
            config = info.json()["result"]["config"]
        finally:
            with uninterrupted():
                http.delete(f"/collections/{name}")
    return require_same(expected, reported_config(config, list(expected)))


def checks(probe: ProbeContext) -> list[CheckRow]:
    settings: QdrantSettings = probe.settings
    api_key, read_only = probe.secret(API_KEY), probe.secret(READ_ONLY_KEY)
    tune: QdrantTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    rows = Checks(probe.name)
    rows.run(
        "ready",
        "reachable",
        lambda: check_ready(probe.url()),
        fix="check `kbinfra status`; /readyz answers 503 until every shard is loaded",
    )
    rows.run(
        "collections-with-api-key",
        "reachable",
        lambda: check_collections(probe.url(), api_key),
        fix=(
            "nginx's key gate must accept qdrant_api_key and send Qdrant "
            "qdrant_upstream_api_key: re-apply"
            if gated(probe.ctx)
            else "the container must get qdrant_api_key as QDRANT__SERVICE__API_KEY: re-apply"
        ),
        needs="ready",
    )
    rows.run(
        "refuses-without-key",
        "locked-down",
        lambda: check_refuses_without_key(probe.url()),
        fix="set service.api_key (QDRANT__SERVICE__API_KEY): re-apply the stack",
    )
    if gated(probe.ctx):
        own = [probe.secret(UPSTREAM_API_KEY), probe.secret(UPSTREAM_READ_ONLY_KEY)]
        rows.run(
            "refuses-other-keys",
            "locked-down",
            lambda: check_refuses_other_keys(probe.url(), own),
            fix="nginx's keys file must accept the clients' keys alone: re-apply the stack",
        )
        grpc_port = settings.grpc_port
        if grpc_port is not None:
            rows.run(
                "grpc-with-api-key",
                "reachable",
                lambda: check_grpc_with_api_key(probe.address(grpc_port), api_key),
                fix="nginx's gRPC listener must pass qdrant_api_key on to Qdrant's gRPC port "
                "with Qdrant's own key: re-apply the stack",
                needs="ready",
            )
            rows.run(
                "grpc-refuses-other-keys",
                "locked-down",
                lambda: check_grpc_refuses_other_keys(probe.address(grpc_port), own),
                fix="nginx's keys file must accept the clients' keys alone: re-apply the stack",
            )
    rows.run(
        "read-only-key-cannot-write",
        "locked-down",
        lambda: check_read_only_key(probe.url(), read_only, api_key),
        fix="set service.read_only_api_key to qdrant_read_only_api_key, not the admin key",
    )
    rows.run(
        "collection-defaults-as-rendered",
        "configured",
        lambda: check_collection_defaults(
            probe.url(), api_key, settings.collection_dimension, tune
        ),
        fix="Qdrant runs other optimizer/WAL settings than rendered: `kbinfra apply` "
        "recreates it with the rendered config.yaml",
        needs="collections-with-api-key",
    )
    return rows.rows


# --------------------------------------------------------------------------- bench
def centres(dimension: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(dimension)] for _ in range(CLUSTERS)]


def vector_near(rng: random.Random, centre: Sequence[float], spread: float = 0.3) -> list[float]:
    return [round(c + rng.gauss(0, spread), 5) for c in centre]


def recall_at_10(approximate: Sequence[Sequence[Any]], exact: Sequence[Sequence[Any]]) -> float:
    """Mean share of each exact top 10 that the approximate search also returned."""
    if not exact:
        return 0.0
    shares = [
        len(set(a) & set(e)) / len(e) if e else 1.0 for a, e in zip(approximate, exact, strict=True)
    ]
    return sum(shares) / len(shares)


def thresholds(cpus: float) -> dict[str, tuple[Threshold, ...]]:
    return {
        "upsert": (
            Threshold(
                "throughput",
                ">=",
                UPLOAD_FLOOR_PER_CORE * max(1.0, cpus),
                f"sanity floor: {UPLOAD_FLOOR_PER_CORE:g} vectors/s per Qdrant core",
            ),
        ),
        "search": (
            Threshold("p95_s", "<", SEARCH_P95_S, "guide alert HighSearchLatency (p95 > 0.5 s)"),
            Threshold("recall_at_10", ">=", RECALL_FLOOR, "HNSW defaults on clustered data"),
        ),
    }


def sweep(http: httpx.Client) -> list[str]:
    response = http.get("/collections")
    response.raise_for_status()
    removed = []
    for entry in response.json()["result"]["collections"]:
        if is_bench_name(entry["name"]):
            http.delete(f"/collections/{entry['name']}").raise_for_status()
            removed.append(entry["name"])
    return removed


def _upsert(
    probe: ProbeContext, plan: BenchPlan, key: str, dimension: int, limits: tuple[Threshold, ...]
) -> BenchResult:
    base = probe.url()
    total = plan.scale(1_000, 20_000)
    hubs = centres(dimension, 1)
    next_id = [0]
    take = threading.Lock()

    def claim() -> range:
        with take:
            start = next_id[0]
            next_id[0] = min(total, start + BATCH)
            return range(start, next_id[0])

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        http = client(base, key)
        rng = random.Random(1000 + index)

        def operation() -> int:
            ids = claim()
            if not ids:
                return 0
            body = {
                "points": [{"id": i, "vector": vector_near(rng, hubs[i % CLUSTERS])} for i in ids]
            }
            response = http.put(f"/collections/{plan.prefix}/points?wait=true", json=body)
            response.raise_for_status()
            return len(ids)

        return operation, http.close

    run = run_load(
        make_worker,
        concurrency=UPLOAD_CONCURRENCY,
        budget=plan.budget(total, seconds=plan.seconds * 4),
        stop=plan.stop,
    )
    return BenchResult(
        service=probe.name,
        name="upsert",
        workload=f"{run.operations:,} vectors of {dimension} dims, batches of {BATCH}, wait=true",
        client="kbinfra (httpx)",
        concurrency=UPLOAD_CONCURRENCY,
        duration_s=run.elapsed_s,
        operations=run.operations,
        unit="vectors",
        latency=latency_stats(run.samples),
        latency_of=f"per batch of {BATCH}",
        thresholds=limits,
        error=run.error,
    )


def _wait_green(http: httpx.Client, name: str, stop: Any) -> float:
    """Seconds until the collection's optimizers are done (indexing), bounded."""
    started = time.monotonic()
    while time.monotonic() - started < GREEN_WAIT_S and not stop.is_set():
        status = http.get(f"/collections/{name}").json()["result"].get("status")
        if status in ("green", None):
            break
        time.sleep(0.5)
    return time.monotonic() - started


def _search(
    probe: ProbeContext,
    plan: BenchPlan,
    *,
    key: str,
    dimension: int,
    points: int,
    limits: tuple[Threshold, ...],
) -> BenchResult:
    base = probe.url()
    hubs = centres(dimension, 1)

    def query(rng: random.Random) -> list[float]:
        return vector_near(rng, hubs[rng.randrange(CLUSTERS)])

    with client(base, key) as http:
        indexing = _wait_green(http, plan.prefix, plan.stop)

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        http = client(base, key)
        rng = random.Random(2000 + index)

        def operation() -> int:
            body = {"query": query(rng), "limit": 10}
            http.post(f"/collections/{plan.prefix}/points/query", json=body).raise_for_status()
            return 1

        return operation, http.close

    run = run_load(
        make_worker,
        concurrency=SEARCH_CONCURRENCY,
        budget=plan.budget(plan.scale(20_000, 1_000_000)),
        stop=plan.stop,
    )
    recall = _recall(base, key, plan, query, plan.scale(20, 100))
    extra = {"indexing_wait_s": indexing}
    if recall is not None:
        extra["recall_at_10"] = recall
    return BenchResult(
        service=probe.name,
        name="search",
        workload=f"top-10 cosine searches in {points:,} vectors of {dimension} dims",
        client="kbinfra (httpx)",
        concurrency=SEARCH_CONCURRENCY,
        duration_s=run.elapsed_s,
        operations=run.operations,
        unit="searches",
        latency=latency_stats(run.samples),
        latency_of="per search",
        thresholds=limits,
        extra=extra,
        error=run.error,
    )


def _recall(
    base: str,
    key: str,
    plan: BenchPlan,
    query: Callable[[random.Random], list[float]],
    count: int,
) -> float | None:
    rng = random.Random(3000)
    approximate, exact = [], []
    with client(base, key) as http:
        for _ in range(count):
            if plan.stop.is_set():
                return None
            vector = query(rng)
            found = []
            for params in ({}, {"params": {"exact": True}}):
                response = http.post(
                    f"/collections/{plan.prefix}/points/query",
                    json={"query": vector, "limit": 10, **params},
                )
                response.raise_for_status()
                found.append([p["id"] for p in response.json()["result"]["points"]])
            approximate.append(found[0])
            exact.append(found[1])
    return recall_at_10(approximate, exact)


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    settings: QdrantSettings = probe.settings
    key = probe.secret(API_KEY)
    dimension = settings.collection_dimension
    limits = thresholds(probe.ctx.resources.cpus)
    base = probe.url()
    results: list[BenchResult] = []
    try:
        with client(base, key) as http:
            removed = sweep(http)
            if removed:
                probe.note(f"removed leftovers of an earlier bench: {', '.join(removed)}")
            created = http.put(
                f"/collections/{plan.prefix}",
                json={"vectors": {"size": dimension, "distance": "Cosine"}},
            )
            if created.status_code != 200:
                return [
                    failed_bench(
                        probe.name, "upsert", "-", f"creating {plan.prefix}: {_status(created)}"
                    )
                ]
        probe.note(f"upserting into collection {plan.prefix} ({dimension} dims)")
        upsert = _upsert(probe, plan, key, dimension, limits["upsert"])
        results.append(upsert)
        if upsert.error is None and not plan.stop.is_set():
            probe.note(f"searching {upsert.operations:,} vectors, then recall@10 against exact")
            results.append(
                _search(
                    probe,
                    plan,
                    key=key,
                    dimension=dimension,
                    points=upsert.operations,
                    limits=limits["search"],
                )
            )
    finally:
        with uninterrupted(), client(base, key) as http:
            http.delete(f"/collections/{plan.prefix}")
            probe.note(f"removed collection {plan.prefix}")
    return results


__all__ = ["bench", "checks"]
