"""nginx as the Unstructured API's key gate: the keys file, the site, the container.

The gate's behaviour with a real nginx in front of the real API image (200 for a client key,
401 for every other, a rotation with no failed request) is proven in
``tests/integration/test_key_gate.py``; here: what is rendered, and what never is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest

from kbinfra.errors import SpecError
from kbinfra.render import render_service
from kbinfra.service import KeyGate, KeyGrant
from kbinfra.services.nginx.key_gates import REFUSED, keys_conf
from kbinfra.services.nginx.service import KEYS_CONF, KEYS_TARGET, SERVICE
from kbinfra.services.unstructured.service import CLIENT_SECRET, GATE_PORT, UPSTREAM_SECRET
from kbinfra.stack import Stack
from tests.conftest import only_services

CLIENT = "client-key-0123456789abcdef"
OTHER = "other-client-key-0123456789"
UPSTREAM = "upstream_key_0123456789ABCDEF"
GATE = KeyGate(
    header="unstructured-api-key",
    grants=(KeyGrant((CLIENT, OTHER), UPSTREAM),),
    port=GATE_PORT,
    secrets=(CLIENT_SECRET, UPSTREAM_SECRET),
)


def files_of(stack: Stack) -> dict[str, tuple[str, int, bool]]:
    return {
        f.path: (f.text, f.mode, f.secret) for f in render_service(SERVICE, stack.contexts["nginx"])
    }


def test_each_accepted_key_maps_to_the_upstream_key_by_an_anchored_case_sensitive_match() -> None:
    text = keys_conf([("unstructured", GATE)])
    (block,) = re.findall(
        r"map \$http_unstructured_api_key \$kb_unstructured_key \{(.*?)\}", text, re.S
    )
    lines = [line.strip() for line in block.strip().splitlines()]
    assert lines == [
        f'default "{REFUSED}";',
        '"" "";',  # no key: sent on as none, the API answers it as it would
        f'"~^{CLIENT}$" "{UPSTREAM}";',
        f'"~^{OTHER}$" "{UPSTREAM}";',
    ]
    # nginx's plain map strings match case-insensitively: a key is only ever a regex (~, not ~*)
    assert "~*" not in text
    # the upstream key is never itself accepted
    assert f'"~^{UPSTREAM}$"' not in text


@pytest.mark.parametrize(
    "bad",
    [
        'key" "x"; } server { listen 9;',  # would rewrite nginx's configuration
        "key.with.dots0123456",  # a regex would read "." as any character
        "short",
        "x" * 257,
    ],
)
def test_a_key_that_is_not_a_url_safe_token_is_refused_naming_the_secrets_not_the_value(
    bad: str,
) -> None:
    for gate in (
        GATE._replace(grants=(KeyGrant((bad,), UPSTREAM),)),
        GATE._replace(grants=(KeyGrant((CLIENT,), bad),)),
    ):
        with pytest.raises(SpecError) as raised:
            keys_conf([("unstructured", gate)])
        message = str(raised.value)
        assert "unstructured_api_key and unstructured_upstream_key" in message
        assert "kbinfra init" in message
        assert bad not in message


def test_the_full_stack_renders_the_gate_with_its_keys_only_in_the_0600_keys_file(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    secrets = stack.contexts["nginx"].secrets
    files = files_of(stack)
    text, mode, secret = files[KEYS_CONF]
    assert (mode, secret) == (0o600, True)
    assert secrets[CLIENT_SECRET] in text and secrets[UPSTREAM_SECRET] in text
    site = files["nginx/site.conf"][0]
    assert f"include {KEYS_TARGET};" in site
    assert f"listen {GATE_PORT};" in site
    assert "proxy_set_header unstructured-api-key $kb_unstructured_key;" in site
    for path, (other, _, _) in files.items():
        if path != KEYS_CONF:
            assert secrets[CLIENT_SECRET] not in other, path
            assert secrets[UPSTREAM_SECRET] not in other, path


def test_nginx_publishes_the_apis_host_port_on_loopback_and_reloads_the_keys_in_place(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    spec = SERVICE.container(stack.contexts["nginx"])
    port = stack.contexts["unstructured"].settings.port
    assert ("127.0.0.1", port, GATE_PORT) in [
        (p.host_ip, p.host_port, p.container_port) for p in spec.ports
    ]
    assert (KEYS_CONF, KEYS_TARGET) in [(m.source, m.target) for m in spec.files]
    assert spec.reload is not None and KEYS_CONF in spec.reload.files
    # the keys are files, never environment
    assert not spec.secret_env and CLIENT_SECRET not in str(spec.env)


def test_during_a_rotation_the_keys_file_accepts_both_client_keys_and_the_site_is_unchanged(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    secrets = stack.contexts["nginx"].secrets
    new = "new-client-key-0123456789abcdef"
    rotating = dataclasses.replace(stack, overlap={CLIENT_SECRET: new})
    before, during = files_of(stack), files_of(rotating)
    assert during["nginx/site.conf"] == before["nginx/site.conf"]
    assert f'"~^{new}$" "{secrets[UPSTREAM_SECRET]}";' in during[KEYS_CONF][0]
    assert f'"~^{secrets[CLIENT_SECRET]}$"' in during[KEYS_CONF][0]
    # the API's own container does not change: it is never restarted by a rotation
    api = stack.services["unstructured"]
    assert api.container(rotating.contexts["unstructured"]) == api.container(
        stack.contexts["unstructured"]
    )


def test_without_unstructured_there_is_no_gate(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("minimum", only_services("nginx", "embeddings"))
    files = files_of(stack)
    assert KEYS_CONF not in files
    assert KEYS_TARGET not in files["nginx/site.conf"][0]
    assert "listen 8002" not in files["nginx/site.conf"][0]
    spec = SERVICE.container(stack.contexts["nginx"])
    assert [p.container_port for p in spec.ports] == [80, 443]
    assert spec.reload is not None and KEYS_CONF not in spec.reload.files
