"""The stack file edits of the benchmarks that apply a stack of their own: only the services
they measure, every host port a free one (beside other stacks on a shared engine). Imported
by the scripts beside it (``python benchmarks/NAME.py`` puts this folder on sys.path)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Collection
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def only_services(data: dict[str, Any], services: Collection[str], name_prefix: str) -> None:
    """A new stack name, ``services`` alone enabled, each ``port`` a free one, no gRPC port
    (Qdrant behind nginx's key gate where nginx is enabled)."""
    data["name"] = f"{name_prefix}{uuid.uuid4().hex[:6]}"
    for service, settings in data["services"].items():
        settings["enabled"] = service in services
        if settings.get("port"):
            settings["port"] = free_port()
        if "grpc_port" in settings:
            settings["grpc_port"] = None
