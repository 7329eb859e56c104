"""nginx as Qdrant's key gate (one host, nginx enabled), for REST and gRPC: what is rendered.

The gate's behaviour with a real nginx in front of the Qdrant stand-in (each client key's
access, 401 for every other key in both header forms, on REST and gRPC, a rotation under
request loops on both with no failed request, backups through Qdrant's own key) is proven in
``tests/integration/test_qdrant_gate.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from kbinfra.render import render_service
from kbinfra.service_kit.key_gate import gated
from kbinfra.services.nginx.key_gates import REFUSED
from kbinfra.services.nginx.service import KEYS_CONF
from kbinfra.services.nginx.service import SERVICE as NGINX
from kbinfra.services.qdrant.service import (
    API_KEY,
    GATE_PORT,
    GRPC_GATE_PORT,
    READ_ONLY_KEY,
    SERVICE,
    UPSTREAM_API_KEY,
    UPSTREAM_READ_ONLY_KEY,
    client_address,
)
from kbinfra.stack import Stack

#: Qdrant's gRPC left unpublished on the host: nginx still gates it on the stack network.
NO_GRPC_PORT = {"services": {"qdrant": {"grpc_port": None}}}


def nginx_files(stack: Stack) -> dict[str, str]:
    return {f.path: f.text for f in render_service(NGINX, stack.contexts["nginx"])}


def test_without_nginx_qdrant_checks_its_clients_keys_itself(
    make_stack: Callable[..., Stack],
) -> None:
    ctx = make_stack("minimum", {"services": {"nginx": {"enabled": False}}}).contexts["qdrant"]
    assert not gated(ctx) and SERVICE.routes(ctx) == []
    spec = SERVICE.container(ctx)
    assert spec.secret_env == {
        "QDRANT__SERVICE__API_KEY": API_KEY,
        "QDRANT__SERVICE__READ_ONLY_API_KEY": READ_ONLY_KEY,
    }
    assert [p.container_port for p in spec.ports] == [6333, 6334]
    assert client_address(ctx) == "qdrant:6333"


def test_behind_the_gate_qdrant_holds_its_own_keys_and_leaves_its_port_to_nginx(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    ctx = stack.contexts["qdrant"]
    assert gated(ctx)
    spec = SERVICE.container(ctx)
    assert spec.secret_env == {
        "QDRANT__SERVICE__API_KEY": UPSTREAM_API_KEY,
        "QDRANT__SERVICE__READ_ONLY_API_KEY": UPSTREAM_READ_ONLY_KEY,
    }
    assert spec.ports == []  # neither REST nor gRPC: nginx publishes Qdrant's host ports
    nginx = NGINX.container(stack.contexts["nginx"])
    published = [(p.host_ip, p.host_port, p.container_port) for p in nginx.ports]
    assert ("127.0.0.1", ctx.settings.port, GATE_PORT) in published
    assert ("127.0.0.1", ctx.settings.grpc_port, GRPC_GATE_PORT) in published
    unpublished = make_stack("minimum", NO_GRPC_PORT)
    assert SERVICE.container(unpublished.contexts["qdrant"]).ports == []
    nginx = NGINX.container(unpublished.contexts["nginx"])
    assert [p.container_port for p in nginx.ports if p.host_ip == "127.0.0.1"] == [
        GATE_PORT,
        8002,  # the Unstructured API's gate
    ]
    # on the stack network, unpublished
    assert f"listen {GRPC_GATE_PORT};" in nginx_files(unpublished)["nginx/site.conf"]


def test_each_client_key_maps_to_qdrants_own_key_for_its_access_in_both_header_forms(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    secrets = stack.contexts["qdrant"].secrets
    text = nginx_files(stack)[KEYS_CONF]
    (block,) = re.findall(
        r'map "\$http_api_key/\$http_authorization" \$kb_qdrant_key \{(.*?)\}', text, re.S
    )
    rw, ro = secrets[API_KEY], secrets[READ_ONLY_KEY]
    up_rw, up_ro = secrets[UPSTREAM_API_KEY], secrets[UPSTREAM_READ_ONLY_KEY]
    assert [line.strip() for line in block.strip().splitlines()] == [
        f'default "{REFUSED}";',
        '"/" "";',  # no key at all: sent on as none, Qdrant answers 401 itself
        f'"~^{rw}/$" "{up_rw}";',
        f'"~^/Bearer {rw}$" "{up_rw}";',
        f'"~^{ro}/$" "{up_ro}";',  # read-only clients get Qdrant's read-only key, never more
        f'"~^/Bearer {ro}$" "{up_ro}";',
    ]
    for own in (up_rw, up_ro):
        assert f"~^{own}/$" not in text and f"Bearer {own}$" not in text


def test_the_gate_listener_streams_any_body_and_sends_the_key_in_api_key_alone(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    files = nginx_files(stack)
    site = files["nginx/site.conf"]
    (server,) = [block for block in site.split("\nserver {")[1:] if f"listen {GATE_PORT};" in block]
    for line in (
        "client_max_body_size 0;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "proxy_set_header api-key $kb_qdrant_key;",
        'proxy_set_header Authorization "";',
        "return 401 'Invalid API key or JWT';",
        "default_type text/plain;",
        'set $kb_qdrant_upstream "qdrant:6333";',
    ):
        assert line in server, line
    # never on the public HTTPS site
    (https,) = [block for block in site.split("\nserver {")[1:] if "listen 443" in block]
    assert "location / {" in server and "kb_qdrant" not in https and "6333" not in https
    for path, text in files.items():
        if path != KEYS_CONF:
            for name in (API_KEY, READ_ONLY_KEY, UPSTREAM_API_KEY, UPSTREAM_READ_ONLY_KEY):
                assert stack.contexts["qdrant"].secrets[name] not in text, (path, name)


def test_during_a_rotation_nginx_accepts_both_values_and_qdrant_does_not_change(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    new_rw, new_ro = "new-qdrant-key-0123456789abcdef", "new-qdrant-read-key-0123456789"
    rotating = dataclasses.replace(stack, overlap={API_KEY: new_rw, READ_ONLY_KEY: new_ro})
    before, during = nginx_files(stack), nginx_files(rotating)
    assert during["nginx/site.conf"] == before["nginx/site.conf"]
    secrets = stack.contexts["qdrant"].secrets
    assert f'"~^{new_rw}/$" "{secrets[UPSTREAM_API_KEY]}";' in during[KEYS_CONF]
    assert f'"~^/Bearer {new_ro}$" "{secrets[UPSTREAM_READ_ONLY_KEY]}";' in during[KEYS_CONF]
    assert SERVICE.container(rotating.contexts["qdrant"]) == SERVICE.container(
        stack.contexts["qdrant"]
    )


def test_the_grpc_listener_checks_the_same_keys_and_answers_a_refusal_as_qdrant_does(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    files = nginx_files(stack)
    site = files["nginx/site.conf"]
    (server,) = [
        block for block in site.split("\nserver {")[1:] if f"listen {GRPC_GATE_PORT};" in block
    ]
    for line in (
        "http2 on;",  # h2c: HTTP/2 with no TLS, as Qdrant's own gRPC port
        "client_max_body_size 0;",
        "grpc_set_header api-key $kb_qdrant_key;",  # the one map of the keys file
        'grpc_set_header Authorization "";',
        'set $kb_qdrant_grpc_upstream "qdrant:6334";',
        "grpc_pass grpc://$kb_qdrant_grpc_upstream;",
        'if ($kb_qdrant_key = "!refused") {',
        "error_page 401 = @kb_qdrant_grpc_refused;",
        "default_type application/grpc;",
        "add_header grpc-status 16 always;",  # UNAUTHENTICATED, as Qdrant answers
        'add_header grpc-message "Invalid API key or JWT" always;',
        # Qdrant's health checks need no key: sent on with none, whatever the client sent
        r"location ~ ^(?:/qdrant\.Qdrant/HealthCheck|/grpc\.health\.v1\.Health/Check)$ {",
        'grpc_set_header api-key "";',
    ):
        assert line in server, line
    # one map for both listeners
    assert files[KEYS_CONF].count("$kb_qdrant_key {") == 1
    old = make_stack("minimum", {"services": {"nginx": {"image": "nginx:1.24.0"}}})
    assert f"listen {GRPC_GATE_PORT} http2;" in nginx_files(old)["nginx/site.conf"]


def test_the_rest_listener_sends_qdrants_open_paths_on_with_no_key(
    make_stack: Callable[..., Stack],
) -> None:
    site = nginx_files(make_stack())["nginx/site.conf"]
    (server,) = [block for block in site.split("\nserver {")[1:] if f"listen {GATE_PORT};" in block]
    opened = server[server.index("location ~ ^(?:/|/healthz|/livez|/readyz)$ {") :]
    opened = opened[: opened.index("}")]
    assert 'proxy_set_header api-key "";' in opened
    assert 'proxy_set_header Authorization "";' in opened
    assert "!refused" not in opened
