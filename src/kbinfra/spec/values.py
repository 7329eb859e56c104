"""The strings a user writes that end up inside configuration: checked here, once, by type.

A value that passes one of these checks cannot leave the context a template puts it in:
none of them accepts whitespace, quotes, ``;``, ``{``, ``}`` or ``#``. Every check raises
``ValueError`` with a message that says what is wrong and what is expected (pydantic turns
it into the one-line file:line error), and is cheap: the one regular expression is compiled
on first use, not at import, so ``kbinfra --help`` does not pay for it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, Field

from kbinfra.host_port import HostPort

#: Ports everywhere (published ports, target URLs, upstreams, ``ssh trust``).
MIN_PORT, MAX_PORT = 1, 65535
DEFAULT_SSH_PORT = 22
#: RFC 1123: labels of at most 63 letters, digits and hyphens, at most 253 characters in all.
_MAX_HOSTNAME = 253
_MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
#: nginx's catch-all ``server_name``: answer whatever name the client asked for.
ANY_DOMAIN = "_"
_SSH_SCHEME = "ssh://"
_USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_MAX_USER = 32
#: Docker refuses longer names; the bound also keeps the regular expression's work small.
_MAX_IMAGE_REFERENCE = 512
_BRACKETS_HINT = "write an IPv6 address in brackets, like [2001:db8::1]:22"


def is_hostname(value: str) -> bool:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    if not value or len(value) > _MAX_HOSTNAME:
        return False
    labels = value.split(".")
    for label in labels:
        if not label or len(label) > _MAX_LABEL or not _LABEL_CHARS.issuperset(label):
            return False
        if label.startswith("-") or label.endswith("-"):
            return False
    # All-numeric labels read as an IPv4 address: it must then be one.
    return not all(label.isdigit() for label in labels) or is_ipv4(value)


def is_ipv4(value: str) -> bool:
    import ipaddress  # noqa: PLC0415 (only needed when an address is checked)

    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def is_ipv6(value: str) -> bool:
    import ipaddress  # noqa: PLC0415

    if "%" in value:  # a zone index names a local interface: not an address to configure
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def parse_port(text: str) -> int:
    """``"22"`` → 22; only ASCII digits, 1 to 65535."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"port {text!r} is not a number from {MIN_PORT} to {MAX_PORT}")
    port = int(text)
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(f"port {port} is out of range: use {MIN_PORT} to {MAX_PORT}")
    return port


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port``.

    A bare IPv6 address is refused: in ``2001:db8::1:22`` nobody can tell where the port is.
    Without ``default_port`` the port is required.
    """
    port_text: str | None
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not is_ipv6(host):
            raise ValueError(f"{text!r} does not start with a bracketed IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} has {rest!r} after the address; expected :port")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r} is ambiguous: {_BRACKETS_HINT}")
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        if not (is_hostname(host) or is_ipv4(host)):
            raise ValueError(f"{host!r} is not a host name or IP address")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port: write it as host:port")
        return HostPort(host, default_port)
    return HostPort(host, parse_port(port_text))


class SshTarget(NamedTuple):
    user: str
    host: str
    port: int


def parse_ssh_target(text: str) -> SshTarget:
    """``ssh://user@host[:port]`` (IPv6 in brackets) → its parts; anything else is refused."""
    usage = "use local or ssh://user@host[:port]"
    if not text.startswith(_SSH_SCHEME):
        raise ValueError(f"{text!r} is not a target: {usage}")
    user, at, address = text.removeprefix(_SSH_SCHEME).partition("@")
    if not at or not user:
        raise ValueError(f"{text!r} names no user: {usage}")
    valid_user = (
        len(user) <= _MAX_USER
        and _USER_CHARS.issuperset(user)
        and not user[0].isdigit()
        and user[0] not in ".-"
    )
    if not valid_user:
        raise ValueError(f"{user!r} in {text!r} is not a user name (letters, digits, _ . -)")
    try:
        host, port = parse_host_port(address, default_port=DEFAULT_SSH_PORT)
    except ValueError as error:
        raise ValueError(f"{error} (in target {text!r}: {usage})") from None
    return SshTarget(user, host, port)


#: The targets that are not an ``ssh://`` address: this machine's engine, or the Swarm the
#: stack file's ``swarm:`` section describes.
LOCAL_TARGET = "local"
SWARM_TARGET = "swarm"


def check_target(value: str) -> str:
    if value not in (LOCAL_TARGET, SWARM_TARGET):
        parse_ssh_target(value)
    return value


def check_domain(value: str) -> str:
    if value != ANY_DOMAIN and not is_hostname(value):
        raise ValueError(
            f"{value!r} is not a host name: use letters, digits, - and . (like kb.example.com), "
            f"or {ANY_DOMAIN} to answer any name"
        )
    return value


def check_upstream(value: str) -> str:
    parse_host_port(value)
    return value


@cache
def _image_reference_pattern() -> re.Pattern[str]:
    """distribution/reference's grammar, with the digest pinned to sha256 as Docker writes it."""
    alphanumeric = r"[a-z0-9]+"
    separator = r"(?:[._]|__|-+)"
    path_component = rf"{alphanumeric}(?:{separator}{alphanumeric})*"
    domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    host = rf"(?:{domain_component}(?:\.{domain_component})*|\[[0-9a-fA-F:]+\])"
    domain = rf"{host}(?::(?P<registry_port>[0-9]+))?"
    name = rf"(?:{domain}/)?{path_component}(?:/{path_component})*"
    tag = r"[\w][\w.-]{0,127}"
    digest = r"sha256:[0-9a-f]{64}"
    return re.compile(rf"(?P<name>{name})(?::{tag})?(?:@{digest})?", re.ASCII)


def check_image_reference(value: str) -> str:
    usage = "write it like registry.example.com:5000/team/name:tag or name@sha256:<64 hex>"
    match = None
    if len(value) <= _MAX_IMAGE_REFERENCE:
        match = _image_reference_pattern().fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not an image reference: {usage}")
    if match["registry_port"] is not None and "/" in match["name"]:
        parse_port(match["registry_port"])
    return value


_VOLUME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_MAX_VOLUME_NAME = 255


def check_volume_name(value: str) -> str:
    """Docker's rule for a named volume: ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``; never a path."""
    valid = (
        2 <= len(value) <= _MAX_VOLUME_NAME
        and _VOLUME_CHARS.issuperset(value)
        and value[0].isalnum()
    )
    if not valid:
        raise ValueError(
            f"{value!r} is not a Docker volume name: letters, digits, _ . -, starting with "
            "a letter or digit (a path would be a bind mount, which kbinfra never backs up)"
        )
    return value


_MAX_TEXT = 1024
_MAX_PROFILE_NAME = 64


def check_text_line(value: str) -> str:
    """Free text (a path, a description): one line of printable characters, bounded.

    Nothing kbinfra writes or prints can be split or steered by it: no newline, no escape
    sequence for the terminal, no NUL for a path.
    """
    if len(value) > _MAX_TEXT:
        raise ValueError(f"at most {_MAX_TEXT} characters")
    bad = next((char for char in value if not char.isprintable()), None)
    if bad is not None:
        raise ValueError(
            f"holds the control character U+{ord(bad):04X}: one line of printable text only"
        )
    return value


def check_profile_name(value: str) -> str:
    """A profile's name (by default its file's name): shown in tables, JSON and messages."""
    if not value or len(value) > _MAX_PROFILE_NAME:
        raise ValueError(f"a profile name has 1 to {_MAX_PROFILE_NAME} characters")
    return check_text_line(value)


Port = Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT)]
Domain = Annotated[str, AfterValidator(check_domain)]
Upstream = Annotated[str, AfterValidator(check_upstream)]
Target = Annotated[str, AfterValidator(check_target)]
ImageReference = Annotated[str, AfterValidator(check_image_reference)]
VolumeName = Annotated[str, AfterValidator(check_volume_name)]
TextLine = Annotated[str, AfterValidator(check_text_line)]
ProfileName = Annotated[str, AfterValidator(check_profile_name)]
