"""The reference knowledge-base app of kbinfra's test bed: small, but real.

``serve`` (the default) runs the API: ``POST /documents`` stores an upload in PostgreSQL and
queues a Celery task (202 ``{"id"}``); ``GET /documents/{id}`` says queued, processing, done
or failed; ``GET /search?q=&limit=`` embeds the query, searches Qdrant and joins PostgreSQL;
``GET /health`` (503 in an image that sets ``KB_APP_FAIL_HEALTH``: a release whose health
check fails, for the rollout tests); ``GET /metrics``. ``worker`` runs a Celery worker on
every queue of the app: it partitions the document through the Unstructured API, embeds the
chunks, upserts them into Qdrant and marks the document done. ``migrate`` creates the tables
(the stack file's ``app.migrate: [migrate]``, run before the API starts). ``ping`` asks this
container's worker for a Celery pong.

Test-bed behaviour, for the rollout tests: ``POST /documents?processing_delay_s=N`` makes the
worker hold that document for N seconds (at most 600) after marking it ``processing`` and
before partitioning it: a slow task that is still running when its worker is replaced, so a
test can see Celery's warm shutdown finish it. ``GET /documents/{id}`` also counts the
document's chunks (a document processed twice would have each chunk twice).

It reads only the environment kbinfra generates: the file named by ``KBINFRA_ENV_FILE``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import uvicorn
from celery import Celery
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

#: The queues this app's tasks go to; `worker` consumes every one.
QUEUES = ("documents",)
COLLECTION = "kb_chunks"
#: Elements shorter than this are merged into the next chunk (titles, list bullets).
MIN_CHUNK_CHARS = 40
MAX_CHUNK_CHARS = 1000
EMBED_BATCH = 32
MIGRATION_LOCK = 7_140_014
HTTP_TIMEOUT_S = 120.0

log = logging.getLogger("kb_app")


def load_env_file() -> None:
    """``NAME=value`` lines of ``$KBINFRA_ENV_FILE`` into the environment."""
    path = os.environ.get("KBINFRA_ENV_FILE")
    if not path:
        return
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                name, _, value = line.partition("=")
                os.environ[name.strip()] = value.strip()


load_env_file()  # before the Celery app is made: it reads the broker's URL once

celery_app = Celery(
    "kb_app",
    broker=os.environ.get("CELERY_BROKER_URL", "memory://"),
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
)
celery_app.conf.update(
    task_default_queue=QUEUES[0],
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: kbinfra's env file should define it")
    return value


# --------------------------------------------------------------------------- PostgreSQL
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS documents (
        id uuid PRIMARY KEY,
        filename text NOT NULL,
        content_type text NOT NULL,
        body bytea NOT NULL,
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'processing', 'done', 'failed')),
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        processed_at timestamptz
    )""",
    """CREATE TABLE IF NOT EXISTS chunks (
        id uuid PRIMARY KEY,
        document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
        position integer NOT NULL,
        text text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id)",
)


@contextmanager
def database() -> Iterator[Any]:
    with psycopg.connect(env("DATABASE_URL"), autocommit=True, connect_timeout=10) as conn:
        yield conn


def migrate(wait_s: float = 120.0) -> None:
    """Create the tables (idempotent), one replica at a time; waits for the database."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with database() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
                try:
                    for statement in SCHEMA:
                        conn.execute(statement)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            return
        except Exception as error:
            if time.monotonic() > deadline:
                raise
            log.warning("migrate: database not ready (%s); retrying", type(error).__name__)
            time.sleep(2)


# --------------------------------------------------------------------------- the services
def http() -> Any:
    return httpx.Client(timeout=HTTP_TIMEOUT_S)


def embed(client: Any, texts: list[str]) -> list[list[float]]:
    headers = {}
    if os.environ.get("EMBEDDINGS_API_KEY"):
        headers["X-API-Key"] = os.environ["EMBEDDINGS_API_KEY"]
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        response = client.post(
            f"{env('EMBEDDINGS_URL')}/embed",
            json={"texts": texts[start : start + EMBED_BATCH]},
            headers=headers,
        )
        response.raise_for_status()
        vectors += response.json()["embeddings"]
    return vectors


def qdrant(client: Any, method: str, path: str, body: Any = None) -> Any:
    return client.request(
        method, f"{env('QDRANT_URL')}{path}", json=body, headers={"api-key": env("QDRANT_API_KEY")}
    )


def ensure_collection(client: Any, dimension: int) -> None:
    exists = qdrant(client, "GET", f"/collections/{COLLECTION}/exists")
    exists.raise_for_status()
    if exists.json()["result"]["exists"]:
        return
    created = qdrant(
        client,
        "PUT",
        f"/collections/{COLLECTION}",
        {"vectors": {"size": dimension, "distance": "Cosine"}},
    )
    if created.status_code != 409:  # another worker made it first
        created.raise_for_status()


def partition(client: Any, filename: str, content_type: str, body: bytes) -> list[str]:
    response = client.post(
        env("UNSTRUCTURED_API_URL"),
        files={"files": (filename, body, content_type)},
        data={"strategy": "fast"},
        headers={"unstructured-api-key": env("UNSTRUCTURED_API_KEY")},
    )
    response.raise_for_status()
    return [str(e.get("text") or "").strip() for e in response.json()]


def chunk(texts: list[str]) -> list[str]:
    """Elements as chunks; short ones (titles) join the next, long ones are cut."""
    chunks: list[str] = []
    pending = ""
    for text in texts:
        if not text:
            continue
        pending = f"{pending} {text}".strip() if pending else text
        if len(pending) >= MIN_CHUNK_CHARS:
            chunks += [
                pending[i : i + MAX_CHUNK_CHARS] for i in range(0, len(pending), MAX_CHUNK_CHARS)
            ]
            pending = ""
    if pending:
        chunks.append(pending)
    return chunks


# --------------------------------------------------------------------------- the worker
MAX_PROCESSING_DELAY_S = 600.0


@celery_app.task(name="kb.process_document")
def process_document(document_id: str, processing_delay_s: float = 0.0) -> None:
    with database() as conn:
        row = conn.execute(
            "UPDATE documents SET status = 'processing' WHERE id = %s "
            "RETURNING filename, content_type, body",
            (document_id,),
        ).fetchone()
    if row is None:
        return
    filename, content_type, body = row
    if processing_delay_s > 0:  # the test bed's slow task (module docstring)
        log.info("document %s: held for %.1f s before processing", document_id, processing_delay_s)
        time.sleep(min(processing_delay_s, MAX_PROCESSING_DELAY_S))
    try:
        with http() as client:
            chunks = chunk(partition(client, filename, content_type, bytes(body)))
            if not chunks:
                raise ValueError("the document holds no text")
            vectors = embed(client, chunks)
            ensure_collection(client, len(vectors[0]))
            ids = [str(uuid.uuid4()) for _ in chunks]
            points = [
                {"id": i, "vector": v, "payload": {"document_id": document_id, "text": t}}
                for i, v, t in zip(ids, vectors, chunks, strict=True)
            ]
            upserted = qdrant(
                client, "PUT", f"/collections/{COLLECTION}/points?wait=true", {"points": points}
            )
            upserted.raise_for_status()
        with database() as conn, conn.transaction():
            for position, (chunk_id, text) in enumerate(zip(ids, chunks, strict=True)):
                conn.execute(
                    "INSERT INTO chunks (id, document_id, position, text) VALUES (%s, %s, %s, %s)",
                    (chunk_id, document_id, position, text),
                )
            conn.execute(
                "UPDATE documents SET status = 'done', processed_at = now() WHERE id = %s",
                (document_id,),
            )
        log.info("document %s: %d chunks", document_id, len(chunks))
    except Exception as error:
        log.exception("document %s failed", document_id)
        with database() as conn:
            conn.execute(
                "UPDATE documents SET status = 'failed', error = %s WHERE id = %s",
                (f"{type(error).__name__}: {error}"[:500], document_id),
            )


# --------------------------------------------------------------------------- the API
def create_api() -> Any:
    registry = CollectorRegistry()
    search_seconds = Histogram(
        "kb_search_duration_seconds",
        "Time of one knowledge-base search: embed, Qdrant, PostgreSQL",
        registry=registry,
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    )
    searches = Counter("kb_search", "Knowledge-base searches answered", registry=registry)

    class ProcessedDocuments:
        """documents_processed_total{status}: counted in PostgreSQL, where every worker
        records its outcome (the workers are not scraped; the API replicas are)."""

        def collect(self) -> Iterator[Any]:
            family = CounterMetricFamily(
                "documents_processed", "Documents the workers finished", labels=["status"]
            )
            counts = {"done": 0, "failed": 0}
            try:
                with database() as conn:
                    for status, count in conn.execute(
                        "SELECT status, count(*) FROM documents "
                        "WHERE status IN ('done', 'failed') GROUP BY status"
                    ):
                        counts[status] = count
            except Exception:
                return
            for status, count in counts.items():
                family.add_metric([status], count)
            yield family

    registry.register(ProcessedDocuments())  # type: ignore[arg-type]
    api = FastAPI(title="kb-app", docs_url=None, redoc_url=None, openapi_url=None)

    @api.post("/documents", status_code=202)
    def upload(
        file: UploadFile = File(...),  # noqa: B008
        processing_delay_s: float = Query(0.0, ge=0.0, le=MAX_PROCESSING_DELAY_S),
    ) -> dict[str, str]:
        body = file.file.read()
        if not body:
            raise HTTPException(422, "the uploaded file is empty")
        document_id = str(uuid.uuid4())
        with database() as conn:
            conn.execute(
                "INSERT INTO documents (id, filename, content_type, body) VALUES (%s, %s, %s, %s)",
                (
                    document_id,
                    file.filename or "upload",
                    file.content_type or "application/octet-stream",
                    body,
                ),
            )
        process_document.apply_async((document_id, processing_delay_s), queue=QUEUES[0])
        return {"id": document_id}

    @api.get("/documents/{document_id}")
    def status(document_id: uuid.UUID) -> dict[str, Any]:
        with database() as conn:
            row = conn.execute(
                "SELECT status, (SELECT count(*) FROM chunks WHERE document_id = documents.id) "
                "FROM documents WHERE id = %s",
                (str(document_id),),
            ).fetchone()
        if row is None:
            raise HTTPException(404, "no such document")
        return {"id": str(document_id), "status": row[0], "chunks": row[1]}

    @api.get("/search")
    def search(
        q: str = Query(..., min_length=1, max_length=2000),
        limit: int = Query(5, ge=1, le=50),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        with http() as client:
            vector = embed(client, [q])[0]
            found = qdrant(
                client,
                "POST",
                f"/collections/{COLLECTION}/points/search",
                {"vector": vector, "limit": limit, "with_payload": True},
            )
        hits: list[dict[str, Any]] = []
        if found.status_code != 404:  # no collection before the first document
            found.raise_for_status()
            hits = found.json()["result"]
        ids = sorted({hit["payload"]["document_id"] for hit in hits})
        names: dict[str, str] = {}
        if ids:
            with database() as conn:
                rows = conn.execute(
                    "SELECT id::text, filename FROM documents "
                    "WHERE id = ANY(%s::uuid[]) AND status = 'done'",
                    (ids,),
                )
                names = dict(rows)
        results = [
            {
                "document_id": hit["payload"]["document_id"],
                "filename": names[hit["payload"]["document_id"]],
                "text": hit["payload"]["text"],
                "score": hit["score"],
            }
            for hit in hits
            if hit["payload"]["document_id"] in names
        ]
        search_seconds.observe(time.perf_counter() - started)
        searches.inc()
        return {"results": results}

    @api.get("/health")
    def health() -> Any:
        if os.environ.get("KB_APP_FAIL_HEALTH"):  # a broken release, for the rollout tests
            return JSONResponse({"status": "down", "reason": "KB_APP_FAIL_HEALTH is set"}, 503)
        try:
            with database() as conn:
                conn.execute("SELECT 1")
        except Exception as error:
            return JSONResponse({"status": "down", "reason": type(error).__name__}, 503)
        return {"status": "ok"}

    @api.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return api


# --------------------------------------------------------------------------- commands
def serve() -> None:
    port = int(os.environ.get("APP_PORT", "8000"))
    uvicorn.run(create_api(), host="0.0.0.0", port=port, proxy_headers=True, log_level="info")


def worker() -> None:
    celery_app.worker_main(
        ["worker", "--queues", ",".join(QUEUES), "--concurrency", "2", "--loglevel", "INFO"]
    )


def ping() -> int:
    """0 when this container's worker answers a Celery ping through the broker."""
    replies = celery_app.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=5)
    print(replies)
    return 0 if replies else 1


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    command = argv[0] if argv else "serve"
    if command == "serve":
        serve()
    elif command == "worker":
        worker()
    elif command == "migrate":
        migrate()
    elif command == "ping":
        return ping()
    else:
        print(
            f"kb_app: unknown command {command!r}: serve, worker, migrate or ping", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
