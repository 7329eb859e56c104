"""Time `kbinfra apply` on the three-node Swarm test bed next to the same stack on one host.

The stack is the one tests/integration/test_swarm_cli.py applies, without its Qdrant (kept
comparable with earlier runs): PostgreSQL and Redis (pinned on a Swarm), nginx (two
replicas), the PostgreSQL and Redis exporters. For each
target — the Swarm of --nodes, and the local engine — and each of --runs rounds: the stack
is applied from nothing (cold: services, secrets, configs, network; on a Swarm the Swarm
itself and the images on the nodes are there after the first round, which is reported on
its own line), applied again unchanged --noops times (no-op), then one PostgreSQL setting
is changed and applied (one-service change); then destroyed with its data. Every apply is
the real CLI (`kbinfra apply --yes --output json`), timed wall-clock from here. The nodes
leave any Swarm first (through their sockets: this is for the test bed only).

Then node loss, on a Swarm of its own: the nodes leave the Swarm, and the stack is applied
with the node file's last node as a *worker* (the others managers, holding the pinned
stores), so that stopping it never takes a manager, let alone the first one (stopping the
first manager once left a cluster without a Raft leader). The worker runs a task of a
stateless service (an exporter or nginx: the first of LOSS_CANDIDATES it runs); its
dockerd is stopped (`scripts/testbed cluster node stop`), and the time until Swarm runs a
new task of that service on another node is measured (read from the first manager's
socket every 0.2 s); the worker is started again and the stack converged before the next
of --losses rounds, and the exporters are force-updated so that one runs on the worker
again (nothing moves back by itself). A round whose worker runs no stateless task is
skipped, and says so: no other node is ever stopped.

Prints a table (case x target: median, min-max, n, and Swarm / one host) and the load
average; progress goes to stderr. Never an assertion on time.

Usage (the test bed up, `scripts/testbed cluster up` printed the node file):
  python benchmarks/swarm.py --nodes .testbed/cluster/nodes.yaml --images .testbed/images.yaml
      [--runs 3] [--noops 3] [--losses 2] [--output json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

KBINFRA = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("postgres", "redis", "nginx", "postgres-exporter", "redis-exporter")
#: The test bed declares 20 GB per node; the minimum profile's PostgreSQL alone asks 80.
ROOMY_STORAGE_GB = 500.0
#: Stateless services whose task on the worker may be lost, in the order they are chosen.
LOSS_CANDIDATES = ("postgres-exporter", "redis-exporter", "nginx")
COLD, FIRST, NOOP, CHANGE, LOSS = (
    "cold apply",
    "first apply (Swarm created; images copied where lacking)",
    "no-op apply",
    "one-service change",
    "reschedule after node loss",
)
TIMEOUT_S = "300"

_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    begun = time.monotonic()
    done = subprocess.run(list(argv), capture_output=True, text=True, env=dict(env), check=False)
    wall = time.monotonic() - begun
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(argv[3:6])}… failed ({done.returncode}): {' | '.join(tail)}")
    return wall, done.stdout


def _edit(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "kbinfra.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _stack(
    folder: Path, images: Path, env: Mapping[str, str], nodes: Path | None, *, worker: bool = False
) -> str:
    """``kbinfra init`` of the stack into ``folder`` (a Swarm one with ``nodes``); ``worker``:
    the last node is a worker and the pinned stores are on the managers."""
    init = [*KBINFRA, "init", "--profile", "minimum", "--images", str(images)]
    where = ["--target", "swarm", "--nodes", str(nodes)] if nodes else []
    _run([*init, *where, "--dir", str(folder)], env)
    name = f"kbsb{uuid.uuid4().hex[:6]}"

    def configure(data: dict[str, Any]) -> None:
        data["name"] = name
        for service, settings in data["services"].items():
            settings["enabled"] = service in SERVICES
            if nodes is None:
                for key in ("port", "http_port", "https_port"):
                    if settings.get(key):
                        settings[key] = _free_port()  # beside other stacks on a shared engine
        if nodes is not None:
            for node in data["swarm"]["nodes"]:
                node["storage_gb"] = ROOMY_STORAGE_GB
            first = data["swarm"]["nodes"][0]["address"]
            # nginx resolves its upstream when it starts: an address the nodes know.
            data["app"]["upstream"] = first.rsplit("@", 1)[1].rsplit(":", 1)[0] + ":8000"
        if nodes is not None and worker:
            *managers, last = data["swarm"]["nodes"]
            last["role"] = "worker"
            placed = data["swarm"]["services"]
            for store, manager in zip(("redis", "postgres"), managers, strict=False):
                placed[store] = {"placement": {"nodes": [manager["name"]]}}

    _edit(folder, configure)
    return name


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _apply(folder: Path, env: Mapping[str, str]) -> float:
    wall, out = _run([*KBINFRA, "apply", "--yes", "-o", "json", "--timeout", TIMEOUT_S,
                      "--dir", str(folder)], env)  # fmt: skip
    result = json.loads(out)
    if not result.get("ok", True):
        raise SystemExit(f"apply of {folder} failed: {result.get('error')}")
    return wall


def _destroy(folder: Path, name: str, env: Mapping[str, str]) -> None:
    _run([*KBINFRA, "destroy", "--yes", "--delete-data", "--confirm-name", name,
          "--dir", str(folder)], env)  # fmt: skip


def leave_swarm(nodes: Path) -> None:
    """The test bed's nodes out of any Swarm (the first manager last), through their sockets:
    the first Swarm round then creates it, as a user's first apply does; the test modules
    find the nodes in no Swarm after the benchmark."""
    import docker  # noqa: PLC0415
    import docker.errors  # noqa: PLC0415

    sockets = list(_node_sockets(nodes).values())
    first = docker.DockerClient(base_url=sockets[0])
    try:
        # The other managers demoted first, by the first one while it leads: a manager that
        # force-leaves a Swarm of two takes the other's quorum with it, and a leaderless
        # manager cannot leave (`swarm leave --force` answers "does not have a leader").
        leading = first.info()["Swarm"].get("ControlAvailable")
        for node in first.api.nodes() if leading else []:
            spec, status = node["Spec"], node.get("ManagerStatus") or {}
            if spec.get("Role") == "manager" and not status.get("Leader"):
                demoted = {**spec, "Role": "worker"}
                first.api.update_node(node["ID"], node["Version"]["Index"], demoted)
    except docker.errors.APIError as error:
        progress(f"swarm: could not demote the other managers: {error}")
    finally:
        first.close()
    for socket_url in reversed(sockets):
        client = docker.DockerClient(base_url=socket_url)
        try:
            client.swarm.leave(force=True)
        except docker.errors.APIError:
            pass  # in no Swarm
        finally:
            client.close()


def measure_applies(
    label: str, images: Path, env: Mapping[str, str], nodes: Path | None, *, runs: int, noops: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {COLD: [], NOOP: [], CHANGE: [], FIRST: []}
    with tempfile.TemporaryDirectory(prefix="kbinfra-swarm-bench-") as scratch:
        folder = Path(scratch) / "kb"
        name = _stack(folder, images, env, nodes)
        for round_ in range(runs + (1 if nodes else 0)):
            first = nodes is not None and round_ == 0
            cold = _apply(folder, env)
            samples[FIRST if first else COLD].append(cold)
            progress(f"{label}: {'first' if first else 'cold'} apply {cold:.1f}s")
            for _ in range(noops):
                samples[NOOP].append(_apply(folder, env))
            progress(
                f"{label}: no-op applies {', '.join(f'{s:.2f}' for s in samples[NOOP][-noops:])}s"
            )
            _edit(
                folder, lambda d, v=50 + round_: d["services"]["postgres"].update(max_connections=v)
            )
            samples[CHANGE].append(_apply(folder, env))
            progress(f"{label}: one-service change {samples[CHANGE][-1]:.1f}s")
            _destroy(folder, name, env)
    return samples


# ---------------------------------------------------------------- node loss


def _node_sockets(nodes: Path) -> dict[str, str]:
    cluster = os.environ.get("KBINFRA_TESTBED_CLUSTER", "kbtb")  # as tests/testbed/cluster.sh
    data = yaml.safe_load(nodes.read_text())
    return {str(n["name"]): f"unix:///run/{cluster}/{n['name']}/docker.sock" for n in data["nodes"]}


def _running_nodes(client: Any, service: str) -> list[str]:
    """The nodes (by hostname) where ``service`` has a running task Swarm wants running."""
    names = {n["ID"]: n["Description"]["Hostname"] for n in client.api.nodes()}
    tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
    return sorted(
        names.get(t.get("NodeID"), "?") for t in tasks if t["Status"]["State"] == "running"
    )


def _worker_task(client: Any, name: str, worker: str) -> str | None:
    """The first of LOSS_CANDIDATES with a running task on ``worker``, as a Swarm service."""
    for candidate in LOSS_CANDIDATES:
        if worker in _running_nodes(client, f"{name}_{candidate}"):
            return f"{name}_{candidate}"
    return None


def _back_onto(client: Any, name: str, worker: str) -> None:
    """After the worker returns nothing moves back by itself: force-update the candidates'
    services (test bed only) until one has its task on the worker again, the emptiest node."""
    for candidate in LOSS_CANDIDATES[:2]:  # the exporters: one replica each
        service = f"{name}_{candidate}"
        client.services.get(service).force_update()
        begun = time.monotonic()
        while time.monotonic() - begun < 120:
            time.sleep(1.0)
            running = _running_nodes(client, service)
            tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
            if len(running) == 1 and len(tasks) == 1:
                break
        if worker in _running_nodes(client, service):
            return


def _role(client: Any, hostname: str) -> str:
    for node in client.api.nodes():
        if node["Description"]["Hostname"] == hostname:
            return str(node["Spec"]["Role"])
    return "unknown"


def measure_loss(images: Path, env: Mapping[str, str], nodes: Path, losses: int) -> list[float]:
    import docker  # noqa: PLC0415

    sockets = _node_sockets(nodes)
    first_manager, *_, worker = list(sockets)
    testbed = [str(REPO / "scripts" / "testbed"), "cluster", "node"]
    seconds: list[float] = []
    leave_swarm(nodes)  # the rounds' Swarm has three managers: this one gets a worker
    with tempfile.TemporaryDirectory(prefix="kbinfra-swarm-loss-") as scratch:
        folder = Path(scratch) / "kb"
        name = _stack(folder, images, env, nodes, worker=True)
        _apply(folder, env)
        manager = docker.DockerClient(base_url=sockets[first_manager])  # never stopped
        try:
            for _ in range(losses):
                if _role(manager, worker) != "worker":
                    raise SystemExit(f"{worker} is not a worker: not stopping it")
                service = _worker_task(manager, name, worker)
                if service is None:
                    progress(f"swarm: no stateless task on the worker {worker}: round skipped")
                    continue
                subprocess.run([*testbed, "stop", worker], check=True, capture_output=True)
                begun = time.monotonic()
                while True:
                    running = _running_nodes(manager, service)
                    wanted = 2 if service.endswith("_nginx") else 1
                    if len(running) >= wanted and worker not in running:
                        break
                    if time.monotonic() - begun > 300:
                        raise SystemExit(f"{service} not rescheduled off {worker} in 300 s")
                    time.sleep(0.2)
                seconds.append(time.monotonic() - begun)
                moved = ", ".join(running)
                progress(f"swarm: {service} off {worker} onto {moved} in {seconds[-1]:.1f}s")
                subprocess.run([*testbed, "start", worker], check=True, capture_output=True)
                _apply(folder, env)  # converged again (apply waits for every service)
                _back_onto(manager, name, worker)
        finally:
            manager.close()
            _destroy(folder, name, env)
            leave_swarm(nodes)  # as found: a Swarm of two managers is fragile to leave
    return seconds


# ---------------------------------------------------------------- report


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f}, n={len(values)})"
    )


def format_report(swarm: Mapping[str, list[float]], host: Mapping[str, list[float]],
                  load_before: str, load_after: str) -> str:  # fmt: skip
    lines = [f"{'case':<44} {'Swarm (3 nodes)':<28} {'one host (local)':<28} Swarm/host"]
    for case in (COLD, NOOP, CHANGE, FIRST, LOSS):
        ours, theirs = swarm.get(case, []), host.get(case, [])
        ratio = (
            f"{statistics.median(ours) / statistics.median(theirs):.1f}x"
            if ours and theirs
            else "-"
        )
        lines.append(f"{case:<44} {_cell(ours):<28} {_cell(theirs):<28} {ratio}")
    lines.append(f"load average before: {load_before}; after: {load_after}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=Path, required=True, help="the test bed's node file")
    parser.add_argument("--images", type=Path, required=True, help="the test bed's image map")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--noops", type=int, default=3)
    parser.add_argument("--losses", type=int, default=2)
    parser.add_argument("--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    load_before = _load()
    progress(f"load average {load_before}")
    leave_swarm(args.nodes)
    swarm = measure_applies(
        "swarm", args.images, env, args.nodes.absolute(), runs=args.runs, noops=args.noops
    )
    host = measure_applies("local", args.images, env, None, runs=args.runs, noops=args.noops)
    if args.losses:
        swarm[LOSS] = measure_loss(args.images, env, args.nodes.absolute(), args.losses)
    load_after = _load()
    if args.output == "json":
        print(json.dumps({"swarm": swarm, "host": host, "load": [load_before, load_after]}))
    else:
        print(format_report(swarm, host, load_before, load_after))


if __name__ == "__main__":
    main()
