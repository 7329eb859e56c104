"""nginx: the stack's only public door. TLS, security headers, rate limits and routes.

nginx fronts the user's own API servers (``app.upstream``, not deployed by kbinfra) and, when
they are enabled, the stack's embedding and Unstructured services, so that ``kbinfra check``
can prove that HTTPS answers all the way through. Qdrant, PostgreSQL and Redis are never routed.
"""

import ipaddress
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from pydantic import Field, model_validator

from kbinfra.registry import get_service
from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    PortBinding,
    RenderedFile,
    Service,
    ServiceContext,
    ServiceSettings,
)

if TYPE_CHECKING:
    from kbinfra.validation import CheckResult, ToolRun

CONFIG_DIR = "/etc/nginx"
MAIN_CONF = "nginx/nginx.conf"
SITE_CONF = "nginx/site.conf"
CERT_FILE = "nginx/tls/cert.pem"
KEY_FILE = "nginx/tls/key.pem"

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

#: Internal services nginx routes to when they are enabled: (service, public prefix, timeout
#: setting). Data stores are deliberately absent: they are never reachable through nginx.
INTERNAL_ROUTES = (
    ("embeddings", "/embeddings/", "proxy_timeout_s"),
    ("unstructured", "/unstructured/", "document_timeout_s"),
)

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


def app_upstream(upstream: str) -> AppUpstream:
    host = upstream.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return AppUpstream(upstream, static=host in DOCKER_HOST_ALIASES)
    return AppUpstream(upstream, static=True)


class Nginx(Service):
    name = "nginx"
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
                "path": path,
                "service": name,
                "address": get_service(name).address(),
                "timeout_s": getattr(settings, timeout),
            }
            for name, path, timeout in INTERNAL_ROUTES
            if name in ctx.enabled
        ]
        domain = ctx.stack.domain
        return {
            "settings": settings,
            "tune": self.tuning(ctx),
            "config_dir": CONFIG_DIR,
            "app": app_upstream(ctx.stack.app.upstream),
            "resolver": DOCKER_DNS,
            "routes": routes,
            "protocols": " ".join(TLS_PROTOCOLS),
            "ciphers": ":".join(TLS12_CIPHERS),
            "headers": SECURITY_HEADERS,
            "http2_directive": version is None or version >= HTTP2_DIRECTIVE_SINCE,
            "redirect_to": domain
            if settings.https_port == 443
            else f"{domain}:{settings.https_port}",
        }

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        return [
            RenderedFile(path=CERT_FILE, text=ctx.extra["tls_certificate"]),
            RenderedFile(path=KEY_FILE, text=ctx.extra["tls_key"], mode=0o600, secret=True),
        ]

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: NginxSettings = ctx.settings
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            ports=[
                PortBinding(host_ip="0.0.0.0", host_port=settings.http_port, container_port=80),
                PortBinding(host_ip="0.0.0.0", host_port=settings.https_port, container_port=443),
            ],
            files=[
                FileMount(source=MAIN_CONF, target=f"{CONFIG_DIR}/nginx.conf"),
                FileMount(source=SITE_CONF, target=f"{CONFIG_DIR}/kbinfra/site.conf"),
                FileMount(source=CERT_FILE, target=f"{CONFIG_DIR}/tls/cert.pem"),
                FileMount(source=KEY_FILE, target=f"{CONFIG_DIR}/tls/key.pem"),
            ],
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
            stop_timeout_s=max(settings.proxy_timeout_s, settings.document_timeout_s),
        )

    def check_rendered(self, ctx: ServiceContext, out: Path) -> list["CheckResult"]:
        from kbinfra.validation import find_tool, skipped  # noqa: PLC0415

        results = [check_ciphers(out, SITE_CONF)]
        nginx = find_tool("nginx", "/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
        if nginx is None:
            results.append(skipped(MAIN_CONF, "nginx -t"))
        else:
            results.append(nginx_config_test(nginx, out, self.container(ctx).files))
        return results


# --- validation with the real nginx and OpenSSL (kbinfra render --check) -----------------


def openssl_knows(cipher: str) -> bool:
    """True when the local OpenSSL has a TLS cipher suite of that name."""
    import ssl  # noqa: PLC0415 (only render --check needs it; ~5 ms at every start)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(cipher)
    except ssl.SSLError:
        return False
    return True


def check_ciphers(out: Path, relative: str) -> "CheckResult":
    """Every name in ``ssl_ciphers`` must exist in OpenSSL.

    nginx cannot catch this: OpenSSL ignores unknown names in a list as long as one is valid,
    so the guide's list passes ``nginx -t`` with two suites that do not exist.
    """
    import ssl  # noqa: PLC0415

    from kbinfra.validation import CheckResult  # noqa: PLC0415

    tool = "openssl ciphers"
    lines = (out / relative).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s*ssl_ciphers\s+['\"]?([^'\";]+)['\"]?\s*;", line)
        if match is None:
            continue
        names = match[1].split(":")
        unknown = [name for name in names if not openssl_knows(name)]
        if unknown:
            return CheckResult(
                relative,
                tool,
                "failed",
                f"unknown cipher suite(s) {', '.join(unknown)} ({ssl.OPENSSL_VERSION})",
                number,
            )
        return CheckResult(relative, tool, "ok", f"{len(names)} suites known to OpenSSL")
    return CheckResult(relative, tool, "failed", "no ssl_ciphers directive")


_MESSAGE = re.compile(
    r"\[(?P<level>emerg|alert|crit|error|warn)\] (?:\d+#\d+: )?(?P<text>.*?)"
    r"(?: in (?P<file>/\S+):(?P<line>\d+))?$"
)


class ScratchNginx(NamedTuple):
    """A runnable copy of the rendered configuration outside the container."""

    root: Path
    #: scratch file → rendered file (``nginx/site.conf``), to map nginx's messages back
    origin: dict[str, str]
    #: container port (``"443"``) → the free local port that replaced it
    ports: dict[str, int]
    #: the local nginx's version, and whether ``http2 on;`` had to be folded for it
    version: tuple[int, int, int] | None
    fold_http2: bool

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"


def scratch_copy(nginx: str, out: Path, mounts: Sequence[FileMount], root: Path) -> ScratchNginx:
    """Lay the rendered files out under ``root`` as they are mounted under /etc/nginx.

    Every line stays where it was, so nginx's ``file:line`` maps straight back to the rendered
    file. Rewritten per line: paths under /etc/nginx, ``listen`` ports (free ports on
    127.0.0.1), ``pid``, ``user`` (dropped: the image's ``nginx`` user may not exist here),
    Docker's /etc/hosts names (→ 127.0.0.1, as ``extra_hosts`` does), and, for a local nginx
    older than 1.25.1, ``http2 on;`` folded back into ``listen ... http2``.
    """
    version = local_nginx_version(nginx)
    fold_http2 = version is not None and version < HTTP2_DIRECTIVE_SINCE
    origin: dict[str, str] = {}
    ports: dict[str, int] = {}
    for mount in mounts:
        if not mount.target.startswith(f"{CONFIG_DIR}/"):
            continue
        copy = root / mount.target.removeprefix(f"{CONFIG_DIR}/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        source = out / mount.source
        if copy.suffix == ".conf":
            text = source.read_text(encoding="utf-8")
            copy.write_text(_scratch_text(text, root, ports, fold_http2), encoding="utf-8")
        else:
            shutil.copyfile(source, copy)
        origin[str(copy)] = mount.source
    _provide_mime_types(root)
    return ScratchNginx(root, origin, ports, version, fold_http2)


def nginx_config_test(nginx: str, out: Path, mounts: Sequence[FileMount]) -> "CheckResult":
    """``nginx -t`` on the rendered files, in a scratch copy (see :func:`scratch_copy`)."""
    from kbinfra.validation import run_tool  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="kbinfra-nginx-"))
    try:
        scratch = scratch_copy(nginx, out, mounts, root)
        run = run_tool(
            [nginx, "-t", "-p", f"{root}/", "-c", str(scratch.conf), "-e", "stderr"], timeout=30
        )
        return _result(run, scratch)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def local_nginx_version(nginx: str) -> tuple[int, int, int] | None:
    """The version of the nginx binary at ``nginx`` (``nginx -v``)."""
    from kbinfra.validation import run_tool  # noqa: PLC0415

    output = run_tool([nginx, "-v"], timeout=10).output
    return parse_version(output.partition("nginx/")[2])


def _scratch_text(text: str, root: Path, ports: dict[str, int], fold_http2: bool) -> str:
    return "\n".join(_scratch_line(line, root, ports, fold_http2) for line in text.split("\n"))


def _scratch_line(line: str, root: Path, ports: dict[str, int], fold_http2: bool) -> str:
    stripped = line.strip()
    if re.match(r"user\s", stripped):
        return f"# {stripped}"
    if fold_http2 and stripped == "http2 on;":
        return ""
    line = line.replace(f"{CONFIG_DIR}/", f"{root}/")
    for alias in DOCKER_HOST_ALIASES:
        line = line.replace(alias, "127.0.0.1")
    if re.match(r"pid\s", stripped):
        return re.sub(r"pid\s+\S+;", f"pid {root}/nginx.pid;", line)
    listen = re.match(r"(?P<lead>\s*listen\s+)(?P<port>\d+)(?P<rest>[^;]*);(?P<tail>.*)$", line)
    if listen is None:
        return line
    port = ports.get(listen["port"])
    if port is None:
        port = _unused_port(set(ports.values()))
        ports[listen["port"]] = port
    rest = listen["rest"]
    if fold_http2 and re.search(r"\bssl\b", rest):
        rest += " http2"
    return f"{listen['lead']}127.0.0.1:{port}{rest};{listen['tail']}"


def _unused_port(taken: set[int]) -> int:
    from kbinfra.validation import free_port  # noqa: PLC0415

    while (port := free_port()) in taken:
        pass
    return port


def _provide_mime_types(root: Path) -> None:
    """The image ships /etc/nginx/mime.types; use this machine's copy, or a minimal one."""
    target = root / "mime.types"
    if target.exists():
        return
    local = Path(CONFIG_DIR) / "mime.types"
    if local.is_file():
        shutil.copyfile(local, target)
    else:
        target.write_text("types {\n    text/html html;\n    application/json json;\n}\n")


def _result(run: "ToolRun", scratch: ScratchNginx) -> "CheckResult":
    from kbinfra.validation import CheckResult  # noqa: PLC0415

    tool = "nginx -t"
    warnings: list[str] = []
    for raw in run.output.splitlines():
        message = _MESSAGE.search(raw)
        if message is None:
            continue
        text = message["text"].replace(f"{scratch.root}/", f"{CONFIG_DIR}/")
        path = scratch.origin.get(message["file"] or "", MAIN_CONF)
        line = int(message["line"]) if message["line"] else None
        if message["level"] in ("emerg", "alert", "crit"):
            return CheckResult(path, tool, "failed", text, line)
        where = f" ({path}:{line})" if line else ""
        warnings.append(f"{message['level']}: {text}{where}")
    if not run.ok:
        last = run.output.splitlines()[-1] if run.output else f"exit code {run.returncode}"
        return CheckResult(MAIN_CONF, tool, "failed", last.replace(f"{scratch.root}/", ""))
    version = scratch.version
    notes = [f"nginx {'.'.join(map(str, version))}" if version else "nginx"]
    if scratch.fold_http2:
        notes.append("http2 checked as listen ... http2 (this nginx predates http2 on)")
    return CheckResult(MAIN_CONF, tool, "ok", "; ".join(notes + warnings))


SERVICE = Nginx()
SERVICES = (SERVICE,)
