"""Stack-wide checks: secret files are private, only what is meant to be public is, and
every container is locked down (no-new-privileges, capabilities dropped, a PIDs limit).

A private module (its name starts with ``_``): no service is called that. The decisions are
pure functions of observed facts (file modes, port bindings); ``checks`` gathers the facts.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.probing.probe import CheckRow, Checks, require

if TYPE_CHECKING:
    from kbinfra.service import ContainerSpec
    from kbinfra.stack import Stack
    from kbinfra.targets import Target

STACK = "stack"


# --------------------------------------------------------------------------- file modes
def private(mode: int) -> bool:
    """Readable by its owner only: no bit for group or others (0600, 0400)."""
    return mode & 0o077 == 0


def mode_problems(expected: Iterable[str], modes: Mapping[str, int]) -> list[str]:
    """``path 0644`` for each file that others may read, ``path missing`` for absent ones."""
    problems = []
    for path in sorted(expected):
        if path not in modes:
            problems.append(f"{path} missing")
        elif not private(modes[path]):
            problems.append(f"{path} {modes[path]:04o}")
    return problems


def local_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def check_local_file(path: Path) -> str:
    mode = local_mode(path)
    require(mode is not None, f"{path} does not exist")
    assert mode is not None
    require(private(mode), f"{path} is {mode:04o}")
    return f"{mode:04o}"


def check_deployed(expected: Sequence[str], modes: Mapping[str, int], location: str) -> str:
    problems = mode_problems(expected, modes)
    require(not problems, f"{location}: {', '.join(problems)}")
    listed = ", ".join(f"{p} {modes[p]:04o}" for p in sorted(expected))
    return f"{len(expected)} files: {listed}"


# --------------------------------------------------------------------------- published ports
@dataclass(frozen=True)
class Binding:
    """One published port as the Docker Engine reports it."""

    container: str
    service: str | None
    host_ip: str
    host_port: int
    container_port: int

    def describe(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{self.container} {ip}:{self.host_port}->{self.container_port}"


def loopback(host_ip: str) -> bool:
    try:
        return ipaddress.ip_address(host_ip).is_loopback
    except ValueError:
        return False


def public_bindings(
    bindings: Iterable[Binding], allowed: set[tuple[str, int, int]]
) -> list[Binding]:
    """Bindings on a non-loopback address that the stack does not publish on purpose.

    ``allowed`` holds ``(service, host_port, container_port)`` of the ports a service's
    container spec publishes on a non-loopback address (nginx's 80 and 443). Docker reports
    an all-addresses binding as ``0.0.0.0`` and again as ``::``; both count.
    """
    return [
        b
        for b in bindings
        if not loopback(b.host_ip)
        and (b.service is None or (b.service, b.host_port, b.container_port) not in allowed)
    ]


def bindings_from(listed: Iterable[Mapping[str, Any]], service_label: str) -> list[Binding]:
    """Bindings out of the Engine's container list (``GET /containers/json``)."""
    found = []
    for container in listed:
        name = (container.get("Names") or ["?"])[0].lstrip("/")
        service = (container.get("Labels") or {}).get(service_label)
        for port in container.get("Ports") or ():
            if "PublicPort" not in port:
                continue  # exposed, not published
            found.append(
                Binding(
                    container=name,
                    service=service,
                    host_ip=str(port.get("IP") or "0.0.0.0"),
                    host_port=int(port["PublicPort"]),
                    container_port=int(port["PrivatePort"]),
                )
            )
    return found


def check_published(bindings: Sequence[Binding], allowed: set[tuple[str, int, int]]) -> str:
    exposed = public_bindings(bindings, allowed)
    require(not exposed, "published beyond loopback: " + ", ".join(b.describe() for b in exposed))
    public = sorted({b.describe() for b in bindings if not loopback(b.host_ip)})
    loop = sum(1 for b in bindings if loopback(b.host_ip))
    return f"{loop} ports on loopback" + (
        f"; public on purpose: {', '.join(public)}" if public else ""
    )


def allowed_public(stack: Stack) -> set[tuple[str, int, int]]:
    """The non-loopback ports the stack's container specs publish (nginx's)."""
    allowed = set()
    for name, spec in stack.containers.items():
        for port in spec.ports:
            if not loopback(port.host_ip):
                allowed.add((name, port.host_port, port.container_port))
    return allowed


def observed_bindings(stack: Stack, target: Target) -> list[Binding]:
    from kbinfra.names import LABEL_SERVICE, LABEL_STACK  # noqa: PLC0415

    listed = target.docker_client().api.containers(
        filters={"label": f"{LABEL_STACK}={stack.spec.name}"}
    )
    return bindings_from(listed, LABEL_SERVICE)


# --------------------------------------------------------------------------- hardening
@dataclass(frozen=True)
class AllowedHardening:
    """What a service's folder says its container may keep (``ContainerSpec``): the
    capabilities its entrypoint adds back, and the named exceptions to a read-only root and
    to a non-root user. A container the stack does not declare gets none of them."""

    caps: Sequence[str] = ()
    writable_root: bool = False
    root_user: bool = False

    @classmethod
    def of(cls, spec: ContainerSpec) -> AllowedHardening:
        return cls(
            caps=tuple(spec.cap_add),
            writable_root=bool(spec.writable_root_reason),
            root_user=bool(spec.root_user_reason),
        )


def runs_as_root(user: str) -> bool:
    """Whether a container's ``Config.User`` (the image's USER unless overridden) is root."""
    name = user.split(":", 1)[0].strip()
    return name in ("", "0", "root")


def hardening_problems(
    container: str,
    host_config: Mapping[str, Any],
    allowed: AllowedHardening,
    user: str = "",
) -> list[str]:
    """What one container lacks of kbinfra's lock-down, as ``container: problem``.

    ``host_config`` is ``HostConfig`` of ``docker inspect`` and ``user`` its ``Config.User``;
    ``allowed`` what its service declares (nothing for a container the stack does not).
    """
    problems = []
    if not any(
        option.replace("=", ":") in ("no-new-privileges:true", "no-new-privileges")
        for option in host_config.get("SecurityOpt") or ()
    ):
        problems.append("no no-new-privileges")
    dropped = {str(cap).upper().removeprefix("CAP_") for cap in host_config.get("CapDrop") or ()}
    if "ALL" not in dropped:
        problems.append("capabilities not dropped (cap_drop ALL)")
    permitted = {cap.upper() for cap in allowed.caps}
    added = {str(cap).upper().removeprefix("CAP_") for cap in host_config.get("CapAdd") or ()}
    if added - permitted:
        problems.append(f"adds {', '.join(sorted(added - permitted))}")
    if not (host_config.get("PidsLimit") or 0) > 0:
        problems.append("no PIDs limit")
    if host_config.get("Privileged"):
        problems.append("privileged")
    if not host_config.get("ReadonlyRootfs") and not allowed.writable_root:
        problems.append("root file system writable (read_only)")
    if runs_as_root(user) and not allowed.root_user:
        problems.append("runs as root")
    return [f"{container}: {problem}" for problem in problems]


def check_hardened(
    inspected: Sequence[Mapping[str, Any]], allowed: Mapping[str, AllowedHardening]
) -> str:
    """Every container of the stack (``docker inspect`` output) is locked down."""
    from kbinfra.names import LABEL_SERVICE  # noqa: PLC0415

    problems = []
    for info in inspected:
        name = str(info.get("Name", "?")).lstrip("/")
        config = info.get("Config") or {}
        service = str((config.get("Labels") or {}).get(LABEL_SERVICE, ""))
        problems += hardening_problems(
            name,
            info.get("HostConfig") or {},
            allowed.get(service, AllowedHardening()),
            str(config.get("User") or ""),
        )
    require(not problems, "; ".join(problems))
    return f"{len(inspected)} containers locked down"


def inspected_containers(stack: Stack, target: Target) -> list[dict[str, Any]]:
    from kbinfra.names import LABEL_STACK  # noqa: PLC0415

    api = target.docker_client().api
    listed = api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack.spec.name}"})
    return [api.inspect_container(container["Id"]) for container in listed]


# --------------------------------------------------------------------------- the checks
def secret_paths(stack: Stack) -> list[str]:
    """Deployed files that hold a secret: every rendered file marked secret."""
    return sorted(f.path for f in stack.rendered if f.secret)


def local_file_checks(stack: Stack) -> list[CheckRow]:
    """The stack folder's own secret files (here, on this machine) are private."""
    from kbinfra.secrets import secrets_path  # noqa: PLC0415

    rows = Checks(STACK)
    local_secrets = secrets_path(stack.dir)
    rows.run(
        "secrets-file-private",
        "locked-down",
        lambda: check_local_file(local_secrets),
        fix=f"chmod 600 {local_secrets}",
    )
    tls_key = stack.dir / stack.spec.tls.key
    rows.run(
        "tls-key-private",
        "locked-down",
        lambda: check_local_file(tls_key),
        fix=f"chmod 600 {tls_key}",
    )
    return rows.rows


def secret_age_checks(stack: Stack) -> list[CheckRow]:
    """Secrets younger than ``secrets.max_age_days``, when the stack file sets it."""
    rows = Checks(STACK)
    limit = stack.spec.secrets.max_age_days
    if limit is not None:
        rows.run(
            "secrets-within-max-age",
            "locked-down",
            lambda: check_secret_ages(stack, limit),
            fix="run `kbinfra secrets rotate --all` (docs/operations.md, Secrets rotation; "
            "what it cannot rotate yet, it names), or raise secrets.max_age_days",
        )
    return rows.rows


def checks(stack: Stack, target: Target) -> list[CheckRow]:
    """One engine's stack-wide checks (a Swarm has its own: ``kbinfra.swarm.stack_checks``)."""
    rows = Checks(STACK)

    def deployed() -> str:
        store = target.file_store(stack.spec.name)
        expected = secret_paths(stack)
        return check_deployed(expected, store.modes(expected), store.location)

    rows.run(
        "deployed-secret-files-private",
        "locked-down",
        deployed,
        fix="run `kbinfra apply` (it writes secret files 0600); if they exist, chmod 600 them",
    )
    rows.run(
        "internal-ports-on-loopback",
        "locked-down",
        lambda: check_published(observed_bindings(stack, target), allowed_public(stack)),
        fix=(
            "remove the container publishing it (docker rm -f NAME) or bind it to 127.0.0.1; "
            "Docker's published ports bypass ufw"
        ),
    )
    allowed = {name: AllowedHardening.of(spec) for name, spec in stack.containers.items()}
    rows.run(
        "containers-hardened",
        "locked-down",
        lambda: check_hardened(inspected_containers(stack, target), allowed),
        fix="run `kbinfra apply` (it recreates kbinfra's containers locked down); remove any "
        "other container of the stack",
    )
    return local_file_checks(stack) + rows.rows + secret_age_checks(stack)


def check_secret_ages(stack: Stack, limit: int, now: datetime | None = None) -> str:
    """Fails naming every secret older than ``limit`` days at ``now`` (default: the clock)."""
    from kbinfra.secret_report import secret_report  # noqa: PLC0415

    report = secret_report(stack, now or datetime.now(UTC))
    old = [f"{entry.name} ({entry.age_text()})" for entry in report if entry.too_old]
    require(not old, f"older than {limit} d: {', '.join(old)}")
    oldest = max((e.age_days for e in report if e.age_days is not None), default=0.0)
    return f"oldest {oldest:.0f} d of {limit} d"
