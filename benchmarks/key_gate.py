"""What nginx's key gate in front of Qdrant costs: the same requests straight to Qdrant and
through the gate, in the same run, on REST and on gRPC.

A local stack with Qdrant and nginx (Qdrant behind its key gate, its gRPC published on a
free port) is applied from the test bed's images, a collection of --points random vectors is
loaded, and then for each of --runs rounds, in turn: --requests searches (top 10) and
--requests one-point upserts (``wait=true``), over REST and over gRPC (qdrant-client's stubs:
Points/Query, Points/Upsert), straight to Qdrant's container on the stack network with
Qdrant's own key (the reference), and the same through the gate on Qdrant's host ports with
the clients' key. Each path keeps one connection open (as a client library does). The stack
is destroyed with its data afterwards.

Prints per operation and path the median latency (median of the rounds' medians, with the
rounds' min-max), the gate's added milliseconds and the ratio to the reference. Progress
lines go to stderr. Never an assertion on time.

Usage:
  python benchmarks/key_gate.py --images IMAGE_MAP [--runs 5] [--requests 300] [--points 2000]
      [--output json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import httpx
import yaml
from qdrant_client import grpc as pb
from qdrant_client.grpc import points_service_pb2_grpc
from stack_files import free_port, only_services

KBINFRA = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
SERVICES = ("qdrant", "nginx")
COLLECTION = "gate_bench"
DIMENSION = 384  # the stack file's default collection_dimension


class Route(NamedTuple):
    """One way to Qdrant: a kept-open HTTP connection and a kept-open gRPC channel, each with
    the key this way sends."""

    http: httpx.Client
    points: Any  # qdrant-client's PointsStub on the channel
    metadata: tuple[tuple[str, str], ...]


Operation = Callable[[Route, random.Random], None]


def note(message: str) -> None:
    print(f"key_gate: {message}", file=sys.stderr, flush=True)


def kbinfra(args: list[str], folder: Path) -> str:
    proc = subprocess.run(
        [*KBINFRA, *args, "--dir", str(folder)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"kbinfra {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def make_stack(folder: Path, images: Path) -> dict[str, Any]:
    kbinfra(["init", "--profile", "minimum", "--images", str(images)], folder)
    path = folder / "kbinfra.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    only_services(data, SERVICES, "kbgate")
    data["services"]["qdrant"]["grpc_port"] = free_port()  # nginx gates it as well
    nginx = data["services"]["nginx"]
    nginx["http_port"], nginx["https_port"] = free_port(), free_port()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def qdrant_ip(stack_name: str) -> str:
    """Qdrant's container on the stack network (it publishes nothing behind the gate)."""
    shown = subprocess.run(
        ["docker", "inspect", "--format",
         "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", f"{stack_name}-qdrant"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return shown.stdout.strip()


def vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMENSION)]


def search(path: Route, rng: random.Random) -> None:
    body = {"vector": vector(rng), "limit": 10}
    path.http.post(f"/collections/{COLLECTION}/points/search", json=body).raise_for_status()


def upsert(path: Route, rng: random.Random) -> None:
    point = {"id": rng.randrange(1 << 40), "vector": vector(rng), "payload": {"bench": True}}
    body = {"points": [point]}
    path.http.put(f"/collections/{COLLECTION}/points?wait=true", json=body).raise_for_status()


def grpc_search(path: Route, rng: random.Random) -> None:
    query = pb.Query(nearest=pb.VectorInput(dense=pb.DenseVector(data=vector(rng))))
    request = pb.QueryPoints(collection_name=COLLECTION, query=query, limit=10)
    path.points.Query(request, metadata=path.metadata, timeout=60)


def grpc_upsert(path: Route, rng: random.Random) -> None:
    point = pb.PointStruct(
        id=pb.PointId(num=rng.randrange(1 << 40)),
        vectors=pb.Vectors(vector=pb.Vector(data=vector(rng))),
    )
    request = pb.UpsertPoints(collection_name=COLLECTION, wait=True, points=[point])
    path.points.Upsert(request, metadata=path.metadata, timeout=60)


OPERATIONS: dict[str, Operation] = {
    "search": search,
    "upsert": upsert,
    "grpc search": grpc_search,
    "grpc upsert": grpc_upsert,
}


def load(http: httpx.Client, points: int) -> None:
    http.put(
        f"/collections/{COLLECTION}", json={"vectors": {"size": DIMENSION, "distance": "Cosine"}}
    ).raise_for_status()
    rng = random.Random(1)
    for start in range(0, points, 250):
        batch = [{"id": i, "vector": vector(rng)} for i in range(start, min(points, start + 250))]
        http.put(
            f"/collections/{COLLECTION}/points?wait=true", json={"points": batch}
        ).raise_for_status()


def median_ms(path: Route, operation: Operation, requests: int, seed: int) -> float:
    rng = random.Random(seed)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        operation(path, rng)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(paths: dict[str, Route], runs: int, requests: int) -> dict[str, Any]:
    rounds: dict[str, dict[str, list[float]]] = {
        op: {path: [] for path in paths} for op in OPERATIONS
    }
    for run in range(runs):
        for name, operation in OPERATIONS.items():
            # alternate which path goes first, so neither always meets a warmer cache
            order = list(paths) if run % 2 == 0 else list(reversed(paths))
            for path in order:
                rounds[name][path].append(median_ms(paths[path], operation, requests, run))
        note(f"round {run + 1}/{runs} done")
    results = {}
    for name, by_path in rounds.items():
        direct = statistics.median(by_path["direct"])
        gate = statistics.median(by_path["gate"])
        results[name] = {
            "direct_ms": round(direct, 3),
            "gate_ms": round(gate, 3),
            "direct_range_ms": [round(min(by_path["direct"]), 3), round(max(by_path["direct"]), 3)],
            "gate_range_ms": [round(min(by_path["gate"]), 3), round(max(by_path["gate"]), 3)],
            "added_ms": round(gate - direct, 3),
            "ratio": round(gate / direct, 3),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--output", choices=("text", "json"), default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbgate-") as tmp:
        folder = Path(tmp) / "stack"
        spec = make_stack(folder, args.images.resolve())
        note(f"applying {spec['name']} (qdrant behind nginx's key gate)")
        kbinfra(["apply", "--yes", "-o", "json"], folder)
        try:
            secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
            qdrant = spec["services"]["qdrant"]
            ip = qdrant_ip(spec["name"])
            own = ("api-key", secrets["qdrant_upstream_api_key"])
            client = ("api-key", secrets["qdrant_api_key"])
            with (
                httpx.Client(base_url=f"http://{ip}:6333", headers=[own], timeout=60) as http,
                httpx.Client(
                    base_url=f"http://127.0.0.1:{qdrant['port']}", headers=[client], timeout=60
                ) as gate_http,
                grpc.insecure_channel(f"{ip}:6334") as channel,
                grpc.insecure_channel(f"127.0.0.1:{qdrant['grpc_port']}") as gate_channel,
            ):
                paths = {
                    "direct": Route(http, points_service_pb2_grpc.PointsStub(channel), (own,)),
                    "gate": Route(
                        gate_http, points_service_pb2_grpc.PointsStub(gate_channel), (client,)
                    ),
                }
                note(f"loading {args.points} points")
                load(http, args.points)
                results = measure(paths, args.runs, args.requests)
        finally:
            kbinfra(["destroy", "--yes", "--delete-data", "--confirm-name", spec["name"]], folder)
    report = {
        "runs": args.runs,
        "requests_per_round": args.requests,
        "points": args.points,
        "operations": results,
    }
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return
    print(
        f"Qdrant straight vs through nginx's key gate: {args.runs} rounds x "
        f"{args.requests} requests per path, {args.points} points of {DIMENSION} dims"
    )
    print(f"{'operation':<12} {'direct ms':>16} {'gate ms':>16} {'added ms':>9} {'ratio':>6}")
    for name, row in results.items():
        low, high = row["direct_range_ms"]
        glow, ghigh = row["gate_range_ms"]
        print(
            f"{name:<12} {row['direct_ms']:>6.2f} ({low:.2f}-{high:.2f}) "
            f"{row['gate_ms']:>6.2f} ({glow:.2f}-{ghigh:.2f}) {row['added_ms']:>9.2f} "
            f"{row['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
