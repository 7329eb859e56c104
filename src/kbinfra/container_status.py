"""What a container listing's ``Status`` and ``Ports`` say, read one way for everyone: the
planner's :class:`kbinfra.containers.ObservedContainer` and the no-op record's look
(:mod:`kbinfra.noop_fast`, which loads no models)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_EXITED = re.compile(r"Exited \((-?\d+)\)")


def health_of(status: str) -> str | None:
    """healthy, unhealthy, starting, or None when the container has no health check."""
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def exit_code_of(status: str) -> int | None:
    """The exit code of an exited container (``Exited (0) 2 minutes ago``), else None."""
    match = _EXITED.match(status)
    return int(match.group(1)) if match else None


def published_ports(ports: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """``IP:public->private/proto`` of each published port, sorted, once each."""
    shown = sorted(
        f"{p.get('IP', '')}:{p['PublicPort']}->{p['PrivatePort']}/{p.get('Type', 'tcp')}"
        for p in ports
        if p.get("PublicPort")
    )
    return tuple(dict.fromkeys(shown))
