"""What each service needs running before it starts: the graph ``apply`` schedules on. Pure.

Each service's container names what it needs *at start* (``ContainerSpec.depends_on``): an
exporter its store, nothing for a service that finds its peers per request (nginx resolves its
upstreams through Docker's DNS; Prometheus scrapes whatever answers). There are no stages: a
service waits for what it names and for nothing else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from kbinfra.errors import SpecError


def start_graph(
    needs: Mapping[str, Sequence[str]], known: Collection[str]
) -> dict[str, frozenset[str]]:
    """For each enabled service, the enabled services it waits for.

    ``needs`` maps every enabled service to its ``depends_on``; ``known`` is every service
    kbinfra has. A need that is known but not enabled is not waited for (``render --check``
    reports a service left on without what it requires); an unknown name or a cycle is an
    error.
    """
    for name, wanted in needs.items():
        for need in wanted:
            if need not in known:
                raise SpecError(
                    f"service {name} depends on {need!r}, which is no service kbinfra knows",
                    where=f"services/{name}: ContainerSpec.depends_on",
                    fix="name a registered service (see `kbinfra render --check`) or drop it",
                )
    graph = {
        name: frozenset(need for need in wanted if need in needs and need != name)
        for name, wanted in needs.items()
    }
    cycle = find_cycle(graph)
    if cycle:
        raise SpecError(
            "services wait for each other in a cycle: " + " → ".join(cycle),
            where="ContainerSpec.depends_on",
            fix="a service may name only what it needs at start; drop one of these",
        )
    return graph


def find_cycle(graph: Mapping[str, Collection[str]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str]:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return []
        path.append(name)
        for need in sorted(graph.get(name, ())):
            found = visit(need)
            if found:
                return found
        path.pop()
        done.add(name)
        return []

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return []
