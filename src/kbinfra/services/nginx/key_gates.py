"""nginx's key gates (:class:`kbinfra.service.KeyGate`), pure: the 0600 keys file and what the
site configuration says of each gate (never a key).

For each gated service the keys file holds one ``map`` of the header clients send to the key
nginx sends on:

- a key nginx accepts → the service's own key for the same access (its grant's
  ``upstream_key``: Qdrant's read-only clients get Qdrant's read-only key);
- no key → none (nginx sends no header, and the service answers as it would without one);
- any other key → ``REFUSED``, which the locations answer with 401.

Accepted keys are matched by anchored, case-sensitive regular expressions: nginx compares a
map's plain strings case-insensitively (it lowercases them), which a key must not be.

A gate that also takes ``Authorization: Bearer KEY`` (Qdrant) maps both headers at once,
joined by ``/`` (never in a key): ``KEY/`` (the key in its header, no Authorization) and
``/Bearer KEY`` (Authorization alone) are accepted; both at once, or anything else, refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from kbinfra.errors import SpecError
from kbinfra.service import GrpcGate, KeyGate, KeyGrant

#: The map value of a key nginx does not accept: no key is it (keys are URL-safe tokens).
REFUSED = "!refused"
#: What nginx answers a refused key with, unless the service gives its own (``refusal``):
#: the Unstructured API's 401 body.
REFUSED_TYPE = "application/json"
REFUSED_BODY = '{"detail":"API key is invalid"}'
#: Only these characters in a key or a header: nothing a quoted nginx string or a regular
#: expression reads as anything but itself, so a key is written as it is.
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_HEADER = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
#: An open path or gRPC method: written into an exact-match location as it is.
_PATH = re.compile(r"^/[A-Za-z0-9._/-]{0,255}$")
#: A grpc-message nginx sends as it is: printable ASCII but the quotes, backslash and %
#: (gRPC percent-encodes anything else).
_GRPC_MESSAGE = re.compile(r"^[ !#$&(-\[\]-~]{1,200}$")


class GatedRoute(NamedTuple):
    """What the site configuration says of one gate: names and ports, no key."""

    service: str
    #: The nginx variable holding the key to send on (or ``REFUSED``).
    variable: str
    header: str
    port: int
    #: Authorization is read too, and never sent on.
    bearer: bool
    #: Bodies of any size, not buffered.
    streamed: bool
    #: What a refused key is answered with (content type, body).
    refused_type: str
    refused_body: str
    #: A regular expression of the paths sent on with no key, unchecked; "" for none.
    open_paths: str
    #: The gate's gRPC listener, or None.
    grpc: GrpcGate | None
    #: A regular expression of the gRPC methods sent on with no key; "" for none.
    open_methods: str


def variable_of(service: str) -> str:
    return "kb_" + re.sub(r"[^a-z0-9]", "_", service) + "_key"


def header_variable(header: str) -> str:
    """``unstructured-api-key`` → ``$http_unstructured_api_key``, as nginx names it."""
    return "$http_" + header.replace("-", "_")


def gated_route(service: str, gate: KeyGate) -> GatedRoute:
    if _HEADER.match(gate.header) is None:
        raise ValueError(f"key gate of {service}: header {gate.header!r} is not a header name")
    refused_type, refused_body = gate.refusal or (REFUSED_TYPE, REFUSED_BODY)
    if "'" in refused_body or "\\" in refused_body or re.search(r"\s", refused_type):
        raise ValueError(f"key gate of {service}: its refusal does not fit nginx's quotes")
    grpc = gate.grpc
    paths = (*gate.open_paths, *(grpc.open_methods if grpc else ()))
    if any(_PATH.match(path) is None for path in paths):
        raise ValueError(f"key gate of {service}: an open path is not a plain path")
    if grpc is not None and _GRPC_MESSAGE.match(grpc.refusal) is None:
        raise ValueError(f"key gate of {service}: its gRPC refusal is not a plain message")
    return GatedRoute(
        service,
        variable_of(service),
        gate.header,
        gate.port,
        gate.bearer,
        gate.streamed,
        refused_type,
        refused_body,
        any_of(gate.open_paths),
        grpc,
        any_of(grpc.open_methods if grpc else ()),
    )


def any_of(paths: Sequence[str]) -> str:
    """An anchored regular expression matching exactly these paths, or "" for none."""
    if not paths:
        return ""
    return "^(?:" + "|".join(re.escape(path) for path in paths) + ")$"


def map_source(gate: KeyGate) -> str:
    """What a gate's map reads: the key's header, and Authorization too for a Bearer gate."""
    if gate.bearer:
        return f'"{header_variable(gate.header)}/$http_authorization"'
    return header_variable(gate.header)


def map_entries(gate: KeyGate) -> list[str]:
    """The map's lines: no key sends none, each accepted key its grant's own key."""
    none = '"/"' if gate.bearer else '""'
    lines = [f'    default "{REFUSED}";', f'    {none} "";']
    for grant in gate.grants:
        for key in grant.accepted:
            lines.append(f'    "~^{key}{"/" if gate.bearer else ""}$" "{grant.upstream_key}";')
            if gate.bearer:
                lines.append(f'    "~^/Bearer {key}$" "{grant.upstream_key}";')
    return lines


def check_keys(service: str, gate: KeyGate) -> None:
    """Every key is a URL-safe token, and no key is accepted for two grants or is also a key
    nginx sends on: it goes into nginx's configuration, where anything else could change it."""
    names = " and ".join(gate.secrets) or f"{service}'s keys"
    if any(_KEY.match(key) is None for key in _keys(gate.grants)):
        raise SpecError(
            f"{names}: nginx checks these keys of {service}, and one is not a "
            "URL-safe token of 16 to 256 letters, digits, - and _",
            where="secrets.yaml",
            fix="delete its line and run `kbinfra init` to generate it",
        )
    accepted = [key for grant in gate.grants for key in set(grant.accepted)]
    sent = {grant.upstream_key for grant in gate.grants}
    if len(set(accepted)) != len(accepted) or sent & set(accepted):
        raise SpecError(
            f"{names}: two of these keys of {service} have the same value, so nginx could "
            "not tell which access a client asks for",
            where="secrets.yaml",
            fix="delete one of their lines and run `kbinfra init` to generate it",
        )


def _keys(grants: Sequence[KeyGrant]) -> list[str]:
    return [key for grant in grants for key in (*grant.accepted, grant.upstream_key)]


def keys_conf(gates: Sequence[tuple[str, KeyGate]]) -> str:
    """The keys file (secret): one map per gated service."""
    lines = [
        "# Key gates rendered by kbinfra: the keys clients may send and the key nginx sends on.",
        "# This file holds secrets: 0600, never shown in a plan or a diff.",
    ]
    for service, gate in gates:
        route = gated_route(service, gate)
        check_keys(service, gate)
        lines += ["", f"map {map_source(gate)} ${route.variable} {{", *map_entries(gate), "}"]
    return "\n".join(lines) + "\n"
