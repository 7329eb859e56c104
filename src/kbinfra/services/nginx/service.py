"""nginx: the stack's only public door. TLS, security headers, rate limits and routes.

nginx fronts the user's own API servers (``app.upstream``, not deployed by kbinfra) and, when
they are enabled, the stack's embedding and Unstructured services, so that ``kbinfra check``
can prove that HTTPS answers all the way through. Qdrant, PostgreSQL and Redis are never routed
there; nginx is at most Qdrant's key gate on the stack network and loopback (``Route.public``).
"""

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from pydantic import Field, model_validator

from kbinfra.registry import enabled_services
from kbinfra.service import (
    BalancedServer,
    ContainerSpec,
    FileMount,
    HealthCheck,
    KeyGate,
    PortBinding,
    Reload,
    RenderedFile,
    Route,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
)
from kbinfra.service_kit.dns_cache import DNS_CACHE_S
from kbinfra.services.nginx.key_gates import REFUSED, gated_route, keys_conf

if TYPE_CHECKING:
    pass

CONFIG_DIR = "/etc/nginx"
MAIN_CONF = "nginx/nginx.conf"
SITE_CONF = "nginx/site.conf"
CERT_FILE = "nginx/tls/cert.pem"
KEY_FILE = "nginx/tls/key.pem"
#: The key gates' keys (secret, 0600), included by the site configuration when there are any.
KEYS_CONF = "nginx/keys.conf"
KEYS_TARGET = f"{CONFIG_DIR}/kbinfra/keys.conf"

#: Protocols and TLS 1.2 cipher suites (Mozilla "intermediate", ECDHE only: DHE suites need an
#: ``ssl_dhparam`` file and nginx silently skips them without one). The guide's
#: ``ECDHE-RSA-AES256-GCM-SHA512`` does not exist in OpenSSL: there is no SHA-512 GCM suite.
#: TLS 1.3 suites are not set here; OpenSSL's defaults for 1.3 are all strong.
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

#: Sent on every HTTPS response, errors included (``always``). X-XSS-Protection is obsolete:
#: browsers removed the XSS auditor, and ``1; mode=block`` (the guide's value) enabled
#: cross-site leaks in the browsers that still had it. ``0`` turns it off there (OWASP).
SECURITY_HEADERS = (
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-XSS-Protection", "0"),
)

#: Names Docker writes into the container's /etc/hosts (``extra_hosts``). nginx's own resolver
#: never reads /etc/hosts, so an upstream under one of these names is resolved once, at start.
DOCKER_HOST_ALIASES = frozenset({"host.docker.internal"})
DOCKER_DNS = "127.0.0.11"

#: ``http2 on;`` replaced ``listen ... http2`` in nginx 1.25.1.
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)

# Connection budget: about 64 KiB per open connection (TLS state, header and proxy buffers),
# and half of nginx's memory given to connections; the rest is for the request bodies that
# nginx buffers before passing them on.
CONNECTION_KIB = 64
MIN_WORKER_CONNECTIONS = 1024
MAX_WORKER_CONNECTIONS = 16384


class NginxSettings(ServiceSettings):
    http_port: int = Field(
        80, ge=1, le=65535, description="Public HTTP port (redirects to HTTPS), on 0.0.0.0"
    )
    https_port: int = Field(443, ge=1, le=65535, description="Public HTTPS port, on 0.0.0.0")
    upload_limit_mb: int = Field(
        50, ge=1, le=10240, description="Largest request body (document upload), in MB"
    )
    rate_limit_rps: int = Field(
        10, ge=1, le=100000, description="Requests per second per client IP"
    )
    rate_limit_burst: int = Field(
        20, ge=0, le=100000, description="Requests over the rate a client may burst"
    )
    proxy_timeout_s: int = Field(
        60, ge=1, le=3600, description="Read/send timeout to the app and embeddings, seconds"
    )
    document_timeout_s: int = Field(
        300, ge=1, le=3600, description="Read/send timeout to Unstructured (hi_res is slow)"
    )

    def host_ports(self) -> list[int]:
        return [self.http_port, self.https_port]

    @model_validator(mode="after")
    def _ports(self) -> Self:
        if self.port is not None:
            raise ValueError(
                "nginx does not use port; set http_port and https_port (published on 0.0.0.0)"
            )
        if self.http_port == self.https_port:
            raise ValueError(f"http_port and https_port are both {self.http_port}")
        return self


class NginxTune(NamedTuple):
    """Worker settings for the CPUs and memory nginx is given."""

    worker_processes: int
    worker_connections: int
    worker_rlimit_nofile: int


def nginx_tuning(*, cpus: float, memory_mb: int) -> NginxTune:
    """One worker per CPU (or part of one) and as many connections as the memory holds.

    ``worker_rlimit_nofile`` is twice the connections: a proxied request holds two sockets.
    """
    workers = max(1, math.ceil(cpus))
    connections = memory_mb * 1024 // 2 // CONNECTION_KIB // workers
    connections = min(MAX_WORKER_CONNECTIONS, max(MIN_WORKER_CONNECTIONS, connections))
    return NginxTune(
        worker_processes=workers,
        worker_connections=connections,
        worker_rlimit_nofile=2 * connections,
    )


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``1.30.5-trixie`` → (1, 30, 5), ``1.24`` → (1, 24, 0); None without a leading version."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def nginx_version(image: str) -> tuple[int, int, int] | None:
    """``nginx:1.30.5`` → (1, 30, 5); None when the tag names no version (``latest``)."""
    last = image.rsplit("/", 1)[-1]
    return parse_version(last.rsplit(":", 1)[-1] if ":" in last else "")


class AppUpstream(NamedTuple):
    """How nginx reaches the user's API servers."""

    address: str
    #: Resolved once at start (an IP, or a name Docker puts in /etc/hosts). Otherwise resolved
    #: per request through Docker's DNS, so nginx starts while the name does not resolve yet.
    static: bool
    #: The API replicas kbinfra runs (``Service.balanced_servers``): an ``upstream`` block
    #: with passive health. nginx 1.22 resolves these names at start (and reload) only.
    servers: tuple[str, ...] = ()


#: Passive health of a balanced replica: this many failed attempts within fail_timeout take it
#: out of the rotation for fail_timeout; idle connections kept open to the replicas.
UPSTREAM_MAX_FAILS = 3
UPSTREAM_FAIL_TIMEOUT_S = 10
UPSTREAM_KEEPALIVE = 32


def app_upstream(upstream: str) -> AppUpstream:
    host = upstream.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return AppUpstream(upstream, static=host in DOCKER_HOST_ALIASES)
    return AppUpstream(upstream, static=True)


def balanced_servers(ctx: ServiceContext) -> tuple[BalancedServer, ...]:
    """The API replicas the enabled services run, to balance ``/`` over."""
    return tuple(b for s, own in enabled_services(ctx) for b in s.balanced_servers(own))


#: Worker processes of the running nginx, by pid: ``nginx: worker process`` in /proc (the
#: image has no ps). Old workers rename themselves ``... is shutting down`` on a reload.
_WORKERS = (
    "workers() { for f in /proc/[0-9]*/cmdline; do "
    'case "$(tr "\\000" " " < "$f" 2>/dev/null)" in "nginx: worker process"*) '
    'p="${f#/proc/}"; echo "${p%/cmdline}";; esac; done; }'
)


def reload_command(wait_s: int) -> list[str]:
    """``nginx -s reload``, then wait (at most ``wait_s``) until every worker that ran
    before has exited: they finish the requests they hold (to the replicas of the previous
    configuration) and then stop, so once this returns nginx sends nothing to a server the
    new configuration leaves out. Exit 1 when the old workers are still there."""
    script = (
        f"{_WORKERS}; old=$(workers); nginx -s reload || exit 1; "
        f"end=$(( $(date +%s) + {wait_s} )); "
        'while :; do left=""; '
        'for p in $old; do [ -e "/proc/$p" ] && left="$left $p"; done; '
        '[ -z "$left" ] && [ -n "$(workers)" ] && exit 0; '
        '[ "$(date +%s)" -ge "$end" ] && '
        '{ echo "nginx: reloaded, but the previous workers$left still run after '
        f'{wait_s}s" >&2; exit 1; }}; '
        "sleep 0.2; done"
    )
    return ["/bin/sh", "-c", script]


def all_routes(ctx: ServiceContext) -> list[tuple[Service, Route]]:
    """Every route the enabled services offer (``Service.routes``), with its service."""
    return [(s, route) for s, own in enabled_services(ctx) for route in s.routes(own)]


def routed_services(ctx: ServiceContext) -> list[tuple[Service, Route]]:
    """Every public route the enabled services offer, with its service. Data stores offer
    none: they are never reachable through nginx's HTTPS site (at most through a key gate's
    own listener on the stack network and loopback)."""
    return [(s, route) for s, route in all_routes(ctx) if route.public]


def key_gates(ctx: ServiceContext) -> list[tuple[str, KeyGate]]:
    """The enabled services whose key nginx checks (``Route.gate``), with their gate."""
    return [(s.name, route.gate) for s, route in all_routes(ctx) if route.gate is not None]


def gate_ports(gates: Sequence[KeyGate]) -> list[tuple[int, int]]:
    """(host port, nginx's port) of each gate listener nginx publishes on 127.0.0.1: a gated
    service's own host ports (HTTP and gRPC), which its clients on this host keep using."""
    listeners: list[tuple[int | None, int]] = []
    for g in gates:
        listeners.append((g.host_port, g.port))
        if g.grpc is not None:
            listeners.append((g.grpc.host_port, g.grpc.port))
    return [(host, port) for host, port in listeners if host is not None]


class Nginx(Service):
    name = "nginx"
    checks_keys = True
    allocation = "app"
    # nginx only fronts the user's API servers, which take the rest of the "app" budget.
    share = 0.25
    settings_model = NginxSettings
    default_image = "nginx:1.30.5"
    container_port = 443
    default_host_port = None
    stage = "edge"

    def tuning(self, ctx: ServiceContext) -> NginxTune:
        return nginx_tuning(cpus=ctx.resources.cpus, memory_mb=ctx.resources.memory_mb)

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        settings: NginxSettings = ctx.settings
        version = nginx_version(ctx.image)
        routes = [
            {
                "path": route.prefix,
                "service": service.name,
                "address": route.address,
                "public": route.public,
                "timeout_s": settings.document_timeout_s
                if route.long_running
                else settings.proxy_timeout_s,
                # names and ports only: the keys are in the keys file
                "gate": gated_route(service.name, route.gate) if route.gate else None,
            }
            for service, route in all_routes(ctx)
        ]
        domain = ctx.stack.domain
        return {
            "settings": settings,
            "tune": self.tuning(ctx),
            "config_dir": CONFIG_DIR,
            "app": self.app(ctx),
            "upstream_max_fails": UPSTREAM_MAX_FAILS,
            "upstream_fail_timeout_s": UPSTREAM_FAIL_TIMEOUT_S,
            "upstream_keepalive": UPSTREAM_KEEPALIVE,
            "resolver": DOCKER_DNS,
            "dns_cache_s": DNS_CACHE_S,
            "routes": [route for route in routes if route["public"]],
            "gates": [route for route in routes if route["gate"]],
            "keys_target": KEYS_TARGET,
            "refused": REFUSED,
            "protocols": " ".join(TLS_PROTOCOLS),
            "ciphers": ":".join(TLS12_CIPHERS),
            "headers": SECURITY_HEADERS,
            "http2_directive": version is None or version >= HTTP2_DIRECTIVE_SINCE,
            "redirect_to": domain
            if settings.https_port == 443
            else f"{domain}:{settings.https_port}",
        }

    def app(self, ctx: ServiceContext) -> AppUpstream:
        servers = tuple(server.address for server in balanced_servers(ctx))
        if servers:
            return AppUpstream(servers[0], static=True, servers=servers)
        return app_upstream(ctx.stack.app.upstream)

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        files = [
            RenderedFile(path=CERT_FILE, text=ctx.extra["tls_certificate"]),
            RenderedFile(path=KEY_FILE, text=ctx.extra["tls_key"], mode=0o600, secret=True),
        ]
        gates = key_gates(ctx)
        if gates:
            files.append(RenderedFile(KEYS_CONF, keys_conf(gates), mode=0o600, secret=True))
        return files

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: NginxSettings = ctx.settings
        # Its longest request: a reload waits as long for the previous workers to finish.
        stop_timeout = max(settings.proxy_timeout_s, settings.document_timeout_s)
        gates = [gate for _, gate in key_gates(ctx)]
        files = [
            FileMount(source=MAIN_CONF, target=f"{CONFIG_DIR}/nginx.conf"),
            FileMount(source=SITE_CONF, target=f"{CONFIG_DIR}/kbinfra/site.conf"),
            FileMount(source=CERT_FILE, target=f"{CONFIG_DIR}/tls/cert.pem"),
            FileMount(source=KEY_FILE, target=f"{CONFIG_DIR}/tls/key.pem"),
        ]
        if gates:
            files.append(FileMount(source=KEYS_CONF, target=KEYS_TARGET))
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            ports=[
                PortBinding(host_ip="0.0.0.0", host_port=settings.http_port, container_port=80),
                PortBinding(host_ip="0.0.0.0", host_port=settings.https_port, container_port=443),
                # a gated service's own host port: its clients on this host come through here
                *(
                    PortBinding(host_ip="127.0.0.1", host_port=host_port, container_port=port)
                    for host_port, port in gate_ports(gates)
                ),
            ],
            files=files,
            # HTTPS on the container's own port: proves the certificate loaded and the TLS
            # listener answers. -k because the name is 127.0.0.1, not the certificate's.
            healthcheck=HealthCheck(
                test=["CMD", "curl", "-fsSk", "-o", "/dev/null", "https://127.0.0.1/healthz"],
                interval_s=10,
                retries=6,
                start_period_s=5,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            extra_hosts=[f"{alias}:host-gateway" for alias in sorted(DOCKER_HOST_ALIASES)],
            stop_timeout_s=stop_timeout,
            # The master binds 80 and 443 as root and chowns its temp folders; its workers
            # switch to the nginx user.
            cap_add=("CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"),
            # nginx 1.22 resolves an upstream block's names at start and reload only: the
            # replicas must be on the network first. A changed replica list (or any change of
            # these files alone) is delivered into the running nginx and reloaded in place.
            depends_on=[server.service for server in balanced_servers(ctx)],
            reload=Reload(
                files=(MAIN_CONF, SITE_CONF, CERT_FILE, KEY_FILE, *([KEYS_CONF] if gates else [])),
                test=("nginx", "-t", "-q"),
                command=tuple(reload_command(stop_timeout)),
                resolves_servers=True,
            ),
            # The pid file (/run/nginx.pid) and temp files; request bodies and proxy buffers
            # go to disk (Debian's nginx keeps them in /var/lib/nginx, the official image in
            # /var/cache/nginx): an upload may be as large as upload_limit_mb.
            tmpfs=(TmpfsMount("/run", size_mb=8), TmpfsMount("/tmp")),
            scratch=("/var/cache/nginx", "/var/lib/nginx"),
            root_user_reason=(
                "the master starts as root to bind 80 and 443 and chown its temp folders; its "
                "workers run as nginx"
            ),
        )


# --- validation with the real nginx and OpenSSL (kbinfra render --check) -----------------


SERVICE = Nginx()
SERVICES = (SERVICE,)
