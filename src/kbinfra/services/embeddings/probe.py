"""The embedding service: healthy, embeds a sentence at the configured dimension with the
stack's key and refuses without it, serves the rendered models. Bench: sentences per second
and latency for single sentences and for batches of the tuned batch size.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    Operation,
    ProbeContext,
    Threshold,
    latency_stats,
    require,
    run_load,
)
from kbinfra.services.embeddings.service import (
    API_KEY_HEADER,
    HEALTH_PATH,
    EmbeddingsSettings,
    EmbeddingsTune,
)

if TYPE_CHECKING:
    import httpx

SECRET = "embeddings_api_key"
TIMEOUT_S = 60.0
#: The guide's HighEmbeddingLatency alert: p95 of embedding_generation_duration_seconds > 2 s.
EMBED_P95_S = 2.0
_WORDS = [
    "invoice",
    "payment",
    "refund",
    "policy",
    "customer",
    "account",
    "password",
    "reset",
    "login",
    "support",
    "ticket",
    "warranty",
    "shipping",
    "delivery",
    "order",
    "status",
    "contract",
    "renewal",
    "pricing",
    "plan",
    "upgrade",
    "storage",
    "backup",
    "restore",
    "document",
    "upload",
    "search",
    "result",
    "knowledge",
    "base",
    "article",
    "answer",
    "question",
    "employee",
    "handbook",
    "holiday",
    "travel",
    "expense",
    "approval",
    "manager",
    "report",
    "quarterly",
    "revenue",
]


def client(base_url: str, key: str | None) -> httpx.Client:
    import httpx  # noqa: PLC0415

    headers = {API_KEY_HEADER: key} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT_S)


def sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 20))]
    return " ".join(words).capitalize() + "."


def default_dimension(settings: EmbeddingsSettings) -> int:
    return next(m.dimension for m in settings.models if m.name == settings.default_model)


# --------------------------------------------------------------------------- checks
def check_health(base: str) -> str:
    with client(base, None) as http:
        response = http.get(HEALTH_PATH)
    require(response.status_code == 200, f"{HEALTH_PATH} answered HTTP {response.status_code}")
    return f"{HEALTH_PATH} 200, default model {response.json().get('model')} loaded"


def check_embed(base: str, key: str, model: str, dimension: int) -> str:
    with client(base, key) as http:
        response = http.post("/embed", json={"texts": ["kbinfra checks one sentence."]})
    require(response.status_code == 200, f"/embed answered HTTP {response.status_code}")
    body = response.json()
    vectors = body.get("embeddings") or []
    require(len(vectors) == 1, f"{len(vectors)} vectors for one sentence")
    require(
        len(vectors[0]) == dimension and body.get("dimension") == dimension,
        f"{len(vectors[0])} dimensions, {model} is configured with {dimension}",
    )
    return f"{dimension} dims from {body.get('model')} in {body.get('elapsed_ms')} ms"


def check_refuses_without_key(base: str, required: bool) -> str:
    if not required:
        raise CheckFailedError("require_api_key is false: anyone reaching /embeddings/ embeds")
    with client(base, None) as http:
        response = http.post("/embed", json={"texts": ["no key"]})
    require(response.status_code == 401, f"/embed without a key: HTTP {response.status_code}")
    return "HTTP 401 without a key"


def check_models(base: str, key: str, settings: EmbeddingsSettings) -> str:
    with client(base, key) as http:
        response = http.get("/models")
    require(response.status_code == 200, f"/models answered HTTP {response.status_code}")
    body: dict[str, Any] = response.json()
    served = {m["name"]: m["dimension"] for m in body.get("models", [])}
    wanted = {m.name: m.dimension for m in settings.models}
    require(served == wanted, f"serves {served}, rendered {wanted}")
    require(
        body.get("default") == settings.default_model,
        f"default model {body.get('default')}, rendered {settings.default_model}",
    )
    return f"{len(wanted)} models as rendered, default {settings.default_model}"


def checks(probe: ProbeContext) -> list[CheckRow]:
    settings: EmbeddingsSettings = probe.settings
    key = probe.secret(SECRET)
    dimension = default_dimension(settings)
    rows = Checks(probe.name)
    rows.run(
        "health",
        "reachable",
        lambda: check_health(probe.url()),
        fix="the default model must load from the models volume: see `docker logs` of the "
        "container (it names the folder it searched)",
    )
    rows.run(
        "embed-one-sentence",
        "reachable",
        lambda: check_embed(probe.url(), key, settings.default_model, dimension),
        fix="the service must accept embeddings_api_key of secrets.yaml (its keys file): re-apply",
        needs="health",
    )
    rows.run(
        "refuses-without-key",
        "locked-down",
        lambda: check_refuses_without_key(probe.url(), settings.require_api_key),
        fix="set services.embeddings.require_api_key: true and re-apply",
    )
    rows.run(
        "models-as-rendered",
        "configured",
        lambda: check_models(probe.url(), key, settings),
        fix="the service reads another config.json than rendered: `kbinfra apply`",
        needs="health",
    )
    return rows.rows


# --------------------------------------------------------------------------- bench
def _run(probe: ProbeContext, plan: BenchPlan, key: str, *, batch: int, name: str) -> BenchResult:
    base = probe.url()

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        http = client(base, key)
        rng = random.Random(index)

        def operation() -> int:
            texts = [sentence(rng) for _ in range(batch)]
            http.post("/embed", json={"texts": texts}).raise_for_status()
            return batch

        return operation, http.close

    run = run_load(
        make_worker,
        concurrency=1,
        budget=plan.budget(plan.scale(20_000, 1_000_000)),
        stop=plan.stop,
    )
    return BenchResult(
        service=probe.name,
        name=name,
        workload=(
            "one sentence of 8-20 words per request"
            if batch == 1
            else f"batches of {batch} sentences of 8-20 words (the tuned batch size)"
        ),
        client="kbinfra (httpx)",
        concurrency=1,
        duration_s=run.elapsed_s,
        operations=run.operations,
        unit="sentences",
        latency=latency_stats(run.samples),
        latency_of="per request",
        thresholds=(
            Threshold("p95_s", "<", EMBED_P95_S, "guide alert HighEmbeddingLatency (p95 > 2 s)"),
        ),
        error=run.error,
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    key = probe.secret(SECRET)
    tune: EmbeddingsTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    probe.note("single sentences")
    results = [_run(probe, plan, key, batch=1, name="embed-single")]
    if not plan.stop.is_set():
        probe.note(f"batches of {tune.batch_size}")
        results.append(_run(probe, plan, key, batch=tune.batch_size, name="embed-batch"))
    return results


__all__ = ["bench", "checks"]
