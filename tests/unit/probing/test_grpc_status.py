"""``check``'s gRPC call (kbinfra.probing.grpc_status) against a real gRPC server: grpcio's own,
in this process, on a loopback port. It must read a status from trailers (a call that went
through) and from headers alone (a trailers-only refusal), decode grpc-message as gRPC
percent-encodes it, send the metadata it is given, and say plainly when no gRPC answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from kbinfra.probing.grpc_status import OK, UNAUTHENTICATED, GrpcCallError, grpc_status
from kbinfra.probing.probe import CheckFailedError
from kbinfra.services.qdrant.probe import check_grpc_refuses_other_keys, check_grpc_with_api_key

KEY = "the-one-key-this-server-takes"


class KeyedHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every unary method: OK (an empty reply) for KEY in api-key, UNAUTHENTICATED otherwise;
    ``accept_any`` lets every key through, as a gate that checks nothing would."""

    def __init__(self, accept_any: bool = False) -> None:
        self.accept_any = accept_any
        self.seen: list[dict[str, str]] = []

    def service(self, details: Any) -> Any:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = dict(context.invocation_metadata())
            self.seen.append({"method": details.method, **metadata})
            if details.method.endswith("/Fail"):
                context.abort(grpc.StatusCode.INTERNAL, "100% broken: ünïcode")
            if not self.accept_any and metadata.get("api-key") != KEY:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid API key or JWT")
            return b""

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=None, response_serializer=None
        )


def serve(handler: KeyedHandler) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def keyed() -> Iterator[tuple[KeyedHandler, int]]:
    handler = KeyedHandler()
    server, port = serve(handler)
    yield handler, port
    server.stop(None)


def test_it_reads_the_status_from_trailers_and_from_a_trailers_only_answer(
    keyed: tuple[KeyedHandler, int],
) -> None:
    handler, port = keyed
    assert grpc_status("127.0.0.1", port, "/qdrant.Collections/List", [("api-key", KEY)]) == (
        OK,
        "",
    )
    refused = grpc_status("127.0.0.1", port, "/qdrant.Collections/List", [("api-key", "other")])
    assert refused == (UNAUTHENTICATED, "Invalid API key or JWT")
    assert grpc_status("127.0.0.1", port, "/x.Y/Fail") == (13, "100% broken: ünïcode")
    assert handler.seen[0]["method"] == "/qdrant.Collections/List"
    assert handler.seen[0]["api-key"] == KEY and handler.seen[1]["api-key"] == "other"


def test_no_grpc_server_is_one_clear_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(GrpcCallError, match=f"on port {port}"):
        grpc_status("127.0.0.1", port, "/qdrant.Collections/List", timeout_s=2)
    # an HTTP/1.1 server answers something that is not HTTP/2
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def http1() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=http1, daemon=True)
    thread.start()
    try:
        with pytest.raises(GrpcCallError):
            grpc_status("127.0.0.1", port, "/qdrant.Collections/List", timeout_s=5)
    finally:
        thread.join(timeout=5)
        listener.close()


def test_the_grpc_gate_checks_fail_on_a_listener_that_checks_nothing(
    keyed: tuple[KeyedHandler, int],
) -> None:
    handler, port = keyed
    address = ("127.0.0.1", port)
    assert check_grpc_with_api_key(address, KEY) == "/qdrant.Collections/List: OK"
    assert check_grpc_refuses_other_keys(address, ["qdrants-own-key"]).startswith("UNAUTHENTICATED")
    # each key in both forms gRPC clients send it
    assert {"api-key": "qdrants-own-key"}.items() <= handler.seen[-2].items()
    assert {"authorization": "Bearer qdrants-own-key"}.items() <= handler.seen[-1].items()
    with pytest.raises(CheckFailedError, match="gRPC status 16"):
        check_grpc_with_api_key(address, "a-key-it-does-not-take")
    server, open_port = serve(KeyedHandler(accept_any=True))
    try:
        with pytest.raises(
            CheckFailedError, match=r"with a made-up key \(api-key\): gRPC status 0"
        ):
            check_grpc_refuses_other_keys(("127.0.0.1", open_port), ["qdrants-own-key"])
    finally:
        server.stop(None)
