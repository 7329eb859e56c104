"""nginx: HTTPS answers with the stack's certificate all the way through to the services it
routes to; TLS below 1.2 is refused; every response carries the security headers; plain HTTP
redirects; no version in the Server header. Bench: requests per second over HTTPS to the
static /healthz location.

The public ports listen on 0.0.0.0 of the target; the probes reach them on its loopback
through the same tunnel as everything else, and present the stack's domain as SNI, so the
certificate is verified for the name clients use.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from kbinfra.probing.probe import (
    BenchPlan,
    BenchResult,
    CheckFailedError,
    CheckRow,
    Checks,
    Operation,
    ProbeContext,
    Threshold,
    describe_error,
    latency_stats,
    require,
    run_load,
)
from kbinfra.services.nginx.service import (
    SECURITY_HEADERS,
    NginxSettings,
    NginxTune,
    routed_services,
)

if TYPE_CHECKING:
    import httpx

    from kbinfra.stack import Stack

TIMEOUT_S = 15.0
HEALTHZ = "/healthz"
CONCURRENCY = 4
#: Sanity floors for a static answer: an order of magnitude below what one worker serves.
REQUESTS_FLOOR_PER_WORKER = 100.0
HEALTHZ_P95_S = 0.1
REDIRECTS = (301, 302, 307, 308)


def https_context(certificate_pem: str) -> ssl.SSLContext:
    """Trust exactly the stack's certificate (a leaf is enough: partial chains allowed)."""
    context = ssl.create_default_context(cadata=certificate_pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def legacy_tls_context() -> ssl.SSLContext:
    """A client that offers nothing newer than TLS 1.1 and every cipher OpenSSL still has.

    It must be able to speak TLS 1.1 itself, or a refused handshake would prove nothing.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


class Https:
    """HTTPS to nginx through the tunnel, verifying the stack's certificate for its domain."""

    def __init__(self, stack: Stack, address: tuple[str, int]) -> None:
        import httpx  # noqa: PLC0415

        self.domain = stack.spec.domain
        self.base = f"https://{address[0]}:{address[1]}"
        self.http = httpx.Client(
            verify=https_context(stack.tls_certificate),
            timeout=TIMEOUT_S,
            headers={"Host": self.domain},
        )

    def get(self, path: str) -> httpx.Response:
        return self.http.get(self.base + path, extensions={"sni_hostname": self.domain})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Https:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def https_get_workers(
    stack: Stack, address: tuple[str, int], path: str
) -> Callable[[int], tuple[Operation, Callable[[], None]]]:
    """``run_load`` workers that GET ``path`` over HTTPS, each on its own keep-alive
    connection; any answer but 200 fails the load with it."""

    def make_worker(index: int) -> tuple[Operation, Callable[[], None]]:
        https = Https(stack, address)

        def operation() -> int:
            response = https.get(path)
            if response.status_code != 200:
                raise CheckFailedError(f"GET {path} answered HTTP {response.status_code}")
            return 1

        return operation, https.close

    return make_worker


def routes(probe: ProbeContext) -> list[tuple[str, str]]:
    """``(service, path)`` of each routed service's health location through nginx."""
    return [
        (service.name, route.prefix.rstrip("/") + service.health_path)
        for service, route in routed_services(probe.ctx)
        if service.health_path is not None
    ]


# --------------------------------------------------------------------------- checks
def check_https(stack: Stack, address: tuple[str, int]) -> str:
    with Https(stack, address) as https:
        response = https.get(HEALTHZ)
    require(response.status_code == 200, f"{HEALTHZ} answered HTTP {response.status_code}")
    return f"{HEALTHZ} 200, certificate verified for {stack.spec.domain}"


def check_upstreams(stack: Stack, address: tuple[str, int], through: list[tuple[str, str]]) -> str:
    with Https(stack, address) as https:
        if not through:
            response = https.get("/")
            require(
                response.status_code not in (502, 503, 504),
                f"/ answered HTTP {response.status_code}: the app at "
                f"{stack.spec.app.upstream} does not answer",
            )
            return f"/ answered HTTP {response.status_code} from {stack.spec.app.upstream}"
        answered = []
        for service, path in through:
            response = https.get(path)
            require(
                response.status_code == 200,
                f"{path} ({service}) answered HTTP {response.status_code}",
            )
            answered.append(f"{path} 200")
    return ", ".join(answered)


def check_legacy_tls(address: tuple[str, int], domain: str) -> str:
    require(ssl.HAS_TLSv1_1, f"{ssl.OPENSSL_VERSION} cannot offer TLS 1.1: nothing to prove")
    context = legacy_tls_context()
    with socket.create_connection(address, timeout=TIMEOUT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=domain) as tls:
                version = tls.version()
        except ssl.SSLError as error:
            return f"TLS 1.0/1.1 handshake refused ({error.reason or describe_error(error)})"
        except ConnectionError as error:
            return f"TLS 1.0/1.1 handshake refused (connection closed: {describe_error(error)})"
    raise CheckFailedError(f"handshake with {version} succeeded")


def header_problems(headers: dict[str, str]) -> list[str]:
    """Missing or different security headers (names case-insensitive, values exact)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    problems = []
    for name, value in SECURITY_HEADERS:
        got = lowered.get(name.lower())
        if got is None:
            problems.append(f"{name} missing")
        elif got != value:
            problems.append(f"{name}: {got!r}, want {value!r}")
    return problems


def check_headers(stack: Stack, address: tuple[str, int]) -> str:
    with Https(stack, address) as https:
        response = https.get(HEALTHZ)
    problems = header_problems(dict(response.headers))
    require(not problems, "; ".join(problems))
    return ", ".join(name for name, _ in SECURITY_HEADERS)


def check_redirect(address: tuple[str, int], domain: str) -> str:
    import httpx  # noqa: PLC0415

    path = "/kbinfra-check?from=http"
    response = httpx.get(
        f"http://{address[0]}:{address[1]}{path}",
        headers={"Host": domain},
        timeout=TIMEOUT_S,
        follow_redirects=False,
    )
    location = response.headers.get("location", "")
    require(
        response.status_code in REDIRECTS,
        f"plain HTTP answered HTTP {response.status_code}, not a redirect",
    )
    require(
        location.startswith(f"https://{domain}") and location.endswith(path),
        f"redirects to {location!r}, not to https://{domain}…{path}",
    )
    return f"{response.status_code} → {location}"


def check_server_tokens(stack: Stack, address: tuple[str, int]) -> str:
    with Https(stack, address) as https:
        response = https.get(HEALTHZ)
    server = response.headers.get("server", "")
    require("/" not in server, f"Server: {server} (server_tokens is on)")
    return f"Server: {server or '(none)'}"


def checks(probe: ProbeContext) -> list[CheckRow]:
    settings: NginxSettings = probe.settings
    stack = probe.stack
    domain = stack.spec.domain
    rows = Checks(probe.name)

    def https() -> tuple[str, int]:
        return probe.address(settings.https_port)

    rows.run(
        "https-with-stack-certificate",
        "reachable",
        lambda: check_https(stack, https()),
        fix="check `kbinfra status`; nginx must serve tls/cert.pem for the stack's domain",
    )
    rows.run(
        "https-through-to-upstreams",
        "reachable",
        lambda: check_upstreams(stack, https(), routes(probe)),
        fix="the routed service is down or unreachable on the stack network: `kbinfra status`",
        needs="https-with-stack-certificate",
    )
    rows.run(
        "refuses-tls-below-1.2",
        "locked-down",
        lambda: check_legacy_tls(https(), domain),
        fix="ssl_protocols must list TLSv1.2 TLSv1.3 only: re-apply the rendered site.conf",
    )
    rows.run(
        "security-headers",
        "locked-down",
        lambda: check_headers(stack, https()),
        fix="re-apply the rendered site.conf (add_header … always, none inside locations)",
        needs="https-with-stack-certificate",
    )
    rows.run(
        "http-redirects-to-https",
        "locked-down",
        lambda: check_redirect(probe.address(settings.http_port), domain),
        fix="the port-80 server must `return 301 https://…`: re-apply the rendered site.conf",
    )
    rows.run(
        "no-version-in-server-header",
        "configured",
        lambda: check_server_tokens(stack, https()),
        fix="server_tokens off is in the rendered nginx.conf: re-apply it",
        needs="https-with-stack-certificate",
    )
    return rows.rows


# --------------------------------------------------------------------------- bench
def thresholds(workers: int) -> tuple[Threshold, ...]:
    return (
        Threshold(
            "throughput",
            ">=",
            REQUESTS_FLOOR_PER_WORKER * workers,
            f"sanity floor: {REQUESTS_FLOOR_PER_WORKER:g} requests/s per nginx worker",
        ),
        Threshold("p95_s", "<", HEALTHZ_P95_S, "sanity ceiling for a static answer"),
    )


def bench(probe: ProbeContext, plan: BenchPlan) -> list[BenchResult]:
    settings: NginxSettings = probe.settings
    tune: NginxTune = probe.service.tuning(probe.ctx)  # type: ignore[assignment]
    address = probe.address(settings.https_port)
    probe.note(f"GET {HEALTHZ} over HTTPS, keep-alive")
    run = run_load(
        https_get_workers(probe.stack, address, HEALTHZ),
        concurrency=CONCURRENCY,
        budget=plan.budget(plan.scale(50_000, 5_000_000)),
        stop=plan.stop,
    )
    return [
        BenchResult(
            service=probe.name,
            name="https-healthz",
            workload=f"GET {HEALTHZ} over HTTPS (static answer, no upstream), keep-alive",
            client="kbinfra (httpx)",
            concurrency=CONCURRENCY,
            duration_s=run.elapsed_s,
            operations=run.operations,
            unit="requests",
            latency=latency_stats(run.samples),
            latency_of="per request",
            thresholds=thresholds(tune.worker_processes),
            error=run.error,
        )
    ]


__all__ = ["bench", "checks"]
