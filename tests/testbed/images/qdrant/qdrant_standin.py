"""A STAND-IN for the Qdrant server, for the kbinfra test bed only.

Qdrant's server cannot be built or pulled here, so this serves the part of Qdrant's REST API
that kbinfra uses, with upstream's paths, status codes, auth rules and JSON shapes, on top of
qdrant-client's local mode (a real engine that persists under the storage path). Snapshots
are tar files of a collection's storage with a sha256 checksum, restorable by recover/upload.

It is not Qdrant: no gRPC, no cluster, no optimizers; everything it does not implement answers
404 like an unknown route.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

LOG = logging.getLogger("qdrant-standin")
SNAPSHOT_FORMAT = "kbinfra-testbed-qdrant-standin-snapshot/1"
MANIFEST_NAME = "standin-manifest.json"
STORAGE_FILE = "storage.sqlite"
CONFIG_FILE = "standin-collection-config.json"
#: Server config keys (storage.optimizers) → the names GET /collections/{name} reports them by.
OPTIMIZER_KEYS = {
    "deleted_threshold": "deleted_threshold",
    "vacuum_min_vector_number": "vacuum_min_vector_number",
    "default_segment_number": "default_segment_number",
    "max_segment_size_kb": "max_segment_size",
    "max_segment_size": "max_segment_size",
    "indexing_threshold_kb": "indexing_threshold",
    "indexing_threshold": "indexing_threshold",
    "flush_interval_sec": "flush_interval_sec",
    "max_optimization_threads": "max_optimization_threads",
}
WAL_KEYS = {"wal_capacity_mb": "wal_capacity_mb", "wal_segments_ahead": "wal_segments_ahead"}
WHITELIST = {"/", "/healthz", "/livez", "/readyz"}
# POST routes a read-only key may use (upstream: READ_ONLY_POST_PATTERNS plus the query API).
READ_ONLY_POST_SUFFIXES = (
    "/points",
    "/points/count",
    "/points/scroll",
    "/points/search",
    "/points/search/batch",
    "/points/query",
    "/points/query/batch",
    "/points/recommend",
)


class ApiError(Exception):
    """An error answered as upstream does: {"status": {"error": ...}, "time": ...}."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def not_found_collection(name: str) -> ApiError:
    return ApiError(404, f"Not found: Collection `{name}` doesn't exist!")


# ------------------------------------------------------------------ configuration
def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(config_path: str | None, environ: dict[str, str]) -> dict[str, Any]:
    """Upstream's order: config/config.yaml, config/$RUN_MODE.yaml, config/local.yaml,
    --config-path, then QDRANT__SECTION__KEY environment variables."""
    config: dict[str, Any] = {
        "service": {"host": "0.0.0.0", "http_port": 6333},
        "storage": {"storage_path": "./storage", "snapshots_path": "./snapshots"},
    }
    run_mode = environ.get("RUN_MODE", "production")
    candidates = [
        Path("config/config.yaml"),
        Path(f"config/{run_mode}.yaml"),
        Path("config/local.yaml"),
    ]
    if config_path:
        candidates.append(Path(config_path))
    for path in candidates:
        if path.is_file():
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise SystemExit(f"qdrant-standin: {path} is not a mapping")
            config = deep_merge(config, loaded)
            LOG.info("loaded config %s", path)
        elif path == Path(config_path or ""):
            raise SystemExit(f"qdrant-standin: config file {path} not found")
    for name, raw in environ.items():
        if not name.startswith("QDRANT__"):
            continue
        keys = [part.lower() for part in name.split("__")[1:]]
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw else raw
    return config


# ------------------------------------------------------------------ the engine
class Engine:
    """qdrant-client local mode behind one lock: it is not thread-safe, requests are few."""

    def __init__(self, storage_path: Path, snapshots_path: Path, version: str) -> None:
        self.storage_path = storage_path
        self.snapshots_path = snapshots_path
        self.version = version
        self.lock = threading.RLock()
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.snapshots_path.mkdir(parents=True, exist_ok=True)
        self.client = self._open()
        self.operation_id = 0

    def _open(self) -> QdrantClient:
        return QdrantClient(path=str(self.storage_path), force_disable_check_same_thread=True)

    def next_operation(self) -> int:
        self.operation_id += 1
        return self.operation_id

    def resolve(self, name: str) -> str:
        """The collection a name or alias points to, or a 404."""
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == name:
                return alias.collection_name
        if not self.client.collection_exists(name):
            raise not_found_collection(name)
        return name

    def meta(self) -> dict[str, Any]:
        return json.loads((self.storage_path / "meta.json").read_text())

    # Upstream fixes a collection's optimizer and WAL config when it is created, from the
    # server's storage.optimizers / storage.wal merged with the request's own diffs, and
    # reports it in GET /collections/{name}. qdrant-client's local mode reports fixed
    # defaults, so the stand-in keeps what upstream would have fixed next to the storage.
    def _config_file(self) -> Path:
        return self.storage_path / CONFIG_FILE

    def remembered_config(self, collection: str) -> dict[str, Any]:
        path = self._config_file()
        known = json.loads(path.read_text()) if path.is_file() else {}
        return dict(known.get(collection, {}))

    def remember_config(self, collection: str, config: dict[str, Any] | None) -> None:
        path = self._config_file()
        known = json.loads(path.read_text()) if path.is_file() else {}
        if config is None:
            known.pop(collection, None)
        else:
            known[collection] = config
        path.with_suffix(".tmp").write_text(json.dumps(known))
        path.with_suffix(".tmp").replace(path)

    # -------------------------------------------------------------- snapshots
    def collection_snapshot_dir(self, collection: str) -> Path:
        path = self.snapshots_path / collection
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_snapshot(self, collection: str) -> dict[str, Any]:
        meta = self.meta()
        stamp = dt.datetime.now(dt.UTC)
        name = f"{collection}-{os.getpid()}-{stamp.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
        target = self.collection_snapshot_dir(collection) / name
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "qdrant_version": self.version,
            "collection": collection,
            "config": meta["collections"][collection],
            "text_indexes": meta.get("text_indexes", {}).get(collection, {}),
        }
        with tempfile.TemporaryDirectory(dir=self.snapshots_path) as tmp:
            db_copy = Path(tmp) / STORAGE_FILE
            source = self.storage_path / "collection" / collection / STORAGE_FILE
            # sqlite's backup API gives a consistent copy of a database that is open elsewhere.
            with sqlite3.connect(source) as src, sqlite3.connect(db_copy) as dst:
                src.backup(dst)
            partial = target.with_suffix(".partial")
            with tarfile.open(partial, "w") as tar:
                data = json.dumps(manifest, indent=2).encode()
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size = len(data)
                info.mtime = int(stamp.timestamp())
                tar.addfile(info, io.BytesIO(data))
                tar.add(db_copy, arcname=STORAGE_FILE)
            partial.rename(target)
        checksum = sha256_file(target)
        Path(f"{target}.checksum").write_text(checksum)
        return describe_snapshot(target, checksum)

    def list_snapshots(self, collection: str) -> list[dict[str, Any]]:
        folder = self.collection_snapshot_dir(collection)
        return [
            describe_snapshot(path, read_checksum(path))
            for path in sorted(folder.glob("*.snapshot"))
        ]

    def snapshot_path(self, collection: str, name: str) -> Path:
        folder = self.collection_snapshot_dir(collection)
        path = folder / name
        if path.parent != folder or not path.is_file():
            raise ApiError(404, f"Not found: Snapshot {name} not found")
        return path

    def recover(self, collection: str, snapshot: Path, priority: str, checksum: str | None) -> None:
        if checksum:
            actual = sha256_file(snapshot)
            if actual != checksum:
                raise ApiError(400, f"Checksum mismatch: expected {checksum}, actual {actual}")
        if priority not in {"replica", "snapshot", "no_sync"}:
            raise ApiError(400, f"Bad request: unknown snapshot priority {priority!r}")
        with tempfile.TemporaryDirectory(dir=self.snapshots_path) as tmp:
            try:
                extract_members(snapshot, Path(tmp), {MANIFEST_NAME, STORAGE_FILE})
            except (tarfile.TarError, OSError) as exc:
                raise ApiError(400, f"Bad request: cannot read snapshot: {exc}") from exc
            manifest_path = Path(tmp) / MANIFEST_NAME
            if not manifest_path.is_file() or not (Path(tmp) / STORAGE_FILE).is_file():
                raise ApiError(400, "Bad request: not a snapshot of this stand-in")
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != SNAPSHOT_FORMAT:
                raise ApiError(
                    400, f"Bad request: unknown snapshot format {manifest.get('format')!r}"
                )
            if minor(manifest["qdrant_version"]) != minor(self.version):
                raise ApiError(
                    400,
                    f"Bad request: snapshot was created by Qdrant {manifest['qdrant_version']}, "
                    f"which is not compatible with {self.version}: a snapshot restores only onto "
                    "the same minor version",
                )
            exists = self.client.collection_exists(collection)
            # Upstream's priorities: `replica` prefers the data the node already has.
            if priority == "replica" and exists and (self.client.count(collection).count > 0):
                LOG.info("recover %s with priority=replica: existing data kept", collection)
                return
            if exists:
                self.client.delete_collection(collection)
            self.client.close()
            try:
                folder = self.storage_path / "collection" / collection
                folder.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(tmp) / STORAGE_FILE), folder / STORAGE_FILE)
                meta = self.meta()
                meta["collections"][collection] = manifest["config"]
                if manifest.get("text_indexes"):
                    meta.setdefault("text_indexes", {})[collection] = manifest["text_indexes"]
                meta_path = self.storage_path / "meta.json"
                meta_path.with_suffix(".tmp").write_text(json.dumps(meta))
                meta_path.with_suffix(".tmp").replace(meta_path)
            finally:
                self.client = self._open()


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero), as upstream stores Cosine."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def cosine_names(params: Any) -> set[str | None]:
    """The dense vectors of a collection that use Cosine distance (None: the unnamed one)."""
    if isinstance(params, models.VectorParams):
        return {None} if params.distance == models.Distance.COSINE else set()
    return {n for n, p in (params or {}).items() if p.distance == models.Distance.COSINE}


def normalize_point_vector(vector: Any, cosine: set[str | None]) -> Any:
    """A point's vector(s) as upstream stores them: Cosine ones normalized on upload
    (upstream computes Cosine as a dot product of unit vectors and returns what it stored)."""
    if isinstance(vector, list) and None in cosine:
        return unit(vector)
    if isinstance(vector, dict):
        return {n: unit(v) if n in cosine and isinstance(v, list) else v for n, v in vector.items()}
    return vector


def collection_defaults(storage: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The optimizer and WAL config upstream gives a new collection: server config + diffs."""
    optimizers = {
        OPTIMIZER_KEYS[key]: value
        for key, value in (storage.get("optimizers") or {}).items()
        if key in OPTIMIZER_KEYS
    }
    optimizers.update(
        {
            OPTIMIZER_KEYS[key]: value
            for key, value in (body.get("optimizers_config") or {}).items()
            if key in OPTIMIZER_KEYS and value is not None
        }
    )
    wal = {WAL_KEYS[k]: v for k, v in (storage.get("wal") or {}).items() if k in WAL_KEYS}
    wal.update(
        {
            WAL_KEYS[k]: v
            for k, v in (body.get("wal_config") or {}).items()
            if k in WAL_KEYS and v is not None
        }
    )
    return {"optimizer_config": optimizers, "wal_config": wal}


def extract_members(archive: Path, target: Path, names: set[str]) -> None:
    """Extract only the named regular files (Debian's Python 3.11.2 has no extraction filter)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name in names and member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                with source, (target / member.name).open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checksum(path: Path) -> str:
    sidecar = Path(f"{path}.checksum")
    return sidecar.read_text().strip() if sidecar.is_file() else sha256_file(path)


def describe_snapshot(path: Path, checksum: str) -> dict[str, Any]:
    stat = path.stat()
    created = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).replace(tzinfo=None)
    return {
        "name": path.name,
        "creation_time": created.isoformat(timespec="seconds"),
        "size": stat.st_size,
        "checksum": checksum,
    }


def to_json(value: Any) -> Any:
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


# ------------------------------------------------------------------ the HTTP API
def create_app(config: dict[str, Any], version: str) -> FastAPI:
    service = config.get("service", {})
    storage = config.get("storage", {})
    api_key = service.get("api_key") or None
    read_only_key = service.get("read_only_api_key") or None
    engine = Engine(
        Path(storage.get("storage_path", "./storage")).resolve(),
        Path(storage.get("snapshots_path", "./snapshots")).resolve(),
        version,
    )
    started = time.time()
    app = FastAPI(
        title="qdrant stand-in (kbinfra test bed)", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine = engine

    def ok(result: Any, start: float, status_code: int = 200) -> JSONResponse:
        return JSONResponse(
            {
                "result": to_json(result),
                "status": "ok",
                "time": round(time.perf_counter() - start, 6),
            },
            status_code=status_code,
        )

    def error(status_code: int, message: str, start: float) -> JSONResponse:
        return JSONResponse(
            {"status": {"error": message}, "time": round(time.perf_counter() - start, 6)},
            status_code=status_code,
        )

    class Auth(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            start = time.perf_counter()
            path = request.url.path
            if path in WHITELIST or not (api_key or read_only_key):
                return await call_next(request)
            key = request.headers.get("api-key")
            if key is None:
                bearer = request.headers.get("authorization", "")
                key = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None
            if key is None:
                return PlainTextResponse(
                    "Must provide an API key or an Authorization bearer token", 401
                )
            if api_key and key == api_key:
                return await call_next(request)
            if read_only_key and key == read_only_key:
                if is_read_only(request.method, path):
                    return await call_next(request)
                return error(403, "Forbidden: Global manage access is required", start)
            return PlainTextResponse("Invalid API key or JWT", 401)

    app.add_middleware(Auth)

    def route(method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a handler that answers in upstream's envelope and maps errors."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            async def endpoint(request: Request) -> Response:
                start = time.perf_counter()
                try:
                    body = await read_json(request) if method in {"POST", "PUT"} else None
                    with engine.lock:
                        result = handler(request, body, **request.path_params)
                    if isinstance(result, Response):
                        return result
                    return ok(result, start)
                except ApiError as exc:
                    return error(exc.status_code, exc.message, start)
                except ValidationError as exc:
                    return error(400, f"Json deserialize error: {exc}", start)
                except ValueError as exc:
                    return error(400, f"Bad request: {exc}", start)
                except Exception as exc:
                    LOG.exception("%s %s failed", method, path)
                    return error(500, f"Service internal error: {exc}", start)

            endpoint.__name__ = handler.__name__
            app.add_api_route(path, endpoint, methods=[method])
            return handler

        return register

    # -------------------------------------------------------------- service
    @app.get("/")
    async def root() -> JSONResponse:
        return JSONResponse(
            {
                "title": "qdrant - vector search engine",
                "version": version,
                "commit": "kbinfra-testbed-standin",
            }
        )

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("healthz check passed")

    @app.get("/livez")
    async def livez() -> PlainTextResponse:
        return PlainTextResponse("livez check passed")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("all shards are ready")

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        with engine.lock:
            collections = [c.name for c in engine.client.get_collections().collections]
            points = sum(engine.client.count(name).count for name in collections)
        lines = [
            "# HELP app_info information about qdrant server",
            "# TYPE app_info gauge",
            f'app_info{{name="qdrant",version="{version}"}} 1',
            "# HELP app_status_recovery_mode features enabled in qdrant server",
            "# TYPE app_status_recovery_mode gauge",
            "app_status_recovery_mode 0",
            "# HELP collections_total number of collections",
            "# TYPE collections_total gauge",
            f"collections_total {len(collections)}",
            "# HELP collections_vector_total total number of vectors in all collections",
            "# TYPE collections_vector_total gauge",
            f"collections_vector_total {points}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @route("GET", "/telemetry")
    def telemetry(request: Request, body: None) -> dict[str, Any]:
        collections = engine.client.get_collections().collections
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(engine.storage_path))),
            "app": {
                "name": "qdrant",
                "version": version,
                "startup": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            },
            "collections": {"number_of_collections": len(collections)},
        }

    # -------------------------------------------------------------- collections
    @route("GET", "/collections")
    def list_collections(request: Request, body: None) -> Any:
        return engine.client.get_collections()

    @route("GET", "/collections/aliases")
    def list_aliases(request: Request, body: None) -> Any:
        return engine.client.get_aliases()

    @route("POST", "/collections/aliases")
    def change_aliases(request: Request, body: dict[str, Any]) -> bool:
        operation = models.ChangeAliasesOperation.model_validate(body)
        for action in operation.actions:
            target = getattr(action, "create_alias", None)
            if target is not None:
                engine.resolve(target.collection_name)
        engine.client.update_collection_aliases(change_aliases_operations=operation.actions)
        return True

    @route("PUT", "/collections/{collection}")
    def create_collection(request: Request, body: dict[str, Any], collection: str) -> bool:
        if engine.client.collection_exists(collection):
            raise ApiError(409, f"Wrong input: Collection `{collection}` already exists!")
        spec = models.CreateCollection.model_validate(body or {})
        engine.client.create_collection(
            collection,
            vectors_config=spec.vectors,
            sparse_vectors_config=spec.sparse_vectors,
        )
        engine.remember_config(collection, collection_defaults(storage, body or {}))
        return True

    @route("GET", "/collections/{collection}")
    def get_collection(request: Request, body: None, collection: str) -> Any:
        name = engine.resolve(collection)
        info = to_json(engine.client.get_collection(name))
        for section, values in engine.remembered_config(name).items():
            info["config"][section] = {**(info["config"].get(section) or {}), **values}
        return info

    @route("DELETE", "/collections/{collection}")
    def delete_collection(request: Request, body: None, collection: str) -> bool:
        engine.remember_config(collection, None)
        return engine.client.delete_collection(collection)

    @route("GET", "/collections/{collection}/exists")
    def collection_exists(request: Request, body: None, collection: str) -> dict[str, bool]:
        return {"exists": engine.client.collection_exists(collection)}

    @route("GET", "/collections/{collection}/aliases")
    def collection_aliases(request: Request, body: None, collection: str) -> Any:
        return engine.client.get_collection_aliases(engine.resolve(collection))

    # -------------------------------------------------------------- points
    @route("PUT", "/collections/{collection}/points")
    def upsert_points(request: Request, body: dict[str, Any], collection: str) -> dict[str, Any]:
        name = engine.resolve(collection)
        cosine = cosine_names(engine.client.get_collection(name).config.params.vectors)
        if "batch" in body:
            batch = models.Batch.model_validate(body["batch"])
            if isinstance(batch.vectors, list) and None in cosine:
                batch.vectors = [unit(v) for v in batch.vectors]  # type: ignore[arg-type]
            elif isinstance(batch.vectors, dict):
                batch.vectors = {
                    n: [unit(v) for v in vs] if n in cosine else vs  # type: ignore[misc]
                    for n, vs in batch.vectors.items()
                }
            engine.client.upsert(name, points=batch)
        else:
            points = [models.PointStruct.model_validate(point) for point in body.get("points", [])]
            for point in points:
                point.vector = normalize_point_vector(point.vector, cosine)
            engine.client.upsert(name, points=points)
        wait = request.query_params.get("wait", "false").lower() == "true"
        return {
            "operation_id": engine.next_operation(),
            "status": "completed" if wait else "acknowledged",
        }

    @route("POST", "/collections/{collection}/points/count")
    def count_points(request: Request, body: dict[str, Any] | None, collection: str) -> Any:
        request_model = models.CountRequest.model_validate(body or {})
        return engine.client.count(
            engine.resolve(collection),
            count_filter=request_model.filter,
            exact=request_model.exact if request_model.exact is not None else True,
        )

    @route("POST", "/collections/{collection}/points/search")
    def search_points(request: Request, body: dict[str, Any], collection: str) -> Any:
        # Upstream's (deprecated) search body; qdrant-client no longer models it, so read it here.
        vector = body.get("vector")
        using = None
        if isinstance(vector, dict):
            using, vector = vector.get("name"), vector.get("vector")
        if not isinstance(vector, list) or "limit" not in body:
            raise ApiError(
                400,
                "Json deserialize error: `vector` (list or {name, vector}) and `limit` needed",
            )
        result = engine.client.query_points(
            engine.resolve(collection),
            query=[float(x) for x in vector],
            using=using,
            query_filter=models.Filter.model_validate(body["filter"])
            if body.get("filter")
            else None,
            limit=int(body["limit"]),
            offset=body.get("offset"),
            with_payload=body.get("with_payload", False),
            with_vectors=body.get("with_vector", False),
            score_threshold=body.get("score_threshold"),
        )
        return result.points

    @route("POST", "/collections/{collection}/points/query")
    def query_points(request: Request, body: dict[str, Any] | None, collection: str) -> Any:
        query = models.QueryRequest.model_validate(body or {})
        return engine.client.query_points(
            engine.resolve(collection),
            query=query.query,
            using=query.using,
            prefetch=query.prefetch,
            query_filter=query.filter,
            limit=query.limit if query.limit is not None else 10,
            offset=query.offset,
            with_payload=query.with_payload if query.with_payload is not None else False,
            with_vectors=query.with_vector if query.with_vector is not None else False,
            score_threshold=query.score_threshold,
        )

    @route("POST", "/collections/{collection}/points/scroll")
    def scroll_points(
        request: Request, body: dict[str, Any] | None, collection: str
    ) -> dict[str, Any]:
        scroll = models.ScrollRequest.model_validate(body or {})
        points, next_offset = engine.client.scroll(
            engine.resolve(collection),
            scroll_filter=scroll.filter,
            limit=scroll.limit if scroll.limit is not None else 10,
            offset=scroll.offset,
            with_payload=scroll.with_payload if scroll.with_payload is not None else True,
            with_vectors=scroll.with_vector if scroll.with_vector is not None else False,
            order_by=scroll.order_by,
        )
        return {"points": to_json(points), "next_page_offset": to_json(next_offset)}

    # -------------------------------------------------------------- snapshots
    @route("POST", "/collections/{collection}/snapshots")
    def create_snapshot(request: Request, body: Any, collection: str) -> dict[str, Any]:
        return engine.create_snapshot(engine.resolve(collection))

    @route("GET", "/collections/{collection}/snapshots")
    def list_snapshots(request: Request, body: None, collection: str) -> list[dict[str, Any]]:
        return engine.list_snapshots(engine.resolve(collection))

    @route("GET", "/collections/{collection}/snapshots/{name}")
    def download_snapshot(request: Request, body: None, collection: str, name: str) -> Response:
        path = engine.snapshot_path(engine.resolve(collection), name)
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    @route("DELETE", "/collections/{collection}/snapshots/{name}")
    def delete_snapshot(request: Request, body: None, collection: str, name: str) -> bool:
        path = engine.snapshot_path(engine.resolve(collection), name)
        path.unlink()
        Path(f"{path}.checksum").unlink(missing_ok=True)
        return True

    @route("PUT", "/collections/{collection}/snapshots/recover")
    def recover_snapshot(request: Request, body: dict[str, Any], collection: str) -> bool:
        recover = models.SnapshotRecover.model_validate(body)
        priority = recover.priority.value if recover.priority else "replica"
        with fetch_location(recover.location, engine.snapshots_path) as snapshot:
            engine.recover(collection, snapshot, priority, recover.checksum)
        return True

    @app.post("/collections/{collection}/snapshots/upload")
    async def upload_snapshot(request: Request, collection: str) -> Response:
        start = time.perf_counter()
        form = await request.form()
        upload = form.get("snapshot")
        if upload is None or isinstance(upload, str):
            return error(400, "Bad request: multipart field `snapshot` is required", start)
        with tempfile.NamedTemporaryFile(dir=engine.snapshots_path, suffix=".upload") as handle:
            while chunk := await upload.read(1 << 20):
                handle.write(chunk)
            handle.flush()
            try:
                with engine.lock:
                    engine.recover(
                        collection,
                        Path(handle.name),
                        request.query_params.get("priority", "replica"),
                        request.query_params.get("checksum"),
                    )
            except ApiError as exc:
                return error(exc.status_code, exc.message, start)
        return ok(True, start)

    return app


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"Json deserialize error: {exc}") from exc


def is_read_only(method: str, path: str) -> bool:
    if method in {"GET", "HEAD"}:
        return True
    return (
        method == "POST"
        and path.startswith("/collections/")
        and path.endswith(READ_ONLY_POST_SUFFIXES)
    )


class fetch_location:  # noqa: N801 - used as a context manager like open()
    """A snapshot named by `file://` (a path inside the container) or http(s) as a local file."""

    def __init__(self, location: str, scratch: Path) -> None:
        self.location = location
        self.scratch = scratch
        self.temp: Path | None = None

    def __enter__(self) -> Path:
        if self.location.startswith("file://"):
            path = Path(self.location[len("file://") :])
            if not path.is_file():
                raise ApiError(404, f"Not found: Snapshot file {path} does not exist")
            return path
        if self.location.startswith(("http://", "https://")):
            handle, name = tempfile.mkstemp(dir=self.scratch, suffix=".download")
            self.temp = Path(name)
            try:
                with (
                    urllib.request.urlopen(self.location, timeout=60) as response,
                    os.fdopen(handle, "wb") as out,
                ):
                    shutil.copyfileobj(response, out, 1 << 20)
            except OSError as exc:
                raise ApiError(
                    400, f"Bad request: cannot download snapshot {self.location}: {exc}"
                ) from exc
            return self.temp
        raise ApiError(400, f"Bad request: unsupported snapshot location {self.location}")

    def __exit__(self, *exc: object) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="qdrant", description=__doc__)
    parser.add_argument("--config-path")
    parser.add_argument("--disable-telemetry", action="store_true")
    parser.add_argument("--uri")
    parser.add_argument("--bootstrap")
    parser.add_argument("--snapshot", action="append")
    parser.add_argument("--storage-snapshot")
    args = parser.parse_args(argv)
    for unsupported in ("uri", "bootstrap", "snapshot", "storage_snapshot"):
        if getattr(args, unsupported):
            raise SystemExit(
                f"qdrant-standin: --{unsupported.replace('_', '-')} is not implemented"
            )
    version = os.environ.get("KBINFRA_STANDIN_QDRANT_VERSION", "1.16.3")
    config = load_config(args.config_path, dict(os.environ))
    LOG.warning(
        "kbinfra test bed STAND-IN for Qdrant %s (qdrant-client local mode), not the Qdrant server",
        version,
    )
    app = create_app(config, version)
    service = config.get("service", {})
    uvicorn.run(
        app,
        host=str(service.get("host", "0.0.0.0")),
        port=int(service.get("http_port", 6333)),
        log_level="info",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
