"""firewall.sh, run with stand-ins for ufw, iptables and ip that log their arguments."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from kbinfra.exports import stack_files
from kbinfra.stack import Stack

# Logs its call; a delete finds no rule (as on a fresh host), which ends the script's loop.
LOGGING_TOOL = '#!/bin/sh\necho "$(basename "$0") $*" >> "$TOOL_LOG"\n[ "$1" != -D ]\n'


def run_firewall(stack: Stack, tmp_path: Path, ssh_connection: str | None = None) -> list[str]:
    """The ufw/iptables calls firewall.sh makes for ``stack``, one line each."""
    script = next(f for f in stack_files(stack) if f.path == "firewall.sh")
    (tmp_path / "firewall.sh").write_text(script.text)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("ufw", "iptables", "ip"):
        (tools / tool).write_text(LOGGING_TOOL)
        (tools / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{tools}:/usr/bin:/bin", "TOOL_LOG": str(log), "EXTERNAL_IF": "eth0"}
    if ssh_connection is not None:
        env["SSH_CONNECTION"] = ssh_connection
    subprocess.run(["sh", str(tmp_path / "firewall.sh")], env=env, check=True, timeout=30)
    return log.read_text().splitlines()


def test_the_ssh_targets_port_stays_open_before_deny(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    calls = run_firewall(make_stack("minimum", {"target": "ssh://deploy@10.0.0.5:2222"}), tmp_path)
    assert "ufw allow 2222/tcp" in calls
    assert "ufw allow 22/tcp" not in calls  # nobody said sshd listens on 22 there


def test_the_port_of_the_running_ssh_session_stays_open(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    calls = run_firewall(
        make_stack("minimum"), tmp_path, ssh_connection="10.0.0.9 50122 10.0.0.5 2200"
    )
    assert {"ufw allow 22/tcp", "ufw allow 2200/tcp"} <= set(calls)
    assert calls.index("ufw allow 2200/tcp") < calls.index("ufw --force enable")


def test_a_local_target_keeps_port_22(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    assert "ufw allow 22/tcp" in run_firewall(make_stack("minimum"), tmp_path)


def test_a_one_host_firewall_opens_no_swarm_port(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    calls = run_firewall(make_stack("minimum"), tmp_path)
    assert not [call for call in calls if any(p in call for p in ("2377", "7946", "4789"))]
