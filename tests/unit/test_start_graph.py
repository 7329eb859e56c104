"""The start graph: each built-in service waits for what it needs at start, and no stage
waits for another."""

from __future__ import annotations

from typing import Any

import pytest

from kbinfra.errors import SpecError
from kbinfra.plan import dependencies, desired_services
from kbinfra.registry import all_services, get_service
from kbinfra.render import render_stack
from kbinfra.service import ContainerSpec, ServiceContext
from kbinfra.start_graph import find_cycle, start_graph

#: What each built-in service needs running before it starts, and why:
#: an exporter logs in to its store (postgres-exporter as the role postgres creates at
#: initdb); nothing else needs a peer at start. nginx resolves its upstreams per request
#: (``resolver`` and variables), Prometheus scrapes whatever answers, Grafana's provisioning
#: only records its data source, the app services keep no connection to the stores.
NEEDS_AT_START = {
    "postgres-exporter": {"postgres"},
    "redis-exporter": {"redis"},
}


def test_every_built_in_service_waits_only_for_what_it_needs_at_start(make_stack: Any) -> None:
    stack = make_stack("recommended")
    desired = desired_services(stack, render_stack(stack))
    # every built-in service is in this test (the app tier runs only with app.image)
    assert set(desired) == {n for n, s in all_services().items() if s.in_services_section}
    graph = dependencies(desired)
    assert {n: set(needs) for n, needs in graph.items() if needs} == NEEDS_AT_START
    assert set(graph) == set(desired)


def test_there_is_no_stage_barrier(make_stack: Any) -> None:
    stack = make_stack("recommended")
    graph = dependencies(desired_services(stack, render_stack(stack)))
    assert not graph["nginx"] & {"postgres", "qdrant", "redis", "unstructured", "embeddings"}
    for monitoring in ("prometheus", "alertmanager", "grafana", "node-exporter"):
        assert not graph[monitoring], monitoring
    assert "nginx" not in set().union(*graph.values())


def test_a_need_that_is_not_enabled_is_not_waited_for(make_stack: Any) -> None:
    stack = make_stack("minimum", {"services": {"postgres": {"enabled": False}}})
    graph = dependencies(desired_services(stack, render_stack(stack)))
    assert graph["postgres-exporter"] == frozenset()


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(SpecError, match="depends on 'postgress', which is no service"):
        start_graph({"postgres-exporter": ["postgress"]}, {"postgres", "postgres-exporter"})


def test_a_cycle_is_an_error_that_names_it() -> None:
    needs = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    with pytest.raises(SpecError, match="in a cycle: a → b → c → a"):
        start_graph(needs, set(needs))
    assert find_cycle({"a": ["b"], "b": []}) == []
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_a_cycle_in_the_service_folders_is_refused_at_load(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = get_service("redis")
    original = type(redis).container

    def needs_its_exporter(self: Any, ctx: ServiceContext) -> ContainerSpec:
        return original(self, ctx)._replace(depends_on=["redis-exporter"])

    monkeypatch.setattr(type(redis), "container", needs_its_exporter)
    stack = make_stack("minimum")
    with pytest.raises(SpecError, match="cycle: redis → redis-exporter → redis"):
        _ = stack.containers
