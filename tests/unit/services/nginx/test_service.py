"""nginx: tuning worked by hand, the rendered site (the guide's bugs fixed), and real nginx."""

from __future__ import annotations

import http.client
import http.server
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.render import render_service, render_stack, write_tree
from kbinfra.service import CheckResult
from kbinfra.services.nginx.render_check import (
    check_ciphers,
    check_rendered,
    openssl_knows,
    scratch_copy,
)
from kbinfra.services.nginx.service import (
    SECURITY_HEADERS,
    SERVICE,
    TLS12_CIPHERS,
    app_upstream,
    nginx_tuning,
    nginx_version,
)
from kbinfra.stack import Stack
from kbinfra.validation import find_tool, free_port

GUIDE_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA512:DHE-RSA-AES256-GCM-SHA512:"
    "ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384"
)


def rendered(stack: Stack) -> dict[str, str]:
    return {f.path: f.text for f in render_service(SERVICE, stack.contexts["nginx"])}


def enclosing_blocks(conf: str, directive: str) -> list[str]:
    """For each line that starts with ``directive``, the name of the block it sits in."""
    stack: list[str] = []
    found = []
    for line in conf.splitlines():
        code = line.split("#", 1)[0].strip()
        if not code:
            continue
        if re.match(rf"{re.escape(directive)}\s", code):
            found.append(stack[-1] if stack else "main")
        if code.endswith("{"):
            stack.append(code.split()[0])
        elif code == "}":
            stack.pop()
    return found


def server_blocks(site: str) -> list[str]:
    """The text of each top-level ``server { ... }`` block."""
    blocks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in site.splitlines():
        code = line.split("#", 1)[0].strip()
        if depth == 0 and code.startswith("server {"):
            current = []
        if depth or code.startswith("server {"):
            current.append(line)
        depth += code.count("{") - code.count("}")
        if code == "}" and depth == 0:
            blocks.append("\n".join(current))
    return blocks


# --- tuning ------------------------------------------------------------------------------


def test_tuning_worked_by_hand_for_each_profile() -> None:
    # minimum: app 1 CPU / 3 GB x 0.25 = 0.25 CPU, 768 MiB. One worker; half the memory at
    # 64 KiB a connection: 768 * 1024 / 2 / 64 = 6144 connections, 12288 descriptors.
    tune = nginx_tuning(cpus=0.25, memory_mb=768)
    assert (tune.worker_processes, tune.worker_connections, tune.worker_rlimit_nofile) == (
        1,
        6144,
        12288,
    )
    # recommended: 4 CPU / 8 GB x 0.25 = 1 CPU, 2048 MiB: 2048 * 1024 / 2 / 64 = 16384.
    tune = nginx_tuning(cpus=1.0, memory_mb=2048)
    assert (tune.worker_processes, tune.worker_connections) == (1, 16384)
    # large: 8 CPU / 16 GB x 0.25 = 2 CPU, 4096 MiB: 32768 connections over 2 workers.
    tune = nginx_tuning(cpus=2.0, memory_mb=4096)
    assert (tune.worker_processes, tune.worker_connections, tune.worker_rlimit_nofile) == (
        2,
        16384,
        32768,
    )


def test_tuning_clamps_connections() -> None:
    assert nginx_tuning(cpus=0.05, memory_mb=64).worker_connections == 1024
    assert nginx_tuning(cpus=1, memory_mb=65536).worker_connections == 16384
    assert nginx_tuning(cpus=1.05, memory_mb=8192).worker_processes == 2


def test_nginx_takes_a_quarter_of_the_app_budget(make_stack: Callable[..., Stack]) -> None:
    resources = make_stack("recommended").contexts["nginx"].resources
    assert (resources.cpus, resources.memory_mb) == (1.0, 2048)
    conf = rendered(make_stack("large"))["nginx/nginx.conf"]
    assert "worker_processes 2;" in conf
    assert "worker_connections 16384;" in conf
    assert "worker_rlimit_nofile 32768;" in conf


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx:1.30.5", (1, 30, 5)),
        ("registry.local:5000/nginx:1.24", (1, 24, 0)),
        ("nginx:1.27.3-alpine", (1, 27, 3)),
        ("nginx:stable", None),
        ("registry.local:5000/nginx", None),
    ],
)
def test_nginx_version_from_tag(image: str, expected: tuple[int, int, int] | None) -> None:
    assert nginx_version(image) == expected


# --- TLS and headers ---------------------------------------------------------------------


def test_tls_protocols_are_exactly_1_2_and_1_3(make_stack: Callable[..., Stack]) -> None:
    site = rendered(make_stack())["nginx/site.conf"]
    protocols = re.findall(r"^\s*ssl_protocols\s+([^;]+);", site, re.MULTILINE)
    assert protocols == ["TLSv1.2 TLSv1.3"]


def test_every_cipher_exists_and_the_guides_sha512_suites_do_not(
    make_stack: Callable[..., Stack],
) -> None:
    site = rendered(make_stack())["nginx/site.conf"]
    (ciphers,) = re.findall(r"^\s*ssl_ciphers\s+([^;]+);", site, re.MULTILINE)
    assert ciphers.split(":") == list(TLS12_CIPHERS)
    assert all(openssl_knows(name) for name in TLS12_CIPHERS)
    assert "SHA512" not in site
    assert not openssl_knows("ECDHE-RSA-AES256-GCM-SHA512")
    assert not openssl_knows("DHE-RSA-AES256-GCM-SHA512")
    assert "ssl_session_cache shared:SSL:10m;" in site


def test_security_headers_are_sent_always(make_stack: Callable[..., Stack]) -> None:
    site = rendered(make_stack())["nginx/site.conf"]
    https = server_blocks(site)[1]
    for name, value in SECURITY_HEADERS:
        assert f'add_header {name} "{value}" always;' in https
    assert 'Strict-Transport-Security "max-age=31536000; includeSubDomains" always' in https
    assert 'X-Frame-Options "DENY" always' in https
    # Obsolete header: turned off, never the guide's "1; mode=block".
    assert "mode=block" not in site
    # An add_header inside a location would drop the server's headers there.
    assert enclosing_blocks(https, "add_header") == ["server"] * len(SECURITY_HEADERS)
    # the only others: a gRPC refusal's status, in a server with no headers to drop
    others = [block for block in server_blocks(site) if block != https and "add_header" in block]
    assert len(others) == 1 and "location @kb_qdrant_grpc_refused" in others[0]
    assert enclosing_blocks(others[0], "add_header") == ["location"] * 2


def test_http_redirects_to_https_with_301(make_stack: Callable[..., Stack]) -> None:
    http_server = server_blocks(rendered(make_stack())["nginx/site.conf"])[0]
    assert "listen 80 default_server;" in http_server
    assert "return 301 https://kb.example.com$request_uri;" in http_server
    stack = make_stack("minimum", {"services": {"nginx": {"https_port": 8443}}})
    http_server = server_blocks(rendered(stack)["nginx/site.conf"])[0]
    assert "return 301 https://kb.example.com:8443$request_uri;" in http_server


def test_server_tokens_upload_limit_and_timeouts(make_stack: Callable[..., Stack]) -> None:
    files = rendered(make_stack())
    conf, site = files["nginx/nginx.conf"], files["nginx/site.conf"]
    assert "server_tokens off;" in conf
    assert "client_max_body_size 50M;" in conf
    assert "proxy_read_timeout 60s;" in site
    stack = make_stack("minimum", {"services": {"nginx": {"upload_limit_mb": 200}}})
    assert "client_max_body_size 200M;" in rendered(stack)["nginx/nginx.conf"]


# --- rate limiting: the guide's zone-in-server bug ---------------------------------------


def test_rate_limit_zone_is_in_http_context_and_applied_in_locations(
    make_stack: Callable[..., Stack],
) -> None:
    files = rendered(make_stack())
    conf, site = files["nginx/nginx.conf"], files["nginx/site.conf"]
    assert enclosing_blocks(conf, "limit_req_zone") == ["http"]
    assert "zone=kb_api:10m rate=10r/s" in conf
    assert "limit_req_zone" not in site
    # / , /embeddings/ and /unstructured/ are limited; /healthz is not.
    assert enclosing_blocks(site, "limit_req") == ["location"] * 3
    healthz = site[site.index("location = /healthz") :].split("}", 1)[0]
    assert "limit_req" not in healthz
    assert "burst=20 nodelay" in site


# --- routes ------------------------------------------------------------------------------


def test_internal_routes_follow_enabled_services(make_stack: Callable[..., Stack]) -> None:
    site = rendered(make_stack())["nginx/site.conf"]
    assert "location /embeddings/ {" in site
    assert 'set $kb_embeddings_upstream "embeddings:8001";' in site
    assert "rewrite ^/embeddings/(.*)$ /$1 break;" in site
    assert 'set $kb_unstructured_upstream "unstructured:8000";' in site
    assert "proxy_read_timeout 300s;" in site  # documents take longer than API calls
    assert "location = /embeddings/metrics {" in site
    assert "resolver 127.0.0.11" in rendered(make_stack())["nginx/nginx.conf"]

    stack = make_stack("minimum", {"services": {"embeddings": {"enabled": False}}})
    site = rendered(stack)["nginx/site.conf"]
    assert "/embeddings/" not in site
    assert "location /unstructured/ {" in site


def test_data_stores_are_never_routed(make_stack: Callable[..., Stack]) -> None:
    files = rendered(make_stack("large"))
    site = files["nginx/site.conf"]
    # Qdrant is reached only through its key gate's own listeners (6333, 6334), never the site
    public = "\n".join([files["nginx/nginx.conf"], *server_blocks(site)[:2]])
    code = "\n".join(line.split("#", 1)[0] for line in public.splitlines())
    for name in ("qdrant", "postgres", "redis", "6333", "6334", "5432", "6379"):
        assert name not in code.lower()
    site_code = "\n".join(line.split("#", 1)[0] for line in site.splitlines())
    for name in ("postgres", "redis", "5432", "6379"):
        assert name not in site_code.lower()
    gates = [block for block in server_blocks(site)[2:] if "qdrant" in block]
    assert [block.split("\n", 2)[1].strip() for block in gates] == [
        "listen 6333;",
        "listen 6334;",
    ]


def test_app_upstream_on_docker_host_is_static_with_keepalive(
    make_stack: Callable[..., Stack],
) -> None:
    files = rendered(make_stack())
    assert "server host.docker.internal:8000;" in files["nginx/nginx.conf"]
    assert "keepalive 32;" in files["nginx/nginx.conf"]
    assert "proxy_pass http://kb_app;" in files["nginx/site.conf"]
    spec = SERVICE.container(make_stack().contexts["nginx"])
    assert spec.extra_hosts == ["host.docker.internal:host-gateway"]


def test_app_upstream_by_dns_name_resolves_per_request(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"app": {"upstream": "api.internal:9000"}})
    files = rendered(stack)
    assert "upstream kb_app" not in files["nginx/nginx.conf"]
    assert 'set $kb_app_upstream "api.internal:9000";' in files["nginx/site.conf"]
    assert "proxy_pass http://$kb_app_upstream;" in files["nginx/site.conf"]


@pytest.mark.parametrize(
    ("upstream", "static"),
    [
        ("host.docker.internal:8000", True),
        ("10.0.0.5:8000", True),
        ("[::1]:8000", True),
        ("api:8000", False),
        ("api.example.com:443", False),
    ],
)
def test_app_upstream_kind(upstream: str, static: bool) -> None:
    assert app_upstream(upstream).static is static


def test_http2_directive_matches_the_image(make_stack: Callable[..., Stack]) -> None:
    site = rendered(make_stack())["nginx/site.conf"]
    assert "http2 on;" in site
    assert "listen 443 ssl default_server;" in site
    stack = make_stack("minimum", {"services": {"nginx": {"image": "nginx:1.24.0"}}})
    site = rendered(stack)["nginx/site.conf"]
    assert "http2 on;" not in site
    assert "listen 443 ssl http2 default_server;" in site


# --- container, ports, secrets -----------------------------------------------------------


def test_only_nginx_publishes_on_all_interfaces(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", {"services": {"nginx": {"http_port": 8080, "https_port": 8443}}})
    spec = SERVICE.container(stack.contexts["nginx"])
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("0.0.0.0", 8080, 80),
        ("0.0.0.0", 8443, 443),
        # Qdrant's host ports (REST, gRPC) and the Unstructured API's, behind their key gates
        ("127.0.0.1", 6333, 6333),
        ("127.0.0.1", 6334, 6334),
        ("127.0.0.1", 8002, 8002),
    ]
    for name, service in stack.services.items():
        if name != "nginx":
            ports = service.container(stack.contexts[name]).ports
            assert all(p.host_ip == "127.0.0.1" for p in ports)


def test_health_check_uses_curl_over_https(make_stack: Callable[..., Stack]) -> None:
    spec = SERVICE.container(make_stack().contexts["nginx"])
    assert spec.healthcheck is not None
    assert spec.healthcheck.test[:2] == ["CMD", "curl"]
    assert spec.healthcheck.test[-1] == "https://127.0.0.1/healthz"
    targets = {f.target for f in spec.files}
    assert "/etc/nginx/tls/key.pem" in targets
    assert "/etc/nginx/kbinfra/site.conf" in targets


def test_port_setting_is_refused(make_stack: Callable[..., Stack]) -> None:
    with pytest.raises(SpecError, match="nginx does not use port"):
        make_stack("minimum", {"services": {"nginx": {"port": 8443}}})
    with pytest.raises(SpecError, match="http_port and https_port are both 443"):
        make_stack("minimum", {"services": {"nginx": {"http_port": 443}}})


def test_public_port_clashing_with_an_internal_one_is_refused(
    make_stack: Callable[..., Stack],
) -> None:
    # The stack refuses it when it loads, like any other shared host port.
    with pytest.raises(SpecError, match=r"services embeddings and nginx both use host port 8001"):
        make_stack("minimum", {"services": {"nginx": {"https_port": 8001}}})


def test_tls_files_and_no_secret_elsewhere(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("recommended")
    files = {f.path: f for f in render_stack(stack)}
    key, cert = files["nginx/tls/key.pem"], files["nginx/tls/cert.pem"]
    assert (key.mode, key.secret) == (0o600, True)
    assert (cert.mode, cert.secret) == (0o644, False)
    assert key.text == stack.tls_key
    key_body = stack.tls_key.strip().splitlines()[1]
    for path, file in files.items():
        if file.secret:
            assert file.mode == 0o600, path
            continue
        assert "TESTSECRET" not in file.text, path
        assert "PRIVATE KEY" not in file.text, path
        assert key_body not in file.text, path


def test_rendering_is_deterministic(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("large")
    assert rendered(stack) == rendered(stack)


# --- the real nginx ----------------------------------------------------------------------


def require_nginx() -> str:
    """The nginx binary; CI must have it, a laptop may skip."""
    nginx = find_tool("nginx", "/usr/sbin", "/usr/local/sbin")
    if nginx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (apt-get install nginx-light)")
        pytest.skip("nginx is not installed")
    return nginx


def render_to(stack: Stack, out: Path) -> Path:
    write_tree(render_stack(stack), out)
    return out


def nginx_checks(stack: Stack, out: Path) -> dict[str, CheckResult]:
    return {r.tool: r for r in check_rendered(stack.contexts["nginx"], out)}


@pytest.mark.validators
@pytest.mark.parametrize("profile", ["minimum", "recommended", "large"])
def test_rendered_config_passes_nginx_t(
    profile: str, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_nginx()
    stack = make_stack(profile)
    checks = nginx_checks(stack, render_to(stack, tmp_path / "out"))
    assert checks["nginx -t"].outcome == "ok", checks["nginx -t"].detail
    assert checks["openssl ciphers"].outcome == "ok"


@pytest.mark.validators
def test_qdrants_key_gate_passes_nginx_t(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """Qdrant behind its key gate (no gRPC port): the two-header map, the streaming listener."""
    require_nginx()
    stack = make_stack("minimum", {"services": {"qdrant": {"grpc_port": None}}})
    out = render_to(stack, tmp_path / "out")
    assert "$kb_qdrant_key" in (out / "nginx/keys.conf").read_text()
    checks = nginx_checks(stack, out)
    assert checks["nginx -t"].outcome == "ok", checks["nginx -t"].detail


@pytest.mark.validators
def test_guides_zone_inside_server_fails_with_the_rendered_line(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_nginx()
    stack = make_stack()
    out = render_to(stack, tmp_path / "out")
    site = out / "nginx/site.conf"
    lines = site.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "server_name" in line and i > 6)
    lines.insert(at + 1, "    limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;")
    site.write_text("\n".join(lines) + "\n")

    result = nginx_checks(stack, out)["nginx -t"]
    assert result.outcome == "failed"
    assert result.path == "nginx/site.conf"
    assert result.line == at + 2
    assert '"limit_req_zone" directive is not allowed here' in result.detail


@pytest.mark.validators
def test_error_in_main_conf_maps_to_nginx_conf(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    require_nginx()
    stack = make_stack()
    out = render_to(stack, tmp_path / "out")
    conf = out / "nginx/nginx.conf"
    text = conf.read_text().replace("worker_connections 6144;", "worker_connections lots;")
    conf.write_text(text)
    line = text.splitlines().index("    worker_connections lots;") + 1

    result = nginx_checks(stack, out)["nginx -t"]
    assert (result.outcome, result.path, result.line) == ("failed", "nginx/nginx.conf", line)
    assert "/etc/nginx/nginx.conf" in result.detail or "invalid" in result.detail


@pytest.mark.validators
def test_guides_cipher_list_fails_the_cipher_check(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    out = render_to(make_stack(), tmp_path / "out")
    site = out / "nginx/site.conf"
    text = site.read_text()
    (ours,) = re.findall(r"ssl_ciphers\s+([^;]+);", text)
    site.write_text(text.replace(ours, GUIDE_CIPHERS))
    result = check_ciphers(out, "nginx/site.conf")
    assert result.outcome == "failed"
    assert "ECDHE-RSA-AES256-GCM-SHA512" in result.detail
    assert "DHE-RSA-AES256-GCM-SHA512" in result.detail
    assert result.line is not None
    assert "ssl_ciphers" in text.splitlines()[result.line - 1]


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for the user's API servers: echoes what nginx forwarded."""

    def do_GET(self) -> None:
        body = f"proto={self.headers.get('X-Forwarded-Proto')} path={self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}")


@pytest.mark.validators
def test_nginx_serves_the_rendered_config(
    make_stack: Callable[..., Stack], tmp_path: Path, app_server: int
) -> None:
    """Run the rendered config with the real nginx: redirect, TLS, headers, proxy, limits."""
    nginx = require_nginx()
    if os.geteuid() != 0:
        pytest.skip("runs nginx's master as root, as in the container")
    stack = make_stack("minimum", {"app": {"upstream": f"127.0.0.1:{app_server}"}})
    out = render_to(stack, tmp_path / "out")
    mounts = SERVICE.container(stack.contexts["nginx"]).files
    scratch = scratch_copy(nginx, out, mounts, tmp_path / "etc-nginx")
    command = [nginx, "-g", "daemon off;", "-e", "stderr", "-p", f"{scratch.root}/"]
    process = subprocess.Popen(
        [*command, "-c", str(scratch.conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    http_port, https_port = scratch.ports["80"], scratch.ports["443"]
    try:
        _wait_for(https_port, process)
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        plain.request("GET", "/docs?page=2")
        response = plain.getresponse()
        assert response.status == 301
        assert response.getheader("Location") == "https://kb.example.com/docs?page=2"

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        tls = http.client.HTTPSConnection("127.0.0.1", https_port, timeout=5, context=context)
        tls.request("GET", "/healthz")
        response = tls.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        sock = tls.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() == "TLSv1.2"
        cipher = sock.cipher()
        assert cipher is not None
        assert cipher[0] in TLS12_CIPHERS
        for name, value in SECURITY_HEADERS:
            assert response.getheader(name) == value
        assert response.getheader("Server") == "nginx"  # server_tokens off: no version

        statuses = []
        for _ in range(30):
            tls.request("GET", "/api/items")
            response = tls.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == 200:
                assert body == b"proto=https path=/api/items"
            assert response.getheader("X-Frame-Options") == "DENY"  # always, 429 included
        assert statuses[0] == 200
        assert 429 in statuses  # 10 r/s with a burst of 20
    finally:
        process.terminate()
        process.wait(timeout=10)
