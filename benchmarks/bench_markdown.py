"""Turn ``kbinfra bench --output json`` into the Markdown table docs/bench.md and the README use.

kbinfra bench --quick --output json --dir STACK > bench.json
python benchmarks/bench_markdown.py bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kbinfra.probing.probe import format_rate, format_seconds


def verdicts(result: dict[str, Any]) -> str:
    parts = []
    for t in result["thresholds"]:
        unit = " s" if t["metric"].endswith("_s") else ""
        parts.append(
            f"{'ok' if t['ok'] else '**miss**'} {t['metric']} {t['op']} {t['limit']:g}{unit}"
        )
    return "; ".join(parts)


def table(report: dict[str, Any]) -> str:
    columns = ("service", "benchmark", "client", "concurrency", "throughput", "p50", "p95")
    header = (*columns, "p99", "thresholds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["results"]:
        if r["error"]:
            lines.append(f"| {r['service']} | {r['name']} | - | - | - | - | - | - | {r['error']} |")
            continue
        latency = r["latency"]
        extra = "".join(
            f" ({k} {v:.2f})" for k, v in sorted(r["extra"].items()) if k == "recall_at_10"
        )
        lines.append(
            f"| {r['service']} | {r['name']}{extra} | {r['client']} | {r['concurrency']} | "
            f"{format_rate(r['throughput_per_s'])} {r['unit']}/s | "
            f"{format_seconds(latency['p50_s'])} | {format_seconds(latency['p95_s'])} | "
            f"{format_seconds(latency['p99_s'])} | {verdicts(r)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    source = Path(sys.argv[1]).read_text() if len(sys.argv) > 1 else sys.stdin.read()
    sys.stdout.write(table(json.loads(source)))


if __name__ == "__main__":
    main()
