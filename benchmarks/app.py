"""End to end through the application tier: documents ingested per second (upload through
nginx to searchable) and search latency through nginx, beside `kbinfra bench`'s own figures
for the embedding service and Qdrant, so the gap between the parts and the whole shows.

Needs a running stack whose `app:` is the test bed's reference KB app (or any app with the
same API: POST /documents, GET /documents/{id}, GET /search):

    python benchmarks/app.py --dir STACK_DIR [--runs 3] [--documents 20] [--searches 200]
        [--concurrency 4] [--skip-parts] [--output json]

or, on the test bed (`scripts/testbed up` prints the image map), a stack of its own that it
applies first and destroys after (PostgreSQL, Redis, Qdrant, Unstructured, embeddings,
nginx with its rate limit raised for the load; 2 API replicas and 1 worker):

    python benchmarks/app.py --testbed .testbed/images.yaml --embeddings-image IMAGE

Each run uploads --documents new documents (one unique sentence each, among filler text)
with --concurrency uploads at a time, waits until every one is `done` (bounded), then
searches --searches times for those sentences (--concurrency at a time) and counts how many
searches find their own document first. nginx is reached over HTTPS on this machine
(127.0.0.1 at the stack's https_port, SNI and Host the stack's domain, its certificate
verified against the stack's own). Then `kbinfra bench --quick --only embeddings,qdrant`
runs after each run for the parts, and the whole's search p50 is set beside the sum of
its parts' (one embedding of the query plus one Qdrant search, measured in the same run):
the ratio is what nginx, TLS, the app and PostgreSQL add. Prints medians of the runs
(min-max); never an assertion on time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

KBINFRA = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
WORDS = (
    "vector", "index", "shard", "replica", "payload", "segment", "query", "tenant", "invoice",
    "contract", "policy", "engine", "cluster", "backup", "restore", "latency", "budget",
    "ticket", "release", "customer", "region",
)  # fmt: skip
DONE_TIMEOUT_S = 600.0


def note(text: str) -> None:
    print(f"app-bench: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Nginx:
    """Where and how to reach the stack's nginx from this machine."""

    base: str
    domain: str
    certificate: Path
    rate_limit: str

    @classmethod
    def of_stack(cls, stack_dir: Path) -> Nginx:
        spec = yaml.safe_load((stack_dir / "kbinfra.yaml").read_text())
        domain = str(spec.get("domain", "kb.example.com"))
        nginx = (spec.get("services") or {}).get("nginx") or {}
        port = int(nginx.get("https_port", 443))
        tls = spec.get("tls") or {}
        certificate = stack_dir / str(tls.get("certificate", "tls/cert.pem"))
        rps, burst = nginx.get("rate_limit_rps", 10), nginx.get("rate_limit_burst", 20)
        limit = f"{rps} r/s per client, burst {burst}"
        return cls(f"https://127.0.0.1:{port}", domain, certificate, limit)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            headers={"Host": self.domain},
            verify=str(self.certificate),
            timeout=60,
        )

    def extensions(self) -> dict[str, Any]:
        return {"sni_hostname": self.domain}


def document(rng: random.Random, marker: str) -> tuple[str, bytes]:
    """A document with one sentence no other document has, among filler paragraphs."""
    filler = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(6)]
    sentence = f"The {marker} escalation procedure names the duty engineer first."
    paragraphs = [*filler[:3], sentence, *filler[3:]]
    return sentence, ("\n\n".join(paragraphs) + "\n").encode()


#: Requests nginx answered 429 (its rate limit per client address), retried after a pause.
rate_limited = [0]
_count = threading.Lock()


def send(call: Callable[[], httpx.Response]) -> httpx.Response:
    """``call()``, again after a short pause while nginx answers 429 (bounded); the
    response's ``elapsed`` is that of the answered attempt alone."""
    for attempt in range(50):
        response = call()
        if response.status_code != 429:
            return response
        with _count:
            rate_limited[0] += 1
        time.sleep(min(1.0, 0.05 * (attempt + 1)))
    raise SystemExit("nginx kept answering 429: raise services.nginx.rate_limit_rps")


def in_parallel(count: int, concurrency: int, work: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(work, range(count)))


@dataclass(frozen=True)
class RunResult:
    documents: int
    ingest_s: float
    upload_s: float
    searches: int
    latencies: Sequence[float]
    found_first: int

    @property
    def documents_per_s(self) -> float:
        return self.documents / self.ingest_s

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def one_run(nginx: Nginx, documents: int, searches: int, concurrency: int, seed: int) -> RunResult:
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]
    made = [
        document(rng, f"{run_id}-{index:03d}-{rng.choice(WORDS)}") for index in range(documents)
    ]
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = nginx.client()
        return local.client  # type: ignore[no-any-return]

    def upload(index: int) -> str:
        body = made[index][1]
        response = send(
            lambda: client().post(
                "/documents",
                files={"file": (f"doc-{run_id}-{index}.txt", body, "text/plain")},
                extensions=nginx.extensions(),
            )
        )
        if response.status_code != 202:
            raise SystemExit(f"POST /documents answered {response.status_code}: {response.text}")
        return str(response.json()["id"])

    started = time.perf_counter()
    ids = in_parallel(documents, concurrency, upload)
    uploaded = time.perf_counter() - started
    pending = set(ids)
    deadline = time.monotonic() + DONE_TIMEOUT_S
    with nginx.client() as http:
        while pending:
            for document_id in sorted(pending):
                path = f"/documents/{document_id}"
                status = send(
                    lambda path=path: http.get(path, extensions=nginx.extensions())  # type: ignore[misc]
                )
                if status.status_code != 200:
                    raise SystemExit(f"GET /documents/{document_id}: {status.status_code}")
                state = status.json().get("status")
                if state == "failed":
                    raise SystemExit(f"document {document_id} failed to process")
                if state == "done":
                    pending.discard(document_id)
            if pending and time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} documents not done after {DONE_TIMEOUT_S:.0f} s")
            if pending:
                time.sleep(0.2)
    ingested = time.perf_counter() - started
    note(f"{documents} documents uploaded in {uploaded:.2f} s, searchable after {ingested:.2f} s")

    def search(index: int) -> tuple[float, bool]:
        target = index % documents
        sentence = made[target][0]
        response = send(
            lambda: client().get(
                "/search", params={"q": sentence, "limit": 5}, extensions=nginx.extensions()
            )
        )
        elapsed = response.elapsed.total_seconds()
        response.raise_for_status()
        results = response.json()["results"]
        return elapsed, bool(results) and str(results[0]["document_id"]) == ids[target]

    answers = in_parallel(searches, concurrency, search)
    return RunResult(
        documents=documents,
        ingest_s=ingested,
        upload_s=uploaded,
        searches=searches,
        latencies=[elapsed for elapsed, _ in answers],
        found_first=sum(1 for _, found in answers if found),
    )


def parts(stack_dir: Path) -> list[dict[str, Any]]:
    """`kbinfra bench --quick` of the embedding service and Qdrant, as it reports them."""
    command = [*KBINFRA, "bench", "--quick", "--only", "embeddings,qdrant", "--dir"]
    done = subprocess.run(
        [*command, str(stack_dir), "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if not done.stdout.strip():
        note(f"kbinfra bench printed nothing (exit {done.returncode}): {done.stderr.strip()}")
        return []
    rows = []
    for result in json.loads(done.stdout).get("results", []):
        latency = result.get("latency") or {}
        rows.append(
            {
                "part": f"{result['service']} {result['name']}",
                "throughput_per_s": result.get("throughput_per_s"),
                "unit": result.get("unit"),
                "p50_s": latency.get("p50_s"),
                "p95_s": latency.get("p95_s"),
                "latency_of": result.get("latency_of"),
            }
        )
    return rows


#: The parts one search through the app is made of: embedding the query, one Qdrant search.
SEARCH_PARTS = ("embeddings embed-single", "qdrant search")


def parts_p50_s(rows: Sequence[dict[str, Any]]) -> float | None:
    """The sum of the p50s of a search's parts in one bench run; None when one is missing."""
    p50 = {row["part"]: row["p50_s"] for row in rows}
    if not all(p50.get(part) for part in SEARCH_PARTS):
        return None
    return float(sum(p50[part] for part in SEARCH_PARTS))


def part_medians(part_runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each part's throughput and latencies: the median over the runs that measured it."""
    by_part: dict[str, list[dict[str, Any]]] = {}
    for rows in part_runs:
        for row in rows:
            by_part.setdefault(row["part"], []).append(row)
    medians = []
    for rows in by_part.values():
        merged = dict(rows[0], runs=len(rows))
        for key in ("throughput_per_s", "p50_s", "p95_s"):
            values = [row[key] for row in rows if row.get(key) is not None]
            merged[key] = statistics.median(values) if values else None
        medians.append(merged)
    return medians


TESTBED_SERVICES = ("postgres", "redis", "qdrant", "unstructured", "embeddings", "nginx")


@contextmanager
def testbed_stack(images: Path, embeddings_image: str) -> Iterator[Path]:
    """A stack with the reference app on the test bed's images, applied; destroyed after.
    Made as the integration tests make theirs (tests/integration/stack_support.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests
    from tests.integration.stack_support import (  # noqa: PLC0415
        DOCUMENTS_WORKER,
        app_deployment,
    )
    from tests.integration.testbed_support import Testbed  # noqa: PLC0415

    mapped = yaml.safe_load(images.read_text())["images"]
    local_only = Testbed(images, mapped, None, "", "")  # type: ignore[arg-type]

    def for_the_load(data: dict[str, Any]) -> None:
        # one client address sends the whole load: nginx's default 10 r/s would be measured
        nginx = data["services"]["nginx"]
        nginx["rate_limit_rps"], nginx["rate_limit_burst"] = 1000, 1000
        data["services"]["embeddings"]["image"] = embeddings_image

    with tempfile.TemporaryDirectory(prefix="kb-app-bench-") as parent:
        app = {"replicas": 2, "migrate": ["migrate"], "workers": [DOCUMENTS_WORKER]}
        stack = app_deployment(
            "local", Path(parent) / "stack", local_only, TESTBED_SERVICES, app,
            prefix="kbbench", configure=for_the_load,
        )  # fmt: skip
        note(f"applying stack {stack.name} (minutes on 2 cores)")
        started = time.monotonic()
        applied = stack.run("apply", "--yes", "--allow-oversized-profile", timeout=1800)
        if applied.code != 0:
            raise SystemExit(f"kbinfra apply exited {applied.code}: {applied.err.strip()}")
        note(f"applied in {time.monotonic() - started:.0f} s")
        try:
            yield stack.dir
        finally:
            note(f"destroying stack {stack.name}")
            stack.run("destroy", "--yes", "--delete-data", "--confirm-name", stack.name)


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    scaled = [v * scale for v in values]
    return (
        f"{statistics.median(scaled):.{digits}f} "
        f"({min(scaled):.{digits}f}-{max(scaled):.{digits}f}, n={len(scaled)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="the stack folder of a running stack")
    where.add_argument(
        "--testbed", type=Path, help="the test bed's image map: apply a stack of its own"
    )
    parser.add_argument(
        "--embeddings-image", help="with --testbed: the embedding service's image (built here)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-parts", action="store_true", help="no kbinfra bench run")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    if args.testbed is not None:
        if not args.embeddings_image:
            parser.error("--testbed needs --embeddings-image (`kbinfra images build` makes it)")
        with testbed_stack(args.testbed, args.embeddings_image) as folder:
            measure(argparse.Namespace(**{**vars(args), "dir": folder}))
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """The runs against the stack in ``args.dir``, and the report."""
    nginx = Nginx.of_stack(args.dir)
    runs = []
    part_runs: list[list[dict[str, Any]]] = []
    gaps: list[float] = []
    for index in range(args.runs):
        note(f"run {index + 1} of {args.runs}")
        run = one_run(nginx, args.documents, args.searches, args.concurrency, seed=index)
        runs.append(run)
        if not args.skip_parts:
            part_runs.append(parts(args.dir))
            reference = parts_p50_s(part_runs[-1])
            if reference:
                gaps.append(run.percentile(0.50) / reference)
    measured_parts = part_medians(part_runs)
    whole = {
        "documents_per_s": [r.documents_per_s for r in runs],
        "search_p50_s": [r.percentile(0.50) for r in runs],
        "search_p95_s": [r.percentile(0.95) for r in runs],
        "found_first": [r.found_first / r.searches for r in runs],
    }
    if args.output == "json":
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "documents": args.documents,
                    "searches": args.searches,
                    "concurrency": args.concurrency,
                    "whole": {k: statistics.median(v) for k, v in whole.items()},
                    "per_run": whole,
                    "parts": measured_parts,
                    "search_p50_over_parts": statistics.median(gaps) if gaps else None,
                    "search_p50_over_parts_per_run": gaps,
                    "rate_limited": rate_limited[0],
                    "rate_limit": nginx.rate_limit,
                },
                indent=2,
            )
        )
        return
    print(
        f"through nginx over HTTPS, {args.documents} documents and {args.searches} searches "
        f"per run, {args.concurrency} at a time (median (min-max, n))"
    )
    print(f"  ingest, upload to searchable: {spread(whole['documents_per_s'])} documents/s")
    print(f"  search p50:                   {spread(whole['search_p50_s'], 1000)} ms")
    print(f"  search p95:                   {spread(whole['search_p95_s'], 1000)} ms")
    print(f"  searches finding their document first: {spread(whole['found_first'], 100)} %")
    if rate_limited[0]:
        print(
            f"  {rate_limited[0]} requests were answered 429 by nginx's rate limit "
            f"({nginx.rate_limit}) and retried: the figures are bounded by it; raise "
            "services.nginx.rate_limit_rps on a stack meant for a load test"
        )
    if measured_parts:
        print("the parts, kbinfra bench --quick after each run (median of the runs):")
        for part in measured_parts:
            p50, p95 = part["p50_s"], part["p95_s"]
            latency = (
                f", p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms {part['latency_of']}"
                if p50 and p95
                else ""
            )
            print(f"  {part['part']}: {part['throughput_per_s']:.1f} {part['unit']}/s{latency}")
    if gaps:
        print(
            f"search p50 through nginx / ({' + '.join(SEARCH_PARTS)} p50), same run: "
            f"{spread(gaps, digits=2)}x"
        )


if __name__ == "__main__":
    main()
