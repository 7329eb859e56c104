"""Time `kbinfra --help` and `kbinfra render` (large profile) as a user runs them.

Prints the median and spread of several runs of each command in a fresh process.
Usage: python benchmarks/cli_startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import write_stack_dir  # needs the repo root on sys.path


def kbinfra_executable() -> list[str]:
    found = shutil.which("kbinfra", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "kbinfra"]


def time_runs(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm the page cache once
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    command = kbinfra_executable()
    with tempfile.TemporaryDirectory() as scratch:
        stack = write_stack_dir(Path(scratch) / "kb", "large")
        cases = {
            "kbinfra --help": [*command, "--help"],
            "kbinfra render (large)": [*command, "render", "--dir", str(stack)],
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
        }
        print(f"{'command':28} {'median':>8} {'min':>8} {'max':>8}  runs={args.runs}")
        for name, argv in cases.items():
            samples = time_runs(argv, args.runs)
            print(
                f"{name:28} {statistics.median(samples):8.3f} {min(samples):8.3f} "
                f"{max(samples):8.3f}"
            )


if __name__ == "__main__":
    main()
