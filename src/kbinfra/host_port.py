"""An address as ``host:port`` (kept apart from the spec's models: the SSH target needs it
without loading pydantic)."""

from __future__ import annotations

from typing import NamedTuple


class HostPort(NamedTuple):
    """A host (name, IPv4, or IPv6 without brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
