"""Time `kbinfra apply` as a user runs it: cold, no-op, and one changed service.

For each target (local, and ssh:// when --ssh is given) and each of --runs rounds: a new
stack is applied from nothing (cold), applied again unchanged (no-op), then one PostgreSQL
setting is changed and applied (one-service change); the stack is destroyed with its data
afterwards. Prints the median and spread of each. Never an assertion on time.

Usage:
  python benchmarks/apply.py --images IMAGE_MAP [--runs 3]
      [--ssh ssh://user@host:port --known-hosts FILE --identity KEY]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

KBINFRA = [sys.executable, "-c", "from kbinfra.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:])} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def _stack(folder: Path, images: Path, target: str, env: dict[str, str]) -> str:
    init = [*KBINFRA, "init", "--profile", "minimum", "--images", str(images)]
    _run([*init, "--target", target, "--dir", str(folder)], env)
    mapped = yaml.safe_load(images.read_text())
    mapped = mapped.get("images", mapped)
    data: dict[str, Any] = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    name = f"kbbench{uuid.uuid4().hex[:6]}"
    data["name"] = name
    for service, settings in data["services"].items():
        settings["enabled"] = service in mapped
        if settings.get("port") and service != "nginx":
            settings["port"] = _free_port()
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def _change(folder: Path, value: int) -> None:
    data = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    data["services"]["postgres"]["max_connections"] = value
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def measure(target: str, images: Path, runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        "cold apply": [],
        "no-op apply": [],
        "one-service change": [],
    }
    for index in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="kbinfra-bench-"))
        name = _stack(folder, images, target, env)
        apply = [*KBINFRA, "apply", "--yes", "--dir", str(folder)]
        try:
            samples["cold apply"].append(_run(apply, env))
            samples["no-op apply"].append(_run(apply, env))
            _change(folder, 60 + index)
            samples["one-service change"].append(_run(apply, env))
        finally:
            destroy = [*KBINFRA, "destroy", "--yes", "--delete-data", "--confirm-name", name]
            subprocess.run(
                [*destroy, "--dir", str(folder)], capture_output=True, env=env, check=False
            )
            shutil.rmtree(folder, ignore_errors=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="image map (kbinfra init)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ssh", help="also measure this ssh://user@host:port target")
    parser.add_argument("--known-hosts", type=Path)
    parser.add_argument("--identity", type=Path)
    args = parser.parse_args()
    env = dict(os.environ)
    targets = ["local"]
    if args.ssh:
        targets.append(args.ssh)
        if args.known_hosts:
            env["KBINFRA_KNOWN_HOSTS"] = str(args.known_hosts)
        if args.identity:
            env["KBINFRA_SSH_IDENTITY"] = str(args.identity)
    print(f"{'target':<32} {'case':<20} {'median':>8} {'min':>8} {'max':>8}  runs")
    for target in targets:
        for case, values in measure(target, args.images, args.runs, env).items():
            print(
                f"{target:<32} {case:<20} {statistics.median(values):7.2f}s "
                f"{min(values):7.2f}s {max(values):7.2f}s  {len(values)}"
            )


if __name__ == "__main__":
    main()
