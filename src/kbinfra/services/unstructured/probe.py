"""Unstructured API: healthy, partitions a small document with the stack's key, refuses one
without it. Bench: documents per second on a small generated corpus (Markdown, text, HTML).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckRow,
    Checks,
    Operation,
    ProbeContext,
    Threshold,
    latency_stats,
    require,
    run_load,
)
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.unstructured.service import (
    API_KEY_HEADER,
    API_PATH,
    CLIENT_SECRET,
    HEALTH_PATH,
    UPSTREAM_SECRET,
    UnstructuredSettings,
    UnstructuredTune,
)

if TYPE_CHECKING:
    import httpx

SECRET = CLIENT_SECRET
TIMEOUT_S = 120.0
#: A small text document must take a tenth of what the app waits for any document at most.
SMALL_DOCUMENT_SHARE = 0.1
#: Documents per second and per concurrent document, for a small text file: a sanity floor.
DOCS_FLOOR_PER_SLOT = 1.0
_TOPICS = ("Refunds", "Passwords", "Shipping", "Warranty", "Invoices", "Onboarding", "Backups")


def client(base_url: str, key: str | None) -> httpx.Client:
    import httpx  # noqa: PLC0415

    headers = {API_KEY_HEADER: key} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT_S)


def document(rng: random.Random, index: int) -> tuple[str, bytes, str]:
    """A small document (file name, bytes, content type): a title and a few paragraphs."""
    topic = rng.choice(_TOPICS)
    paragraphs = [
        " ".join(
            f"{topic.lower()} policy item {index}-{p}-{w} applies to every customer account."
            for w in range(rng.randint(3, 8))
        )
        for p in range(rng.randint(2, 5))
    ]
    kind = index % 3
    if kind == 0:
        text = f"# {topic} {index}\n\n" + "\n\n".join(paragraphs) + "\n"
        return f"kbinfra-{index}.md", text.encode(), "text/markdown"
    if kind == 1:
        text = f"{topic.upper()} {index}\n\n" + "\n\n".join(paragraphs) + "\n"
        return f"kbinfra-{index}.txt", text.encode(), "text/plain"
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    html = f"<html><body><h1>{topic} {index}</h1>{body}</body></html>"
    return f"kbinfra-{index}.html", html.encode(), "text/html"


def partition(http: httpx.Client, file: tuple[str, bytes, str]) -> httpx.Response:
    return http.post(API_PATH, files={"files": file}, data={"strategy": "auto"})


# --------------------------------------------------------------------------- checks
def check_health(base: str) -> str:
    with client(base, None) as http:
        response = http.get(HEALTH_PATH)
    require(response.status_code == 200, f"{HEALTH_PATH} answered HTTP {response.status_code}")
    return f"{HEALTH_PATH} 200"


def check_partition(base: str, key: str) -> str:
    file = document(random.Random(0), 0)
    with client(base, key) as http:
        response = partition(http, file)
    require(response.status_code == 200, f"partition answered HTTP {response.status_code}")
    elements = response.json()
    require(isinstance(elements, list) and bool(elements), "no elements in the answer")
    kinds = sorted({e.get("type", "?") for e in elements})
    return f"{len(elements)} elements ({', '.join(kinds)}) from {file[0]}"


def check_refuses_without_key(base: str) -> str:
    with client(base, None) as http:
        response = partition(http, document(random.Random(0), 0))
    require(response.status_code == 401, f"partition without a key: HTTP {response.status_code}")
    return "HTTP 401 without a key"


def check_refuses_other_keys(base: str, upstream_key: str) -> str:
    """Through the key gate, a made-up key and the API's own key are refused: only the
    clients' key goes through (the API's own is nginx's to send, never a client's)."""
    for what, key in (
        ("a made-up key", "kbinfra-check-" + secrets.token_urlsafe(16)),
        ("the API's own key", upstream_key),
    ):
        with client(base, key) as http:
            response = partition(http, document(random.Random(0), 0))
        require(response.status_code == 401, f"partition with {what}: HTTP {response.status_code}")
    return "HTTP 401 for a made-up key and for the API's own"


def checks(probe: ProbeContext) -> list[CheckRow]:
    key = probe.secret(SECRET)
    behind_gate = gated(probe.ctx)
    rows = Checks(probe.name)
    rows.run(
        "healthcheck",
        "reachable",
        lambda: check_health(probe.url()),
        fix="check `kbinfra status` and the container's log",
    )
    rows.run(
        "partition-small-document",
        "reachable",
        lambda: check_partition(probe.url(), key),
        fix=(
            "nginx's key gate must accept unstructured_api_key and send the API "
            "unstructured_upstream_key: re-apply"
            if behind_gate
            else "the container must get unstructured_api_key as UNSTRUCTURED_API_KEY: re-apply"
        ),
        needs="healthcheck",
    )
    rows.run(
        "refuses-without-key",
        "locked-down",
        lambda: check_refuses_without_key(probe.url()),
        fix="UNSTRUCTURED_API_KEY must be set in the container: re-apply the stack",
    )
    if behind_gate:
        rows.run(
            "refuses-other-keys",
            "locked-down",
            lambda: check_refuses_other_keys(probe.url(), probe.secret(UPSTREAM_SECRET)),
            fix="nginx's keys file must accept unstructured_api_key alone: re-apply the stack",
        )
    return rows.rows


# --------------------------------------------------------------------------- bench
def thresholds(settings: UnstructuredSettings, concurrency: int) -> tuple[Threshold, ...]:
    return (
        Threshold(
            "throughput",
            ">=",
            DOCS_FLOOR_PER_SLOT * concurrency,
            f"sanity floor: {DOCS_FLOOR_PER_SLOT:g} small document/s per concurrent document",
        ),
        Threshold(
            "p95_s",
            "<",
            settings.processing_timeout_s * SMALL_DOCUMENT_SHARE,
            "a tenth of processing_timeout_s for a small text document",
        ),
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    settings: UnstructuredSettings = probe.settings
    tune: UnstructuredTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    key = probe.secret(SECRET)
    base = probe.url()
    corpus = [document(random.Random(i), i) for i in range(30)]
    concurrency = tune.concurrency

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        http = client(base, key)
        turn = [index]

        def operation() -> int:
            file = corpus[turn[0] % len(corpus)]
            turn[0] += concurrency
            partition(http, file).raise_for_status()
            return 1

        return operation, http.close

    probe.note(f"partitioning a corpus of {len(corpus)} small documents, {concurrency} at once")
    run = run_load(
        make_worker,
        concurrency=concurrency,
        budget=plan.budget(plan.scale(1_000, 100_000)),
        stop=plan.stop,
    )
    return [
        BenchResult(
            service=probe.name,
            name="partition",
            workload=f"{len(corpus)} generated Markdown/text/HTML files of 1-4 KB, strategy auto",
            client="kbinfra (httpx)",
            concurrency=concurrency,
            duration_s=run.elapsed_s,
            operations=run.operations,
            unit="docs",
            latency=latency_stats(run.samples),
            latency_of="per document",
            thresholds=thresholds(settings, concurrency),
            error=run.error,
        )
    ]


__all__ = ["bench", "checks"]
