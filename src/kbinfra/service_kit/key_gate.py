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


def gated(ctx: ServiceContext) -> bool:
    """Whether nginx checks the clients' keys in front of the service of ``ctx`` (REST and,
    where it has one, gRPC): when it runs beside it on one host."""
    return key_gate(ctx) is not None


def client_address(ctx: ServiceContext, service: Service, gate_port: int) -> str:
    """Where ``service``'s clients on the stack network send their requests: nginx's key
    gate listener on ``gate_port``, or the service itself when there is no gate."""
    gate = key_gate(ctx)
    return gate.address(gate_port) if gate is not None else service.address()
