"""One gRPC call's status, for ``check`` (imported only by the checks that make one): a unary
call with an empty request message over HTTP/2 without TLS (h2c, prior knowledge), as a gRPC
client makes it, with no gRPC library.

A gRPC status arrives in the response's trailers (``grpc-status``, ``grpc-message``), or in its
headers alone for a "trailers-only" answer (how servers and nginx refuse a call). httpx does
not expose trailers, so this speaks HTTP/2 itself with ``h2`` (the protocol library httpx
uses for HTTP/2). Only the status is read: a check asks "may this key call this method?".
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Sequence
from typing import NamedTuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions

#: A unary request with an empty message: no compression flag, a length of 0.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"
OK = 0
UNAUTHENTICATED = 16


class GrpcStatus(NamedTuple):
    code: int
    message: str


class GrpcCallError(Exception):
    """No gRPC status came back: the port is closed, or not HTTP/2, or answered no status."""


def grpc_status(
    host: str,
    port: int,
    method: str,
    metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float = 10.0,
) -> GrpcStatus:
    """Call ``method`` (``/package.Service/Method``) with an empty request and ``metadata``;
    return the status the server answers with."""
    try:
        fields = _call(host, port, method, metadata, timeout_s)
    except (OSError, h2.exceptions.H2Error) as error:
        raise GrpcCallError(f"{method} on port {port}: {type(error).__name__}: {error}") from error
    if "grpc-status" not in fields:
        shown = fields.get(":status", "no answer")
        raise GrpcCallError(f"{method}: no gRPC status in the answer (HTTP {shown})")
    try:
        code = int(fields["grpc-status"])
    except ValueError as error:
        raise GrpcCallError(f"{method}: grpc-status {fields['grpc-status']!r}") from error
    return GrpcStatus(code, urllib.parse.unquote(fields.get("grpc-message", "")))


def _call(
    host: str, port: int, method: str, metadata: Sequence[tuple[str, str]], timeout_s: float
) -> dict[str, str]:
    """The response's headers and trailers, as text."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
        )
        connection.send_data(stream, EMPTY_MESSAGE, end_stream=True)
        sock.sendall(connection.data_to_send())
        fields: dict[str, str] = {}
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update(_text(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(
                    event,
                    h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated,
                ):
                    ended = True
            sock.sendall(connection.data_to_send())
    return fields


def _text(headers: Sequence[tuple[bytes | str, bytes | str]] | None) -> dict[str, str]:
    return {
        (name.decode() if isinstance(name, bytes) else name): (
            value.decode("latin-1") if isinstance(value, bytes) else value
        )
        for name, value in headers or ()
    }
