"""Which enabled service checks another's key in front of it (:class:`kbinfra.service.KeyGate`):
asked of the services (``checks_keys``), never named."""

from __future__ import annotations

from kbinfra.registry import all_services
from kbinfra.service import Service, ServiceContext
from kbinfra.spec.values import SWARM_TARGET


def key_gate(ctx: ServiceContext) -> Service | None:
    """The enabled service that checks keys for the others (nginx), or None. On one host
    only: a Swarm's nginx is not built as a key gate."""
    if ctx.stack.target == SWARM_TARGET:
        return None
    return next(
        (s for s in all_services().values() if s.checks_keys and s.name in ctx.enabled), None
    )
