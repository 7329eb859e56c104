"""What ``kbinfra check`` and ``kbinfra bench`` share: result rows, latency statistics,
thresholds, a bounded load runner, and the context a probe is given.

Every decision here is a pure function of its inputs (verdicts, percentiles, tables, the
Prometheus text); :class:`ProbeContext` is the one edge, and it opens connections lazily.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kbinfra.progress import SILENT, Progress

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from kbinfra.service import Service, ServiceContext
    from kbinfra.stack import Stack
    from kbinfra.targets import FileStore, Target

Category = Literal["reachable", "locked-down", "configured"]

#: Every object a benchmark creates starts with this, then a random part (``kbinfra_bench_3f9a…``).
BENCH_PREFIX = "kbinfra_bench_"
#: Objects ``kbinfra check`` creates for a moment (a collection it reads the defaults of).
CHECK_PREFIX = "kbinfra_check_"


# --------------------------------------------------------------------------- check rows
@dataclass(frozen=True)
class CheckRow:
    """One check of one service: whether it passed, what was measured, and how to fix it."""

    service: str
    check: str
    category: Category
    ok: bool
    value: str
    fix: str = ""

    @property
    def outcome(self) -> str:
        return "pass" if self.ok else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "check": self.check,
            "category": self.category,
            "ok": self.ok,
            "value": self.value,
            "fix": "" if self.ok else self.fix,
        }


class CheckFailedError(Exception):
    """Raised inside a check: the check failed with this measured value."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


class Checks:
    """Collects one service's rows; each check is a function returning the measured value.

    A check passes when its function returns, fails when it raises: :class:`CheckFailedError`
    carries the measured value, any other exception becomes ``Type: message``. A check that
    needs an earlier one (``needs``) fails as not run when that one failed: a check that could
    not run did not pass.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.rows: list[CheckRow] = []

    def passed(self, check: str) -> bool:
        return any(r.check == check and r.ok for r in self.rows)

    def run(
        self,
        check: str,
        category: Category,
        probe: Callable[[], str],
        *,
        fix: str,
        needs: str | None = None,
    ) -> bool:
        if needs is not None and not self.passed(needs):
            self.rows.append(
                CheckRow(self.service, check, category, False, f"not run: {needs} failed", fix)
            )
            return False
        try:
            value = probe()
        except CheckFailedError as failure:
            self.rows.append(CheckRow(self.service, check, category, False, failure.value, fix))
            return False
        except Exception as error:
            self.rows.append(
                CheckRow(self.service, check, category, False, describe_error(error), fix)
            )
            return False
        self.rows.append(CheckRow(self.service, check, category, True, value, fix))
        return True


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    message = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return message[:300]


def require(condition: bool, value: str) -> None:
    """Fail the running check with ``value`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailedError(value)


def differences(expected: Mapping[str, str], running: Mapping[str, str | None]) -> list[str]:
    """``name running X, rendered Y`` for every setting that differs (or is missing)."""
    return [
        f"{name} running {running.get(name)!s}, rendered {want}"
        for name, want in expected.items()
        if running.get(name) != want
    ]


def require_same(expected: Mapping[str, str], running: Mapping[str, str | None]) -> str:
    """The check value when every running setting matches the rendered one; fails otherwise."""
    diff = differences(expected, running)
    require(not diff, "; ".join(diff))
    return ", ".join(f"{name}={value}" for name, value in expected.items())


def seen_within(read: Callable[[], bool], seconds: float, every: float = 0.1) -> float | None:
    """Seconds until ``read()`` was true (polled every ``every`` s), or None after ``seconds``:
    how long a write on a primary took to be read on its replica."""
    started = time.monotonic()
    while True:
        if read():
            return time.monotonic() - started
        if time.monotonic() - started >= seconds:
            return None
        time.sleep(every)


def check_rows_ok(rows: Sequence[CheckRow]) -> bool:
    """Exit 0 only when every check passed (and at least one ran)."""
    return bool(rows) and all(r.ok for r in rows)


# --------------------------------------------------------------------------- latency
@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``count`` operations, in seconds; percentiles by nearest rank."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_s": round(self.mean, 6),
            "p50_s": round(self.p50, 6),
            "p95_s": round(self.p95, 6),
            "p99_s": round(self.p99, 6),
            "max_s": round(self.max, 6),
        }


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence: the smallest value with at least
    ``fraction`` of the samples at or below it (p95 of 20 samples is the 19th)."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_stats(samples: Sequence[float]) -> LatencyStats | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return LatencyStats(
        count=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50),
        p95=percentile(ordered, 0.95),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
    )


# --------------------------------------------------------------------------- thresholds
Metric = Literal["throughput", "p95_s", "p99_s", "recall_at_10"]


@dataclass(frozen=True)
class Threshold:
    """A limit one benchmark metric must meet, and where the number comes from."""

    metric: Metric
    op: Literal["<", ">="]
    limit: float
    source: str

    def met_by(self, value: float) -> bool:
        return value < self.limit if self.op == "<" else value >= self.limit

    def describe(self) -> str:
        unit = " s" if self.metric.endswith("_s") else ""
        return f"{self.metric} {self.op} {self.limit:g}{unit}"


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    value: float | None

    @property
    def ok(self) -> bool:
        return self.value is not None and self.threshold.met_by(self.value)

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.threshold.metric,
            "op": self.threshold.op,
            "limit": self.threshold.limit,
            "value": None if self.value is None else round(self.value, 6),
            "source": self.threshold.source,
            "ok": self.ok,
        }


# --------------------------------------------------------------------------- bench results
@dataclass(frozen=True)
class BenchResult:
    """One benchmark: what ran (workload, client, concurrency, duration) and what it measured."""

    service: str
    name: str
    workload: str
    client: str
    concurrency: int
    duration_s: float
    operations: int
    unit: str
    latency: LatencyStats | None
    #: What one latency sample is: "per search", "per pipeline of 32 commands"…
    latency_of: str
    thresholds: tuple[Threshold, ...] = ()
    extra: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def throughput(self) -> float:
        return self.operations / self.duration_s if self.duration_s > 0 else 0.0

    def metric(self, name: Metric) -> float | None:
        if name == "throughput":
            return self.throughput if self.operations else None
        if name == "p95_s":
            return self.latency.p95 if self.latency else None
        if name == "p99_s":
            return self.latency.p99 if self.latency else None
        return self.extra.get(name)

    @property
    def verdicts(self) -> list[Verdict]:
        return [Verdict(t, self.metric(t.metric)) for t in self.thresholds]

    @property
    def ok(self) -> bool:
        return self.error is None and all(v.ok for v in self.verdicts)

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "name": self.name,
            "workload": self.workload,
            "client": self.client,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "operations": self.operations,
            "unit": self.unit,
            "throughput_per_s": round(self.throughput, 3),
            "latency": self.latency.as_json() if self.latency else None,
            "latency_of": self.latency_of,
            "extra": {k: round(v, 6) for k, v in sorted(self.extra.items())},
            "thresholds": [v.as_json() for v in self.verdicts],
            "ok": self.ok,
            "error": self.error,
        }


def failed_bench(service: str, name: str, workload: str, error: str) -> BenchResult:
    """A benchmark that could not run: no numbers, and never ``ok``."""
    return BenchResult(
        service=service,
        name=name,
        workload=workload,
        client="-",
        concurrency=0,
        duration_s=0.0,
        operations=0,
        unit="-",
        latency=None,
        latency_of="-",
        error=error,
    )


def bench_rows(results: Sequence[BenchResult]) -> list[tuple[str, ...]]:
    """The text table: one line per benchmark, numbers rounded for reading."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.error is not None:
            rows.append((r.service, r.name, r.client, "-", "-", "-", "-", "-", f"ERROR: {r.error}"))
            continue
        lat = r.latency
        verdicts = "; ".join(
            f"{'ok' if v.ok else 'FAIL'} {v.threshold.describe()}" for v in r.verdicts
        )
        extra = "; ".join(f"{k} {v:.3f}" for k, v in sorted(r.extra.items()))
        rows.append(
            (
                r.service,
                r.name,
                r.client,
                f"c={r.concurrency} {r.duration_s:.1f}s",
                f"{format_rate(r.throughput)} {r.unit}/s",
                format_seconds(lat.p50) if lat else "-",
                format_seconds(lat.p95) if lat else "-",
                format_seconds(lat.p99) if lat else "-",
                "; ".join(part for part in (extra, verdicts) if part),
            )
        )
    return rows


BENCH_COLUMNS = ("service", "benchmark", "client", "load", "throughput", "p50", "p95", "p99", "")


def format_rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.001:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1_000_000:.0f} µs"


# --------------------------------------------------------------------------- Prometheus text
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).translate(_LABEL_ESCAPES)}"' for k, v in labels.items())
    return "{" + inner + "}"


def prometheus_text(stack: str, results: Sequence[BenchResult]) -> str:
    """The results in Prometheus' text format, for node-exporter's textfile collector."""
    families: dict[str, tuple[str, str, list[str]]] = {
        "kbinfra_bench_throughput_per_second": ("gauge", "Operations per second", []),
        "kbinfra_bench_latency_seconds": ("summary", "Latency of one operation", []),
        "kbinfra_bench_operations": ("gauge", "Operations completed in the run", []),
        "kbinfra_bench_duration_seconds": ("gauge", "Wall time of the run", []),
        "kbinfra_bench_concurrency": ("gauge", "Concurrent clients", []),
        "kbinfra_bench_extra": ("gauge", "Other measured values (recall@10…)", []),
        "kbinfra_bench_threshold_met": ("gauge", "1 when the threshold was met", []),
        "kbinfra_bench_ok": ("gauge", "1 when the benchmark ran and met every threshold", []),
    }
    for r in results:
        base = {"stack": stack, "service": r.service, "benchmark": r.name}
        families["kbinfra_bench_ok"][2].append(f"{_labels(**base)} {int(r.ok)}")
        if r.error is not None:
            continue
        unit = {**base, "unit": r.unit, "client": r.client}
        families["kbinfra_bench_throughput_per_second"][2].append(
            f"{_labels(**unit)} {r.throughput:.6g}"
        )
        families["kbinfra_bench_operations"][2].append(f"{_labels(**base)} {r.operations}")
        families["kbinfra_bench_duration_seconds"][2].append(
            f"{_labels(**base)} {r.duration_s:.6g}"
        )
        families["kbinfra_bench_concurrency"][2].append(f"{_labels(**base)} {r.concurrency}")
        if r.latency is not None:
            quantiles = (("0.5", r.latency.p50), ("0.95", r.latency.p95), ("0.99", r.latency.p99))
            latency = families["kbinfra_bench_latency_seconds"][2]
            for quantile, value in quantiles:
                latency.append(f"{_labels(**base, quantile=quantile)} {value:.6g}")
            count = r.latency.count
            latency.append(f"_sum{_labels(**base)} {r.latency.mean * count:.6g}")
            latency.append(f"_count{_labels(**base)} {count}")
        for name, value in sorted(r.extra.items()):
            families["kbinfra_bench_extra"][2].append(f"{_labels(**base, name=name)} {value:.6g}")
        for verdict in r.verdicts:
            labels = _labels(
                **base, metric=verdict.threshold.metric, limit=f"{verdict.threshold.limit:g}"
            )
            families["kbinfra_bench_threshold_met"][2].append(f"{labels} {int(verdict.ok)}")
    lines: list[str] = []
    for name, (kind, help_text, samples) in families.items():
        if not samples:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{sample}" for sample in samples]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- load runner
@dataclass(frozen=True)
class LoadRun:
    """What a bounded load produced: latency samples, operations done, wall time, an error."""

    samples: list[float]
    operations: int
    elapsed_s: float
    error: str | None


Operation = Callable[[], int]
"""One request of a worker; returns how many operations it completed (1, or a batch size),
or 0 when there is no work left for it."""


@dataclass(frozen=True)
class Budget:
    """How long a load may run and how many operations it may do: whichever comes first."""

    seconds: float
    max_operations: int


class Pacer:
    """One schedule shared by every worker: operations start ``1 / rate`` seconds apart.

    For a server that refuses a client going faster (nginx's ``limit_req``): the load then
    measures the answers at the rate it allows, not its refusals. The wait is not part of an
    operation's latency.
    """

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"a pace of {rate_per_s} operations/s")
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next: float | None = None

    def delay(self) -> float:
        """Claim the next slot: how long to wait until it (0 when it is due)."""
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self._interval
            return slot - now

    def wait(self, halt: threading.Event) -> None:
        """Sleep until this worker's next slot, or until ``halt`` is set."""
        delay = self.delay()
        if delay > 0:
            halt.wait(delay)


def run_load(
    make_worker: Callable[[int], tuple[Operation, Callable[[], None]]],
    *,
    concurrency: int,
    budget: Budget,
    stop: threading.Event,
    pacer: Pacer | None = None,
) -> LoadRun:
    """Run ``concurrency`` workers until the budget is spent, ``stop`` is set, or one fails.

    ``make_worker(index)`` gives a worker its own operation and a close function (its own
    connection: clients are not shared between threads). With a ``pacer`` every operation
    waits for its slot first (the wait is not measured). Interrupting the calling thread
    (Ctrl-C) stops every worker and waits for them before re-raising, so nothing is still
    writing while the caller cleans up.
    """
    lock = threading.Lock()
    samples: list[float] = []
    done = [0]
    errors: list[str] = []
    halt = threading.Event()
    deadline = time.monotonic() + budget.seconds

    def claim() -> bool:
        with lock:
            return done[0] < budget.max_operations

    def running() -> bool:
        return not (halt.is_set() or stop.is_set()) and time.monotonic() < deadline

    def work(index: int) -> None:
        try:
            operation, close = make_worker(index)
        except Exception as error:
            with lock:
                errors.append(describe_error(error))
            halt.set()
            return
        try:
            while running() and claim():
                if pacer is not None:
                    pacer.wait(halt)
                    if not running():
                        break
                started = time.perf_counter()
                count = operation()
                elapsed = time.perf_counter() - started
                if count == 0:
                    break  # no work left
                with lock:
                    samples.append(elapsed)
                    done[0] += count
        except Exception as error:
            with lock:
                errors.append(describe_error(error))
            halt.set()
        finally:
            with suppress(Exception):  # closing a broken connection may fail too
                close()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"kbinfra-load-{i}", daemon=True)
        for i in range(concurrency)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except BaseException:
        halt.set()
        for thread in threads:
            thread.join(30)
        raise
    elapsed = time.perf_counter() - started
    return LoadRun(samples, done[0], elapsed, errors[0] if errors else None)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C (and SIGTERM) while cleaning up, so a second one cannot leave data behind.

    Only the main thread may change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- bench settings
@dataclass(frozen=True)
class BenchPlan:
    """How hard and how long every benchmark runs (``--quick`` for CI, else a meaningful run)."""

    quick: bool
    seconds: float
    prefix: str
    stop: threading.Event = field(default_factory=threading.Event)

    def budget(self, max_operations: int, seconds: float | None = None) -> Budget:
        return Budget(seconds if seconds is not None else self.seconds, max_operations)

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full


QUICK_SECONDS = 2.0
FULL_SECONDS = 20.0
_PREFIX = re.compile(rf"^{BENCH_PREFIX}[0-9a-f]{{8,32}}$")


def bench_plan(*, quick: bool, token: str) -> BenchPlan:
    """``token``: random hex, so two runs (or a dead run's leftovers) never share names."""
    prefix = f"{BENCH_PREFIX}{token}"
    if _PREFIX.match(prefix) is None:
        raise ValueError(f"bench prefix {prefix!r} must be {BENCH_PREFIX} + 8-32 hex digits")
    return BenchPlan(quick=quick, seconds=QUICK_SECONDS if quick else FULL_SECONDS, prefix=prefix)


def is_bench_name(name: str) -> bool:
    """Whether a collection, table or key name was made by ``kbinfra bench`` (any run)."""
    return name.startswith(BENCH_PREFIX)


# --------------------------------------------------------------------------- probe context
class ProbeContext:
    """What a probe module is given: the stack, its service, and ways to reach the target.

    Connections are opened on first use and closed by :meth:`close` (tunnels over SSH).
    """

    def __init__(
        self,
        stack: Stack,
        service: Service,
        target: Target,
        *,
        progress: Progress = SILENT,
    ) -> None:
        self.stack = stack
        self.service = service
        self.target = target
        self._progress = progress
        self._exits = ExitStack()
        self._addresses: dict[int, tuple[str, int]] = {}

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def ctx(self) -> ServiceContext:
        return self.stack.contexts[self.service.name]

    @property
    def settings(self) -> Any:
        return self.ctx.settings

    def secret(self, name: str) -> str:
        return self.stack.secrets[name]

    def note(self, message: str) -> None:
        self._progress.note(self.service.name, message)

    def address(self, port: int | None = None) -> tuple[str, int]:
        """A local ``(host, port)`` reaching the target's ``127.0.0.1:port`` (default: the
        service's host port). Raises :class:`CheckFailedError` when it publishes none."""
        if port is None:
            port = self.settings.port
            if port is None:
                raise CheckFailedError(
                    f"{self.service.name} publishes no host port: nothing to connect to"
                )
        if port not in self._addresses:
            self._addresses[port] = self._exits.enter_context(self.target.tunnel(port))
        return self._addresses[port]

    def url(self, path: str = "", port: int | None = None, scheme: str = "http") -> str:
        host, local_port = self.address(port)
        return f"{scheme}://{host}:{local_port}{path}"

    def docker(self) -> DockerClient:
        return self.target.docker_client()

    def container_name(self) -> str:
        from kbinfra.names import container_name  # noqa: PLC0415

        return container_name(self.stack.spec.name, self.service.name)

    def container(self) -> Container | None:
        import docker.errors  # noqa: PLC0415

        try:
            return self.docker().containers.get(self.container_name())
        except docker.errors.NotFound:
            return None

    def exec(
        self, command: Sequence[str], *, environment: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Run ``command`` in the service's container: exit code and combined output."""
        container = self.container()
        if container is None:
            raise CheckFailedError(f"container {self.container_name()} does not exist")
        code, output = container.exec_run(
            list(command), environment=dict(environment or {}), demux=False
        )
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        return int(code if code is not None else -1), text

    def file_store(self) -> FileStore:
        return self.target.file_store(self.stack.spec.name)

    def replica(self) -> ProbeContext | None:
        """The same ways in, to the service's streaming replica; None when it runs none
        (one host never does: a replica is placed on a node of a Swarm of its own)."""
        return None

    def close(self) -> None:
        self._exits.close()

    def __enter__(self) -> ProbeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
