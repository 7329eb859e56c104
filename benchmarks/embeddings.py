"""Sentences per second of a running embedding service, single and batched requests.

    python benchmarks/embeddings.py --url http://127.0.0.1:8001 --api-key "$KEY"

Prints numbers, asserts nothing. Each figure is the median of --runs runs; a run sends
--requests single-sentence requests one after another, or --requests batches of --batch.
Only the standard library: it runs anywhere Python does, inside the image too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

SENTENCES = [
    "How do I reset my password?",
    "The invoice was sent to the wrong address last month.",
    "Qdrant stores vectors and payloads in segments.",
    "Our office is closed on public holidays.",
    "Which plan includes single sign-on?",
    "The delivery arrived two days late and the box was damaged.",
    "Embeddings map sentences to points in a vector space.",
    "Please cancel my subscription at the end of the billing period.",
]


def post(url: str, api_key: str | None, texts: list[str]) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(
        f"{url}/embed", data=json.dumps({"texts": texts}).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        result: dict[str, object] = json.load(response)
        return result


def run(url: str, api_key: str | None, requests: int, batch: int) -> float:
    """Sentences per second over ``requests`` requests of ``batch`` sentences each."""
    started = time.perf_counter()
    for index in range(requests):
        texts = [SENTENCES[(index * batch + i) % len(SENTENCES)] for i in range(batch)]
        post(url, api_key, texts)
    return requests * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8001")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    post(args.url, args.api_key, SENTENCES)  # warm: first request pays allocator set-up
    for label, batch in (("single", 1), (f"batch {args.batch}", args.batch)):
        rates = [run(args.url, args.api_key, args.requests, batch) for _ in range(args.runs)]
        print(
            f"{label:>10}: {statistics.median(rates):7.1f} sentences/s "
            f"(median of {args.runs} runs of {args.requests} requests; "
            f"min {min(rates):.1f}, max {max(rates):.1f})"
        )


if __name__ == "__main__":
    main()
