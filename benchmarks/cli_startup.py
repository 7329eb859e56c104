"""Time `kbinfra --help` and `kbinfra render` (large profile) as a user runs them.

Prints the median, min and max of several runs of each command in a fresh process, next to
`python -c pass` (the floor: this machine's speed right now; it is shared, and its speed
drifts by half between hours). With --instructions it also counts the instructions each
command executes under valgrind: that number does not drift, so compare changes with it.

Bytecode caches are allowed even when PYTHONDONTWRITEBYTECODE is set: `pip install .`
precompiles them, and without them an editable checkout recompiles kbinfra at every start.
Usage: python benchmarks/cli_startup.py [--runs 9] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import write_stack_dir  # needs the repo root on sys.path

TARGET_S = 0.3


def kbinfra_executable() -> list[str]:
    found = shutil.which("kbinfra", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "kbinfra"]


def run_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_runs(argv: list[str], runs: int) -> list[float]:
    env = run_env()
    subprocess.run(argv, check=True, capture_output=True, env=env)  # warm caches once
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        samples.append(time.perf_counter() - started)
    return samples


def instructions(argv: list[str]) -> int | None:
    """Instructions executed by ``argv`` (valgrind's I refs), or None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    probe = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    result = subprocess.run(
        [*probe, *argv], check=True, capture_output=True, text=True, env=run_env()
    )
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    return int(match[1].replace(",", "")) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    command = kbinfra_executable()
    with tempfile.TemporaryDirectory() as scratch:
        stack = write_stack_dir(Path(scratch) / "kb", "large")
        cases = {
            "kbinfra --help": [*command, "--help"],
            "kbinfra render (large)": [*command, "render", "--dir", str(stack)],
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
        }
        header = f"{'command':28} {'median':>8} {'min':>8} {'max':>8}"
        print(header + ("  instructions" if args.instructions else "") + f"  runs={args.runs}")
        for name, argv in cases.items():
            samples = time_runs(argv, args.runs)
            line = (
                f"{name:28} {statistics.median(samples):8.3f} {min(samples):8.3f} "
                f"{max(samples):8.3f}"
            )
            if args.instructions:
                count = instructions(argv)
                line += f"  {count / 1e9:.3f} G" if count else "  (no valgrind)"
            print(line)
        print(f"target: under {TARGET_S} s for --help and render; python: {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
