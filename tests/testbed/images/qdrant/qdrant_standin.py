"""A STAND-IN for the Qdrant server, for the kbinfra test bed only.

Qdrant's server cannot be built or pulled here, so this serves the part of Qdrant's REST API
that kbinfra uses, with upstream's paths, status codes, auth rules and JSON shapes, on top of
Qdrant Edge (qdrant-edge-py: Qdrant's own segment storage, WAL, vector search and filtering,
in-process). Each collection is one Edge shard under the storage path. Request bodies are
validated with qdrant-client's models of the REST API. Snapshots are tar files of a
collection's shard with a sha256 checksum, restorable by recover/upload.

Its gRPC API (qdrant_standin_grpc.py, on grpc_port) serves a smaller part still. It is not
Qdrant: no cluster, no sparse vectors, no multi-stage queries; a route it does not implement
answers 404 like an unknown route, and a request feature it does not implement is refused with
400 rather than ignored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import qdrant_edge
import qdrant_standin_grpc
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from qdrant_client import models
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

LOG = logging.getLogger("qdrant-standin")
SNAPSHOT_FORMAT = "kbinfra-testbed-qdrant-standin-snapshot/2"  # /2: an Edge shard
MANIFEST_NAME = "standin-manifest.json"
COLLECTION_CONFIG = "config.json"
ALIASES_FILE = "aliases.json"
#: What upstream reports as a new collection's HNSW config when none is given.
HNSW_DEFAULTS = {
    "m": 16,
    "ef_construct": 100,
    "full_scan_threshold": 10000,
    "max_indexing_threads": 0,
    "on_disk": False,
}
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
class Collection:
    """One collection: a Qdrant Edge shard (Qdrant's own segment storage, WAL and search)
    in ``<storage>/collections/<name>/shard`` and what upstream reports of it in ``config.json``
    next to it (the vector params as created, the optimizer and WAL config it was given)."""

    def __init__(self, folder: Path, shard: qdrant_edge.EdgeShard, config: dict[str, Any]) -> None:
        self.folder = folder
        self.shard = shard
        self.config = config

    @property
    def vectors(self) -> Any:
        return self.config["params"]["vectors"]

    def close(self) -> None:
        self.shard.close()


def valid_collection_name(name: str) -> str:
    """Upstream refuses names that cannot be a folder name; the stand-in keeps them out of
    its storage path the same way."""
    if not name or len(name) > 255 or name in {".", ".."} or set(name) & set('<>:"/\\|?*\0'):
        raise ApiError(422, f"Validation error in path parameters: [name: invalid name {name!r}]")
    return name


def edge_vectors(vectors: Any) -> dict[str, qdrant_edge.EdgeVectorParams]:
    """Upstream's vector params (one unnamed vector or a map of named ones) as Edge's."""

    def one(params: dict[str, Any]) -> qdrant_edge.EdgeVectorParams:
        distance = DISTANCES.get(str(params.get("distance")))
        if distance is None:
            raise ApiError(
                400, f"Json deserialize error: unknown distance {params.get('distance')!r}"
            )
        if params.get("multivector_config"):
            raise ApiError(400, "Bad request: multivectors are not implemented by the stand-in")
        return qdrant_edge.EdgeVectorParams(size=int(params["size"]), distance=distance)

    if isinstance(vectors, dict) and "size" in vectors:
        return {"": one(vectors)}
    if isinstance(vectors, dict) and vectors:
        return {name: one(params) for name, params in vectors.items()}
    raise ApiError(400, "Bad request: the stand-in needs dense vectors (`vectors`)")


DISTANCES = {
    "Cosine": qdrant_edge.Distance.Cosine,
    "Dot": qdrant_edge.Distance.Dot,
    "Euclid": qdrant_edge.Distance.Euclid,
    "Manhattan": qdrant_edge.Distance.Manhattan,
}


def edge_filter(value: models.Filter | None) -> qdrant_edge.Filter | None:
    """A REST filter as Edge's: the conditions kbinfra and the reference app use; anything
    else is refused plainly rather than silently ignored."""
    if value is None:
        return None

    def conditions(items: Any) -> list[Any] | None:
        if items is None:
            return None
        return [condition(item) for item in (items if isinstance(items, list) else [items])]

    return qdrant_edge.Filter(
        must=conditions(value.must),
        should=conditions(value.should),
        must_not=conditions(value.must_not),
    )


def condition(item: Any) -> Any:
    if isinstance(item, models.Filter):
        return edge_filter(item)
    if isinstance(item, models.HasIdCondition):
        return qdrant_edge.HasIdCondition(set(item.has_id))
    if isinstance(item, models.IsEmptyCondition):
        return qdrant_edge.IsEmptyCondition(item.is_empty.key)
    if isinstance(item, models.IsNullCondition):
        return qdrant_edge.IsNullCondition(item.is_null.key)
    if isinstance(item, models.FieldCondition):
        match = item.match
        edge_match: Any = None
        if isinstance(match, models.MatchValue):
            edge_match = qdrant_edge.MatchValue(match.value)
        elif isinstance(match, models.MatchAny):
            edge_match = qdrant_edge.MatchAny(list(match.any))
        elif isinstance(match, models.MatchExcept):
            edge_match = qdrant_edge.MatchExcept(list(match.except_))
        elif isinstance(match, models.MatchText):
            edge_match = qdrant_edge.MatchText(match.text)
        elif match is not None:
            raise ApiError(400, f"Bad request: match {type(match).__name__} is not implemented")
        edge_range = None
        if isinstance(item.range, models.Range):
            r = item.range
            edge_range = qdrant_edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
        elif item.range is not None:
            raise ApiError(400, "Bad request: datetime ranges are not implemented by the stand-in")
        if edge_match is None and edge_range is None:
            raise ApiError(400, f"Bad request: condition on {item.key} is not implemented")
        return qdrant_edge.FieldCondition(item.key, match=edge_match, range=edge_range)
    raise ApiError(400, f"Bad request: condition {type(item).__name__} is not implemented")


def rest_vector(vector: Any) -> Any:
    """Edge returns every vector under its name, the unnamed one as ""; upstream's REST
    answer is the bare list for the unnamed vector and a map for named ones."""
    if isinstance(vector, dict) and set(vector) == {""}:
        return vector[""]
    return vector


def rest_id(point_id: Any) -> Any:
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def scored(point: Any) -> dict[str, Any]:
    return {
        "id": rest_id(point.id),
        "version": point.version,
        "score": point.score,
        "payload": point.payload,
        "vector": rest_vector(point.vector),
    }


def record(point: Any) -> dict[str, Any]:
    return {"id": rest_id(point.id), "payload": point.payload, "vector": rest_vector(point.vector)}


class Engine:
    """The collections, their aliases and snapshots, behind one lock (requests are few)."""

    def __init__(self, storage_path: Path, snapshots_path: Path, version: str) -> None:
        self.storage_path = storage_path
        self.snapshots_path = snapshots_path
        self.version = version
        self.lock = threading.RLock()
        self.collections_path = storage_path / "collections"
        self.collections_path.mkdir(parents=True, exist_ok=True)
        self.snapshots_path.mkdir(parents=True, exist_ok=True)
        self.operation_id = 0
        self.open: dict[str, Collection] = {}
        for folder in sorted(self.collections_path.iterdir()):
            if (folder / COLLECTION_CONFIG).is_file() and (folder / "shard").is_dir():
                self.open[folder.name] = self._load(folder)

    @staticmethod
    def _load(folder: Path) -> Collection:
        config = json.loads((folder / COLLECTION_CONFIG).read_text())
        return Collection(folder, qdrant_edge.EdgeShard.load(str(folder / "shard")), config)

    def next_operation(self) -> int:
        self.operation_id += 1
        return self.operation_id

    # -------------------------------------------------------------- aliases
    def _aliases_file(self) -> Path:
        return self.storage_path / ALIASES_FILE

    def aliases(self) -> dict[str, str]:
        path = self._aliases_file()
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        atomic_write(self._aliases_file(), json.dumps(aliases, sort_keys=True))

    def change_aliases(self, actions: list[Any]) -> None:
        aliases = self.aliases()
        for action in actions:
            if (create := getattr(action, "create_alias", None)) is not None:
                aliases[create.alias_name] = self.resolve(create.collection_name)
            elif (delete := getattr(action, "delete_alias", None)) is not None:
                aliases.pop(delete.alias_name, None)
            elif (rename := getattr(action, "rename_alias", None)) is not None:
                if rename.old_alias_name not in aliases:
                    raise ApiError(404, f"Not found: Alias {rename.old_alias_name} does not exist!")
                aliases[rename.new_alias_name] = aliases.pop(rename.old_alias_name)
        self._save_aliases(aliases)

    def resolve(self, name: str) -> str:
        """The collection a name or alias points to, or a 404."""
        if name in self.open:
            return name
        target = self.aliases().get(name)
        if target in self.open:
            return str(target)
        raise not_found_collection(name)

    def get(self, name: str) -> Collection:
        return self.open[self.resolve(name)]

    # -------------------------------------------------------------- collections
    def create(self, name: str, body: dict[str, Any], defaults: dict[str, Any]) -> None:
        folder = self.collections_path / valid_collection_name(name)
        if name in self.open:
            raise ApiError(409, f"Wrong input: Collection `{name}` already exists!")
        spec = models.CreateCollection.model_validate(body or {})
        if spec.sparse_vectors:
            raise ApiError(400, "Bad request: sparse vectors are not implemented by the stand-in")
        vectors = to_json(spec.vectors)
        edge = qdrant_edge.EdgeConfig(vectors=edge_vectors(vectors))
        shutil.rmtree(folder, ignore_errors=True)  # a half-made folder of a failed create
        folder.mkdir(parents=True)
        config = {"params": {"vectors": vectors}, **defaults}
        shard = qdrant_edge.EdgeShard.create(str(folder / "shard"), edge)
        atomic_write(folder / COLLECTION_CONFIG, json.dumps(config, sort_keys=True))
        self.open[name] = Collection(folder, shard, config)

    def delete(self, name: str) -> bool:
        collection = self.open.pop(name, None)
        if collection is None:
            return False
        collection.close()
        shutil.rmtree(collection.folder)
        self._save_aliases({a: c for a, c in self.aliases().items() if c != name})
        return True

    def info(self, name: str) -> dict[str, Any]:
        collection = self.get(name)
        shard = collection.shard.info()
        config = collection.config
        return {
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": shard.indexed_vectors_count,
            "points_count": shard.points_count,
            "segments_count": shard.segments_count,
            "config": {
                "params": {
                    "vectors": collection.vectors,
                    "shard_number": 1,
                    "replication_factor": 1,
                    "write_consistency_factor": 1,
                    "on_disk_payload": True,
                },
                "hnsw_config": HNSW_DEFAULTS,
                "optimizer_config": config.get("optimizer_config", {}),
                "wal_config": config.get("wal_config", {}),
                "quantization_config": None,
            },
            "payload_schema": {},
        }

    # -------------------------------------------------------------- points
    def upsert(self, name: str, points: list[qdrant_edge.Point]) -> None:
        shard = self.get(name).shard
        shard.update(qdrant_edge.UpdateOperation.upsert_points(points))

    def count(self, name: str, filter: models.Filter | None) -> int:
        return self.get(name).shard.count(
            qdrant_edge.CountRequest(exact=True, filter=edge_filter(filter))
        )

    def query(
        self,
        name: str,
        vector: list[float],
        *,
        using: str | None,
        filter: models.Filter | None,
        limit: int,
        offset: int | None,
        with_payload: Any,
        with_vector: Any,
        score_threshold: float | None,
        exact: bool,
    ) -> list[dict[str, Any]]:
        collection = self.get(name)
        names = (
            {""}
            if isinstance(collection.vectors, dict) and "size" in collection.vectors
            else set(collection.vectors)
        )
        vector_name = using or ""
        if vector_name not in names:
            raise ApiError(400, f"Wrong input: Not existing vector name error: {using}")
        found = collection.shard.query(
            qdrant_edge.QueryRequest(
                limit=limit,
                offset=offset,
                query=qdrant_edge.Query.Nearest([float(x) for x in vector], using=vector_name),
                filter=edge_filter(filter),
                with_payload=with_payload,
                with_vector=with_vector,
                score_threshold=score_threshold,
                params=qdrant_edge.SearchParams(exact=exact),
            )
        )
        return [scored(point) for point in found]

    def scroll(
        self,
        name: str,
        *,
        filter: models.Filter | None,
        limit: int,
        offset: Any,
        with_payload: Any,
        with_vector: Any,
    ) -> dict[str, Any]:
        points, next_offset = self.get(name).shard.scroll(
            qdrant_edge.ScrollRequest(
                offset=offset,
                limit=limit,
                filter=edge_filter(filter),
                with_payload=with_payload,
                with_vector=with_vector,
            )
        )
        return {"points": [record(p) for p in points], "next_page_offset": rest_id(next_offset)}

    def total_points(self) -> int:
        return sum(c.shard.info().points_count for c in self.open.values())

    # -------------------------------------------------------------- snapshots
    def collection_snapshot_dir(self, collection: str) -> Path:
        path = self.snapshots_path / valid_collection_name(collection)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_snapshot(self, name: str) -> dict[str, Any]:
        collection = self.get(name)
        stamp = dt.datetime.now(dt.UTC)
        snapshot = f"{name}-{os.getpid()}-{stamp.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
        target = self.collection_snapshot_dir(name) / snapshot
        manifest: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "qdrant_version": self.version,
            "collection": name,
            "config": collection.config,
            "sizes": {},
        }
        # A consistent copy: the shard is flushed and closed (every request holds the lock),
        # archived, and opened again.
        collection.shard.flush()
        collection.close()
        partial = target.with_suffix(".partial")
        try:
            with tarfile.open(partial, "w") as tar:
                manifest["sizes"] = shard_sizes(collection.folder / "shard")
                data = json.dumps(manifest, indent=2).encode()
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size = len(data)
                info.mtime = int(stamp.timestamp())
                tar.addfile(info, io.BytesIO(data))
                add_shard(tar, collection.folder / "shard")
        finally:
            self.open[name] = self._load(collection.folder)
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

    def recover(self, name: str, snapshot: Path, priority: str, checksum: str | None) -> None:
        valid_collection_name(name)
        if checksum:
            actual = sha256_file(snapshot)
            if actual != checksum:
                raise ApiError(400, f"Checksum mismatch: expected {checksum}, actual {actual}")
        if priority not in {"replica", "snapshot", "no_sync"}:
            raise ApiError(400, f"Bad request: unknown snapshot priority {priority!r}")
        with tempfile.TemporaryDirectory(dir=self.snapshots_path) as tmp:
            unpacked = Path(tmp)
            try:
                extract_snapshot(snapshot, unpacked)
            except (tarfile.TarError, OSError, ValueError) as exc:
                raise ApiError(400, f"Bad request: cannot read snapshot: {exc}") from exc
            manifest_path = unpacked / MANIFEST_NAME
            if not manifest_path.is_file() or not (unpacked / "shard").is_dir():
                raise ApiError(400, "Bad request: not a snapshot of this stand-in")
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != SNAPSHOT_FORMAT:
                raise ApiError(
                    400, f"Bad request: unknown snapshot format {manifest.get('format')!r}"
                )
            if minor(str(manifest.get("qdrant_version"))) != minor(self.version):
                raise ApiError(
                    400,
                    f"Bad request: snapshot was created by Qdrant {manifest['qdrant_version']}, "
                    f"which is not compatible with {self.version}: a snapshot restores only onto "
                    "the same minor version",
                )
            try:
                restore_sizes(unpacked, manifest.get("sizes", {}))
            except (OSError, ValueError) as exc:
                raise ApiError(400, f"Bad request: cannot read snapshot: {exc}") from exc
            config = manifest.get("config")
            if not isinstance(config, dict) or "params" not in config:
                raise ApiError(400, "Bad request: the snapshot's manifest has no collection config")
            existing = self.open.get(name)
            # Upstream's priorities: `replica` prefers the data the node already has.
            if (
                priority == "replica"
                and existing is not None
                and existing.shard.info().points_count
            ):
                LOG.info("recover %s with priority=replica: existing data kept", name)
                return
            try:  # the snapshot's shard must open before anything of the old one is touched
                qdrant_edge.EdgeShard.load(str(unpacked / "shard")).close()
            except Exception as exc:
                raise ApiError(
                    400, f"Bad request: the snapshot's shard does not open: {exc}"
                ) from exc
            if existing is not None:
                self.delete(name)
            folder = self.collections_path / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            shutil.move(str(unpacked / "shard"), folder / "shard")
            atomic_write(folder / COLLECTION_CONFIG, json.dumps(config, sort_keys=True))
            self.open[name] = self._load(folder)


def aliases_json(aliases: dict[str, str]) -> list[dict[str, str]]:
    return [{"alias_name": a, "collection_name": c} for a, c in sorted(aliases.items())]


def atomic_write(path: Path, text: str) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    partial.replace(path)


# Edge preallocates its WAL, vector and payload files (32 MiB each, sparse on disk): a
# snapshot stores each file up to the end of its last data extent and the manifest its full
# size, which recover restores with truncate (a hole again, no disk used).
MAX_FILE_SIZE = 1 << 34


def data_end(path: Path) -> int:
    """Where the last data of a (possibly sparse) file ends; zeros after it are a hole."""
    size = path.stat().st_size
    end = 0
    with path.open("rb") as handle:
        fd = handle.fileno()
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            end = offset
    return min(end, size)


def shard_sizes(folder: Path) -> dict[str, int]:
    return {
        f"shard/{path.relative_to(folder).as_posix()}": path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def add_shard(tar: tarfile.TarFile, folder: Path) -> None:
    for path in sorted([folder, *folder.rglob("*")]):
        arcname = "shard" if path == folder else f"shard/{path.relative_to(folder).as_posix()}"
        if path.is_dir():
            tar.addfile(tar.gettarinfo(path, arcname))
        elif path.is_file():
            info = tar.gettarinfo(path, arcname)
            info.size = data_end(path)
            with path.open("rb") as handle:
                tar.addfile(info, handle)


def restore_sizes(root: Path, sizes: Any) -> None:
    """Give each extracted file its full size back (the trailing hole)."""
    if not isinstance(sizes, dict):
        raise ValueError("the manifest's sizes are not a map")
    for name, size in sizes.items():
        path = (root / str(name)).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise ValueError(f"the manifest names {name!r}, which the snapshot does not hold")
        if not isinstance(size, int) or not path.stat().st_size <= size <= MAX_FILE_SIZE:
            raise ValueError(f"the manifest gives {name!r} an impossible size {size!r}")
        os.truncate(path, size)


def extract_snapshot(archive: Path, target: Path) -> None:
    """Extract the manifest and the shard's folders and regular files, and nothing else: no
    links, devices or paths that leave ``target`` (Debian's Python 3.11.2 has no extraction
    filter)."""
    root = target.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            path = (root / member.name).resolve()
            inside = path == root or root in path.parents
            allowed = member.name == MANIFEST_NAME or member.name.split("/")[0] == "shard"
            if not inside or not allowed or not (member.isfile() or member.isdir()):
                raise ValueError(f"unexpected member {member.name!r}")
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, path.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


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
def auth_keys(config: dict[str, Any]) -> tuple[set[str], str | None]:
    """The read-write keys and the read-only key, as upstream reads them (REST and gRPC).

    Upstream (src/common/auth/mod.rs, AuthKeys): api_key and alt_api_key (1.17+, "same as
    api_key, can be used for rolling key rotation") both grant read-write; there is no
    second read-only key. An empty key counts as unset; none set: no authentication."""
    service = config.get("service", {})
    write_keys = {key for key in (service.get("api_key"), service.get("alt_api_key")) if key}
    return write_keys, service.get("read_only_api_key") or None


def run_query(engine: Engine, collection: str, query: models.QueryRequest) -> list[dict[str, Any]]:
    """A query API request (REST or gRPC): nearest points to a dense vector only."""
    vector = query.query
    if isinstance(vector, models.NearestQuery):
        vector = vector.nearest
    if not (isinstance(vector, list) and all(isinstance(x, (int, float)) for x in vector)):
        raise ApiError(
            400, "Bad request: the stand-in answers only nearest queries by a dense vector"
        )
    if query.prefetch:
        raise ApiError(400, "Bad request: prefetch is not implemented by the stand-in")
    return engine.query(
        collection,
        [float(x) for x in vector],
        using=query.using,
        filter=query.filter,
        limit=query.limit if query.limit is not None else 10,
        offset=query.offset,
        with_payload=query.with_payload if query.with_payload is not None else False,
        with_vector=query.with_vector if query.with_vector is not None else False,
        score_threshold=query.score_threshold,
        exact=bool(query.params and query.params.exact),
    )


def create_app(config: dict[str, Any], version: str) -> FastAPI:
    storage = config.get("storage", {})
    write_keys, read_only_key = auth_keys(config)
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
            if path in WHITELIST or not (write_keys or read_only_key):
                return await call_next(request)
            key = request.headers.get("api-key")
            if key is None:
                bearer = request.headers.get("authorization", "")
                key = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None
            if key is None:
                return PlainTextResponse(
                    "Must provide an API key or an Authorization bearer token", 401
                )
            if key in write_keys:
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
            collections = len(engine.open)
            points = engine.total_points()
        lines = [
            "# HELP app_info information about qdrant server",
            "# TYPE app_info gauge",
            f'app_info{{name="qdrant",version="{version}"}} 1',
            "# HELP app_status_recovery_mode features enabled in qdrant server",
            "# TYPE app_status_recovery_mode gauge",
            "app_status_recovery_mode 0",
            "# HELP collections_total number of collections",
            "# TYPE collections_total gauge",
            f"collections_total {collections}",
            "# HELP collections_vector_total total number of vectors in all collections",
            "# TYPE collections_vector_total gauge",
            f"collections_vector_total {points}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @route("GET", "/telemetry")
    def telemetry(request: Request, body: None) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(engine.storage_path))),
            "app": {
                "name": "qdrant",
                "version": version,
                "startup": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            },
            "collections": {"number_of_collections": len(engine.open)},
        }

    # -------------------------------------------------------------- collections
    @route("GET", "/collections")
    def list_collections(request: Request, body: None) -> Any:
        return {"collections": [{"name": name} for name in sorted(engine.open)]}

    @route("GET", "/collections/aliases")
    def list_aliases(request: Request, body: None) -> Any:
        return {"aliases": aliases_json(engine.aliases())}

    @route("POST", "/collections/aliases")
    def change_aliases(request: Request, body: dict[str, Any]) -> bool:
        operation = models.ChangeAliasesOperation.model_validate(body)
        engine.change_aliases(list(operation.actions))
        return True

    @route("PUT", "/collections/{collection}")
    def create_collection(request: Request, body: dict[str, Any], collection: str) -> bool:
        engine.create(collection, body or {}, collection_defaults(storage, body or {}))
        return True

    @route("GET", "/collections/{collection}")
    def get_collection(request: Request, body: None, collection: str) -> Any:
        return engine.info(collection)

    @route("DELETE", "/collections/{collection}")
    def delete_collection(request: Request, body: None, collection: str) -> bool:
        return engine.delete(collection)

    @route("GET", "/collections/{collection}/exists")
    def collection_exists(request: Request, body: None, collection: str) -> dict[str, bool]:
        return {"exists": collection in engine.open}

    @route("GET", "/collections/{collection}/aliases")
    def collection_aliases(request: Request, body: None, collection: str) -> Any:
        name = engine.resolve(collection)
        return {"aliases": aliases_json({a: c for a, c in engine.aliases().items() if c == name})}

    # -------------------------------------------------------------- points
    @route("PUT", "/collections/{collection}/points")
    def upsert_points(request: Request, body: dict[str, Any], collection: str) -> dict[str, Any]:
        # Cosine vectors are normalized by Qdrant's own storage engine, as upstream does.
        if "batch" in body:
            batch = models.Batch.model_validate(body["batch"])
            ids = list(batch.ids)
            payloads = list(batch.payloads or [None] * len(ids))
            if isinstance(batch.vectors, dict):
                vectors: list[Any] = [
                    {n: list(vs[i]) for n, vs in batch.vectors.items()} for i in range(len(ids))
                ]
            else:
                vectors = list(batch.vectors)
            if not len(ids) == len(vectors) == len(payloads):
                raise ApiError(400, "Wrong input: ids, vectors and payloads differ in length")
            points = [
                qdrant_edge.Point(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)
            ]
        else:
            structs = [models.PointStruct.model_validate(point) for point in body.get("points", [])]
            points = [qdrant_edge.Point(s.id, s.vector, s.payload) for s in structs]
        engine.upsert(collection, points)
        wait = request.query_params.get("wait", "false").lower() == "true"
        return {
            "operation_id": engine.next_operation(),
            "status": "completed" if wait else "acknowledged",
        }

    @route("POST", "/collections/{collection}/points/count")
    def count_points(request: Request, body: dict[str, Any] | None, collection: str) -> Any:
        request_model = models.CountRequest.model_validate(body or {})
        return {"count": engine.count(collection, request_model.filter)}

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
        params = body.get("params") or {}
        return engine.query(
            collection,
            [float(x) for x in vector],
            using=using,
            filter=models.Filter.model_validate(body["filter"]) if body.get("filter") else None,
            limit=int(body["limit"]),
            offset=body.get("offset"),
            with_payload=body.get("with_payload", False),
            with_vector=body.get("with_vector", False),
            score_threshold=body.get("score_threshold"),
            exact=bool(params.get("exact", False)),
        )

    @route("POST", "/collections/{collection}/points/query")
    def query_points(request: Request, body: dict[str, Any] | None, collection: str) -> Any:
        query = models.QueryRequest.model_validate(body or {})
        points = run_query(engine, collection, query)
        return {"points": points}

    @route("POST", "/collections/{collection}/points/scroll")
    def scroll_points(
        request: Request, body: dict[str, Any] | None, collection: str
    ) -> dict[str, Any]:
        scroll = models.ScrollRequest.model_validate(body or {})
        if scroll.order_by is not None:
            raise ApiError(400, "Bad request: order_by is not implemented by the stand-in")
        return engine.scroll(
            collection,
            filter=scroll.filter,
            limit=scroll.limit if scroll.limit is not None else 10,
            offset=scroll.offset,
            with_payload=scroll.with_payload if scroll.with_payload is not None else True,
            with_vector=scroll.with_vector if scroll.with_vector is not None else False,
        )

    # -------------------------------------------------------------- snapshots
    @route("POST", "/collections/{collection}/snapshots")
    def create_snapshot(request: Request, body: Any, collection: str) -> dict[str, Any]:
        return engine.create_snapshot(collection)

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
        # Upstream spools multipart uploads into the snapshots path, not the temp dir
        # (src/actix/mod.rs: TempFileConfig::default().directory(snapshots_path)): /tmp may be
        # a small tmpfs (kbinfra's is 64 MB), so the body is streamed straight into a file
        # there, never through request.form(), which spools into /tmp.
        with tempfile.NamedTemporaryFile(dir=engine.snapshots_path, suffix=".upload") as handle:
            try:
                found = await MultipartFileField("snapshot", handle).receive(request)
            except ApiError as exc:
                return error(exc.status_code, exc.message, start)
            except OSError as exc:
                LOG.exception("POST /collections/%s/snapshots/upload failed", collection)
                return error(500, f"Service internal error: {exc}", start)
            if not found:
                return error(400, "Bad request: multipart field `snapshot` is required", start)
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


class MultipartFileField:
    """The file part named ``name`` of a multipart/form-data body, streamed into ``out`` as
    the body arrives (chunk by chunk: never the whole upload in memory); the other parts are
    read and dropped. A part counts as the file only with a ``filename``, as in a form; the
    first such part named ``name`` is the one kept."""

    def __init__(self, name: str, out: IO[bytes]) -> None:
        self.name = name.encode()
        self.out = out
        self.found = False
        self._writing = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    async def receive(self, request: Request) -> bool:
        """Read the body; True when it held the part. A body that is not multipart holds none."""
        content_type, params = parse_options_header(request.headers.get("content-type"))
        if content_type != b"multipart/form-data":
            return False
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "Bad request: multipart body without a boundary")
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise ApiError(400, f"Bad request: invalid multipart data: {exc}") from exc
        return self.found

    def _part_begin(self) -> None:
        self._writing = False
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if not self.found and options.get(b"name") == self.name and b"filename" in options:
            self.found = self._writing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:
            self.out.write(data[start:end])

    def _part_end(self) -> None:
        self._writing = False


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
        "kbinfra test bed STAND-IN for Qdrant %s (on Qdrant Edge), not the Qdrant server",
        version,
    )
    app = create_app(config, version)
    service = config.get("service", {})
    storage = config.get("storage", {})
    host = str(service.get("host", "0.0.0.0"))
    # upstream's default config publishes gRPC on 6334; grpc_port: null turns it off
    grpc_port = service.get("grpc_port", 6334)
    if grpc_port is not None:
        write_keys, read_only_key = auth_keys(config)
        engine = app.state.engine
        # held for as long as the app runs: grpcio stops a server that is garbage collected
        app.state.grpc_server = qdrant_standin_grpc.serve(
            engine,
            ApiError,
            lambda collection, query: run_query(engine, collection, query),
            lambda collection, body: engine.create(
                collection, body, collection_defaults(storage, body)
            ),
            host=host,
            port=int(grpc_port),
            version=version,
            write_keys=write_keys,
            read_only_key=read_only_key,
        )
    uvicorn.run(
        app,
        host=host,
        port=int(service.get("http_port", 6333)),
        log_level="info",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
