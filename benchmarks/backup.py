"""Measure `kbinfra backup`: throughput (MB/s) and the peak memory (RSS) of the process,
for growing amounts of data. The backup streams every artifact to disk chunk by chunk, so
the peak RSS should stay flat while the data grows.

For each target (local, and ssh:// when --ssh is given) a stack with PostgreSQL, Qdrant and
Redis is applied; then for each size in --sizes (MB, ascending) the stores are filled up to
about that much incompressible data (70% PostgreSQL rows, 25% Redis values, 5% Qdrant points)
and `kbinfra backup` runs in a child process whose peak RSS the kernel reports (wait4). The
stack is destroyed with its data afterwards. Prints numbers; never an assertion.

With --offsite, a local stack sends each backup to a restic repository on a local path:
per size the upload's throughput, the bytes a second unchanged night adds, and the peak RSS
(kbinfra and its restic child); at the end the time of `restore offsite:latest` onto the
stack after `destroy --delete-data` and `apply` (a bare stack).

Usage:
  python benchmarks/backup.py --images IMAGE_MAP [--sizes 50,200]
      [--ssh ssh://user@host:port --known-hosts FILE --identity KEY] [--offsite|--offsite-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import yaml
from stack_files import only_services

KBINFRA = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
MB = 1_000_000
DATA_SERVICES = ("postgres", "qdrant", "redis")
ROW_BYTES = 8192  # 512 md5 digests: incompressible, as pg_dump -Fc compresses
REDIS_VALUE_BYTES = 1024
QDRANT_DIM = 128


def _kbinfra(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([*KBINFRA, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"kbinfra {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def _stack(folder: Path, images: Path, target: str, env: dict[str, str]) -> dict[str, Any]:
    _kbinfra(["init", "--profile", "minimum", "--images", str(images), "--target", target,
              "--dir", str(folder)], env)  # fmt: skip
    data: dict[str, Any] = yaml.safe_load((folder / "kbinfra.yaml").read_text())
    only_services(data, DATA_SERVICES, "kbbench")
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return data


class Filler:
    """Adds data to the three stores until they hold about the asked total."""

    def __init__(self, spec: dict[str, Any], secrets: dict[str, str]) -> None:
        services = spec["services"]
        self.pg = psycopg.connect(
            host="127.0.0.1", port=services["postgres"]["port"], user="kb",
            password=secrets["postgres_password"], dbname="kb", autocommit=True,
        )  # fmt: skip
        self.redis = redis.Redis(
            host="127.0.0.1", port=services["redis"]["port"], username="admin",
            password=secrets["redis_admin_password"],
        )  # fmt: skip
        self.qdrant = httpx.Client(
            base_url=f"http://127.0.0.1:{services['qdrant']['port']}",
            headers={"api-key": secrets["qdrant_api_key"]},
            timeout=120,
        )
        self.pg.execute("create table blob (id int primary key, data bytea)")
        self.qdrant.put(
            "/collections/bench", json={"vectors": {"size": QDRANT_DIM, "distance": "Dot"}}
        ).raise_for_status()
        self.rows = self.keys = self.points = 0
        self.random = random.Random(7)

    def fill_to(self, total_bytes: int) -> None:
        rows = int(total_bytes * 0.70) // ROW_BYTES
        keys = int(total_bytes * 0.25) // REDIS_VALUE_BYTES
        points = int(total_bytes * 0.05) // (QDRANT_DIM * 16)  # about 16 bytes per float in JSON
        if rows > self.rows:
            self.pg.execute(
                "insert into blob select g, decode(string_agg(md5(g::text || '-' || i), ''"
                " order by i), 'hex') from generate_series(%s::int, %s::int) g,"
                " generate_series(1, 512) i group by g",
                (self.rows, rows - 1),
            )
            self.rows = rows
        while self.keys < keys:
            pipe = self.redis.pipeline(transaction=False)
            for key in range(self.keys, min(keys, self.keys + 1000)):
                pipe.set(f"bench:{key}", os.urandom(REDIS_VALUE_BYTES))
            pipe.execute()
            self.keys = min(keys, self.keys + 1000)
        while self.points < points:
            batch = range(self.points, min(points, self.points + 200))
            body = {
                "points": [
                    {"id": i, "vector": [self.random.uniform(-1, 1) for _ in range(QDRANT_DIM)],
                     "payload": {"i": i}}
                    for i in batch
                ]
            }  # fmt: skip
            self.qdrant.put("/collections/bench/points?wait=true", json=body).raise_for_status()
            self.points = batch.stop

    def close(self) -> None:
        self.pg.close()
        self.redis.close()
        self.qdrant.close()


def backup_once(folder: Path, dest: Path | None, env: dict[str, str]) -> dict[str, Any]:
    """Run `kbinfra backup` in a child; its throughput and the child's own peak RSS."""
    started = time.perf_counter()
    where = ["--dest", str(dest)] if dest is not None else []
    proc = subprocess.Popen(
        [*KBINFRA, "backup", "--dir", str(folder), *where, "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    output = stdout.read()
    errors = stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"backup failed:\n{errors.decode()[-2000:]}")
    result = json.loads(output)
    return {
        "bytes": result["bytes"],
        "seconds": seconds,
        "mb_per_s": result["bytes"] / MB / seconds,
        "peak_rss_mb": usage.ru_maxrss * 1024 / MB,  # Linux reports KiB
        "offsite": result.get("offsite") or [],
    }


def measure(target: str, images: Path, sizes: list[int], env: dict[str, str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kbinfra-bench-"))
    spec = _stack(folder, images, target, env)
    try:
        _kbinfra(["apply", "--yes", "--dir", str(folder)], env)
        secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
        filler = Filler(spec, secrets)
        print(f"\n{target}: stack {spec['name']}")
        print(f"{'data':>8} {'backup':>10} {'time':>8} {'MB/s':>8} {'peak RSS':>10}")
        try:
            for size in sizes:
                filler.fill_to(size * MB)
                dest = folder / f"backups-{size}"
                result = backup_once(folder, dest, env)
                shutil.rmtree(dest)
                print(
                    f"{size:>5} MB {result['bytes'] / MB:>7.1f} MB {result['seconds']:>7.1f}s "
                    f"{result['mb_per_s']:>8.1f} {result['peak_rss_mb']:>7.1f} MB",
                    flush=True,
                )
        finally:
            filler.close()
    finally:
        subprocess.run(
            [*KBINFRA, "destroy", "--yes", "--delete-data", "--confirm-name", spec["name"],
             "--force-unlock", "--dir", str(folder)],
            capture_output=True, env=env, check=False,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def measure_offsite(images: Path, sizes: list[int], env: dict[str, str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kbinfra-bench-offsite-"))
    spec = _stack(folder, images, "local", env)
    spec["backup"]["offsite"] = [{"name": "bench", "repository": str(folder / "restic-repo")}]
    (folder / "kbinfra.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        _kbinfra(["init", "--dir", str(folder)], env)  # generates offsite_bench_password
        _kbinfra(["apply", "--yes", "--dir", str(folder)], env)
        secrets = yaml.safe_load((folder / "secrets.yaml").read_text())
        filler = Filler(spec, secrets)
        print(f"\noffsite (local-path restic repository): stack {spec['name']}")
        print(f"{'data':>8} {'backup':>10} {'upload':>8} {'MB/s':>8} {'added':>10} "
              f"{'2nd night':>10} {'peak RSS':>10}")  # fmt: skip
        try:
            for size in sizes:
                filler.fill_to(size * MB)
                first = backup_once(folder, None, env)
                second = backup_once(folder, None, env)
                upload, again = first["offsite"][0], second["offsite"][0]
                rate = upload["bytes"] / MB / upload["seconds"] if upload["seconds"] else 0.0
                print(
                    f"{size:>5} MB {upload['bytes'] / MB:>7.1f} MB {upload['seconds']:>7.1f}s "
                    f"{rate:>8.1f} {upload['bytes_added'] / MB:>7.1f} MB "
                    f"{again['bytes_added'] / MB:>7.2f} MB "
                    f"{max(first['peak_rss_mb'], second['peak_rss_mb']):>7.1f} MB",
                    flush=True,
                )
        finally:
            filler.close()
        _kbinfra(["destroy", "--yes", "--delete-data", "--confirm-name", spec["name"],
                  "--dir", str(folder)], env)  # fmt: skip
        shutil.rmtree(folder / "backups")
        _kbinfra(["apply", "--yes", "--dir", str(folder)], env)
        started = time.perf_counter()
        _kbinfra(["restore", "offsite:latest", "--yes", "--no-safety-backup", "--dir",
                  str(folder)], env)  # fmt: skip
        print(f"restore offsite:latest onto the bare stack ({sizes[-1]} MB of data): "
              f"{time.perf_counter() - started:.1f}s")  # fmt: skip
    finally:
        subprocess.run(
            [*KBINFRA, "destroy", "--yes", "--delete-data", "--confirm-name", spec["name"],
             "--force-unlock", "--dir", str(folder)],
            capture_output=True, env=env, check=False,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="image map (test bed)")
    parser.add_argument("--sizes", default="50,200", help="MB of data, ascending")
    parser.add_argument("--ssh", help="also measure this ssh://user@host:port target")
    parser.add_argument("--known-hosts", type=Path)
    parser.add_argument("--identity", type=Path)
    parser.add_argument("--offsite", action="store_true", help="also measure offsite uploads")
    parser.add_argument(
        "--offsite-only", action="store_true", help="measure only the offsite uploads"
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBINFRA_")}
    if args.offsite_only:
        measure_offsite(args.images, sizes, env)
        return
    measure("local", args.images, sizes, env)
    if args.ssh:
        ssh_env = dict(env)
        if args.known_hosts:
            ssh_env["KBINFRA_KNOWN_HOSTS"] = str(args.known_hosts)
        if args.identity:
            ssh_env["KBINFRA_SSH_IDENTITY"] = str(args.identity)
        measure(args.ssh, args.images, sizes, ssh_env)
    if args.offsite:
        measure_offsite(args.images, sizes, env)


if __name__ == "__main__":
    main()
