"""firewall.sh on a Swarm stack's nodes: the Swarm's own ports, to the nodes alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kbinfra.stack import Stack
from tests.unit.test_firewall import run_firewall


def test_a_swarm_nodes_firewall_opens_the_swarm_ports_to_the_nodes_alone(
    make_swarm_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    calls = run_firewall(make_swarm_stack(), tmp_path)
    nodes = ("10.213.0.11", "10.213.0.12", "10.213.0.13")  # tests/fixtures/swarm/nodes.yaml
    for node in nodes:
        for port in ("2377 proto tcp", "7946 proto tcp", "7946 proto udp", "4789 proto udp"):
            rule = f"ufw allow from {node} to any port {port}"
            assert rule in calls
            assert calls.index(rule) < calls.index("ufw --force enable")
    assert not [
        call
        for call in calls
        if any(p in call for p in ("2377", "7946", "4789")) and " from " not in call
    ]  # never open to everyone
    assert "ufw allow 22/tcp" in calls  # every node's sshd (the node file's port)
