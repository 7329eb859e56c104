"""nginx's key gates (:class:`kbinfra.service.KeyGate`), pure: the 0600 keys file and what the
site configuration says of each gate (never a key).

For each gated service the keys file holds one ``map`` of the header clients send to the key
nginx sends on:

- a key nginx accepts → the service's own key (its ``upstream_key``);
- no key → none (nginx sends no header, and the service answers as it would without one);
- any other key → ``REFUSED``, which the locations answer with 401.

Accepted keys are matched by anchored, case-sensitive regular expressions: nginx compares a
map's plain strings case-insensitively (it lowercases them), which a key must not be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from kbinfra.errors import SpecError
from kbinfra.service import KeyGate

#: The map value of a key nginx does not accept: no key is it (keys are URL-safe tokens).
REFUSED = "!refused"
#: What nginx answers a refused key with: the Unstructured API's own 401 body.
REFUSED_BODY = '{"detail":"API key is invalid"}'
#: Only these characters in a key or a header: nothing a quoted nginx string or a regular
#: expression reads as anything but itself, so a key is written as it is.
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_HEADER = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


class GatedRoute(NamedTuple):
    """What the site configuration says of one gate: names and ports, no key."""

    service: str
    #: The nginx variable holding the key to send on (or ``REFUSED``).
    variable: str
    header: str
    port: int


def variable_of(service: str) -> str:
    return "kb_" + re.sub(r"[^a-z0-9]", "_", service) + "_key"


def header_variable(header: str) -> str:
    """``unstructured-api-key`` → ``$http_unstructured_api_key``, as nginx names it."""
    return "$http_" + header.replace("-", "_")


def gated_route(service: str, gate: KeyGate) -> GatedRoute:
    if _HEADER.match(gate.header) is None:
        raise ValueError(f"key gate of {service}: header {gate.header!r} is not a header name")
    return GatedRoute(service, variable_of(service), gate.header, gate.port)


def keys_conf(gates: Sequence[tuple[str, KeyGate]]) -> str:
    """The keys file (secret): one map per gated service."""
    lines = [
        "# Key gates rendered by kbinfra: the keys clients may send and the key nginx sends on.",
        "# This file holds secrets: 0600, never shown in a plan or a diff.",
    ]
    for service, gate in gates:
        route = gated_route(service, gate)
        for key in (*gate.accepted, gate.upstream_key):
            if _KEY.match(key) is None:
                # it goes into nginx's configuration: anything else could change it
                names = " and ".join(gate.secrets) or f"{service}'s keys"
                raise SpecError(
                    f"{names}: nginx checks these keys of {service}, and one is not a "
                    "URL-safe token of 16 to 256 letters, digits, - and _",
                    where="secrets.yaml",
                    fix="delete its line and run `kbinfra init` to generate it",
                )
        lines += [
            "",
            f"map {header_variable(gate.header)} ${route.variable} {{",
            f'    default "{REFUSED}";',
            '    "" "";',
            *(f'    "~^{key}$" "{gate.upstream_key}";' for key in gate.accepted),
            "}",
        ]
    return "\n".join(lines) + "\n"
