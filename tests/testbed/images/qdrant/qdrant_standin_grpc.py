"""The Qdrant STAND-IN's gRPC API (kbinfra test bed only): the part of Qdrant's gRPC service
(``service.grpc_port``, 6334) that clients of a kbinfra stack use through nginx's key gate.

Upstream's messages and services are qdrant-client's generated ones (qdrant_client.grpc,
compiled from Qdrant's own .proto files), so a real client (``QdrantClient(prefer_grpc=True)``)
talks to it unchanged. Auth is upstream's (src/tonic/auth.rs): the key in ``api-key`` metadata
or as ``authorization: Bearer``; ``/qdrant.Qdrant/HealthCheck`` and
``/grpc.health.v1.Health/Check`` need none; no key is UNAUTHENTICATED "Must provide an API key
or an Authorization bearer token", an unknown one UNAUTHENTICATED "Invalid API key or JWT", a
write with the read-only key PERMISSION_DENIED "Forbidden: Global manage access is required".

Implemented: HealthCheck and grpc.health.v1's Health/Check; Collections List, Create (dense
vectors), Delete, Get (status and counts only), CollectionExists; Points Upsert, Query
(nearest by a dense vector), Count. Every other method answers UNIMPLEMENTED, as generated
servicers do. Messages of any size are taken, as upstream takes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import qdrant_edge
from qdrant_client import grpc as pb
from qdrant_client import models
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc
from qdrant_client.grpc import (
    collections_service_pb2_grpc,
    points_service_pb2_grpc,
    qdrant_pb2_grpc,
)

#: Methods that need no key (upstream's gRPC auth middleware).
OPEN_METHODS = frozenset({"/qdrant.Qdrant/HealthCheck", "/grpc.health.v1.Health/Check"})
#: Methods a read-only key may call (upstream's READ_ONLY_RPC_PATHS and the query API).
READ_ONLY_METHODS = frozenset(
    {
        "/qdrant.Collections/CollectionExists",
        "/qdrant.Collections/List",
        "/qdrant.Collections/Get",
        *(
            f"/qdrant.Points/{name}"
            for name in (
                "Scroll",
                "Get",
                "Count",
                "Search",
                "SearchGroups",
                "SearchBatch",
                "Recommend",
                "RecommendGroups",
                "RecommendBatch",
                "Discover",
                "DiscoverBatch",
                "Query",
                "QueryBatch",
                "QueryGroups",
            )
        ),
    }
)
#: The REST stand-in's error status → the gRPC code upstream gives the same StorageError.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
}


def refusal(
    method: str, metadata: dict[str, str], write_keys: set[str], read_only_key: str | None
) -> tuple[grpc.StatusCode, str] | None:
    """Why upstream refuses ``method`` with these request headers, or None: it may go on."""
    if method in OPEN_METHODS or not (write_keys or read_only_key):
        return None
    key = metadata.get("api-key")
    if key is None:
        bearer = metadata.get("authorization", "")
        key = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None
    if key is None:
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            "Must provide an API key or an Authorization bearer token",
        )
    if key in write_keys:
        return None
    if read_only_key and key == read_only_key:
        if method in READ_ONLY_METHODS:
            return None
        return grpc.StatusCode.PERMISSION_DENIED, "Forbidden: Global manage access is required"
    return grpc.StatusCode.UNAUTHENTICATED, "Invalid API key or JWT"


class Auth(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, write_keys: set[str], read_only_key: str | None) -> None:
        self.write_keys = write_keys
        self.read_only_key = read_only_key

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        metadata = {key: value for key, value in details.invocation_metadata}
        refused = refusal(details.method, metadata, self.write_keys, self.read_only_key)
        if refused is None:
            return continuation(details)
        code, message = refused

        def abort(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(abort)


class HealthProtocol(grpc.GenericRpcHandler):  # type: ignore[misc]
    """``/grpc.health.v1.Health/Check``, the gRPC health checking protocol upstream serves
    beside its own HealthCheck: always SERVING (status 1), as upstream answers. The messages
    are encoded by hand (field 1, a varint): qdrant-client does not ship health.proto."""

    def service(self, details: Any) -> Any:
        if details.method != "/grpc.health.v1.Health/Check":
            return None

        def check(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"\x08\x01"  # HealthCheckResponse{status: SERVING}

        return grpc.unary_unary_rpc_method_handler(check)


def answered(engine: Any, api_error: type[Exception], call: Callable[[], Any], context: Any) -> Any:
    """``call()`` under the engine's lock, its ApiError given the code upstream gives it."""
    try:
        with engine.lock:
            return call()
    except api_error as exc:
        status = getattr(exc, "status_code", 500)
        context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), str(exc))
    except ValueError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Bad request: {exc}")


def serve(
    engine: Any,
    api_error: type[Exception],
    run_query: Callable[[str, models.QueryRequest], list[dict[str, Any]]],
    create_collection: Callable[[str, dict[str, Any]], None],
    *,
    host: str,
    port: int,
    version: str,
    write_keys: set[str],
    read_only_key: str | None,
) -> grpc.Server:
    """Start the gRPC server on ``host:port`` in threads of its own; returns it started."""

    def elapsed(start: float) -> float:
        return round(time.perf_counter() - start, 6)

    class Qdrant(qdrant_pb2_grpc.QdrantServicer):  # type: ignore[misc]
        def HealthCheck(self, request: Any, context: Any) -> Any:
            return pb.HealthCheckReply(
                title="qdrant - vector search engine",
                version=version,
                commit="kbinfra-testbed-standin",
            )

    class Collections(collections_service_pb2_grpc.CollectionsServicer):  # type: ignore[misc]
        def List(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            names = answered(engine, api_error, lambda: sorted(engine.open), context)
            return pb.ListCollectionsResponse(
                collections=[pb.CollectionDescription(name=name) for name in names],
                time=elapsed(start),
            )

        def CollectionExists(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            exists = answered(
                engine, api_error, lambda: request.collection_name in engine.open, context
            )
            return pb.CollectionExistsResponse(
                result=pb.CollectionExists(exists=exists), time=elapsed(start)
            )

        def Create(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            if not request.HasField("vectors_config"):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "Bad request: vectors_config needed"
                )
            vectors = GrpcToRest.convert_vectors_config(request.vectors_config)
            body = {
                "vectors": models.CreateCollection(vectors=vectors).model_dump(mode="json")[
                    "vectors"
                ]
            }
            answered(
                engine, api_error, lambda: create_collection(request.collection_name, body), context
            )
            return pb.CollectionOperationResponse(result=True, time=elapsed(start))

        def Delete(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            deleted = answered(
                engine, api_error, lambda: engine.delete(request.collection_name), context
            )
            return pb.CollectionOperationResponse(result=bool(deleted), time=elapsed(start))

        def Get(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            info = answered(
                engine, api_error, lambda: engine.info(request.collection_name), context
            )
            return pb.GetCollectionInfoResponse(
                result=pb.CollectionInfo(
                    status=pb.CollectionStatus.Green,
                    points_count=int(info.get("points_count") or 0),
                    segments_count=int(info.get("segments_count") or 0),
                ),
                time=elapsed(start),
            )

    class Points(points_service_pb2_grpc.PointsServicer):  # type: ignore[misc]
        def Upsert(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            structs = [GrpcToRest.convert_point_struct(point) for point in request.points]
            points = [qdrant_edge.Point(s.id, s.vector, s.payload) for s in structs]

            def upsert() -> int:
                engine.upsert(request.collection_name, points)
                return int(engine.next_operation())

            operation = answered(engine, api_error, upsert, context)
            return pb.PointsOperationResponse(
                result=pb.UpdateResult(
                    operation_id=operation,
                    status=pb.UpdateStatus.Completed
                    if request.wait
                    else pb.UpdateStatus.Acknowledged,
                ),
                time=elapsed(start),
            )

        def Query(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            query = GrpcToRest.convert_query_points(request)
            found = answered(
                engine, api_error, lambda: run_query(request.collection_name, query), context
            )
            return pb.QueryResponse(
                result=[
                    RestToGrpc.convert_scored_point(models.ScoredPoint.model_validate(point))
                    for point in found
                ],
                time=elapsed(start),
            )

        def Count(self, request: Any, context: Any) -> Any:
            start = time.perf_counter()
            flt = GrpcToRest.convert_filter(request.filter) if request.HasField("filter") else None
            count = answered(
                engine, api_error, lambda: engine.count(request.collection_name, flt), context
            )
            return pb.CountResponse(result=pb.CountResult(count=count), time=elapsed(start))

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        interceptors=[Auth(write_keys, read_only_key)],
        handlers=[HealthProtocol()],
        # upstream decodes messages of any size (max_decoding_message_size(usize::MAX))
        options=[("grpc.max_receive_message_length", -1)],
    )
    qdrant_pb2_grpc.add_QdrantServicer_to_server(Qdrant(), server)
    collections_service_pb2_grpc.add_CollectionsServicer_to_server(Collections(), server)
    points_service_pb2_grpc.add_PointsServicer_to_server(Points(), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server
