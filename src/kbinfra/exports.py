"""Stack-wide files: a docker compose export, a systemd unit, and a firewall script."""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import TYPE_CHECKING, Any

from kbinfra.containers import DROPPED_CAPABILITIES, SECURITY_OPTIONS, claim_command
from kbinfra.names import container_name, network_name
from kbinfra.service import ContainerSpec, FileMount, RenderedFile
from kbinfra.spec.values import parse_ssh_target
from kbinfra.spec.yamlfile import dump_yaml
from kbinfra.templating import environment

if TYPE_CHECKING:
    from kbinfra.stack import Stack

COMPOSE_FILE = "docker-compose.yml"
COMPOSE_ENV = ".env"
#: Where a one-shot ``<service>-files`` container sees the rendered files and writes them.
STAGING_DIR = "/kbinfra-staging"
OWNED_DIR = "/kbinfra-owned"
#: What that container needs: read the user's 0600 files (DAC_OVERRIDE), then chown them.
FILES_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER")


def env_var_for(secret: str) -> str:
    return f"KBINFRA_{secret.upper()}"


def ssh_port(stack: Stack) -> int:
    """The port the target's sshd listens on: the ssh:// target's, else the default 22."""
    parts = stack.spec.ssh_parts()
    return parts[2] if parts is not None else 22


def swarm_firewall_variables(stack: Stack) -> dict[str, list[Any]]:
    """A Swarm stack's nodes, for firewall.sh: each node's address (what it advertises to the
    others, so the Swarm ports are opened to those alone) and every node's SSH port (the
    script is the same on every node). Empty lists for one host."""
    swarm = stack.spec.swarm
    if swarm is None:
        return {"swarm_peers": [], "swarm_ssh_ports": []}
    addresses = [parse_ssh_target(node.address) for node in swarm.nodes]
    return {
        "swarm_peers": sorted({address.host for address in addresses}),
        "swarm_ssh_ports": sorted({address.port for address in addresses} - {ssh_port(stack)}),
    }


def owned_folders(spec: ContainerSpec) -> dict[str, list[FileMount]]:
    """The files a service must own (``uid``/``gid`` not root), by the folder they go to.

    A bind mount keeps the host's owner, so compose cannot give a 0600 file to the uid the
    service runs as: these folders are filled by a one-shot ``<service>-files`` container
    instead. Such a folder must hold nothing else kbinfra mounts (it becomes a volume).
    """
    folders: dict[str, list[FileMount]] = {}
    for mount in spec.files:
        if (mount.uid, mount.gid) != (0, 0):
            folders.setdefault(posixpath.dirname(mount.target), []).append(mount)
    for mount in spec.files:
        folder = posixpath.dirname(mount.target)
        if folder in folders and mount not in folders[folder]:
            raise ValueError(
                f"{spec.service}: {mount.target} shares {folder} with files it must own; "
                "give the owned files a folder of their own"
            )
    return folders


def files_service(
    stack: Stack, spec: ContainerSpec, folders: dict[str, list[FileMount]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The one-shot container that copies a service's owned files into volumes, chowned and
    0600, and hands its data volumes to its user (``data_owner``); and the files' volumes, by
    the folder the service mounts each at."""
    mounts: list[str] = []
    steps: list[str] = []
    volume_at: dict[str, str] = {}
    for index, (folder, owned) in enumerate(sorted(folders.items())):
        volume = f"{stack.spec.name}-{spec.service}-files{index}"
        volume_at[folder] = volume
        mounts.append(f"{volume}:{OWNED_DIR}/{index}")
        for number, mount in enumerate(owned):
            staged = f"{STAGING_DIR}/{index}-{number}"
            target = f"{OWNED_DIR}/{index}/{posixpath.basename(mount.target)}"
            mounts.append(f"./{mount.source}:{staged}:ro")
            steps += [
                f"cp {shlex.quote(staged)} {shlex.quote(target)}",
                f"chown {mount.uid}:{mount.gid} {shlex.quote(target)}",
                f"chmod 0600 {shlex.quote(target)}",
            ]
    if spec.data_owner is not None and spec.volumes:
        # A kept data volume may belong to root: give it to the user the service starts as,
        # as ``apply`` does (``Engine.claim_volumes``).
        mounts += [f"{v.volume}:{v.target}" for v in spec.volumes]
        steps.append(shlex.join(claim_command(spec.data_owner, [v.target for v in spec.volumes])))
    entry = {
        "image": spec.image,
        "user": "0:0",
        "entrypoint": ["/bin/sh", "-c"],
        "command": [" && ".join(steps).replace("$", "$$")],
        "network_mode": "none",
        "restart": "no",
        "read_only": True,
        "volumes": mounts,
        "cap_drop": list(DROPPED_CAPABILITIES),
        "cap_add": list(FILES_CAPS),
        "security_opt": list(SECURITY_OPTIONS),
        "pids_limit": 32,
        "labels": {"kbinfra.stack": stack.spec.name, "kbinfra.service": f"{spec.service}-files"},
    }
    return entry, volume_at


def compose_hardening(spec: ContainerSpec) -> dict[str, Any]:
    """A service's lock-down as compose keys: what ``apply`` gives its container."""
    entry: dict[str, Any] = {"cap_drop": list(DROPPED_CAPABILITIES)}
    if spec.cap_add:
        entry["cap_add"] = list(spec.cap_add)
    entry["security_opt"] = list(SECURITY_OPTIONS)
    if spec.pids_limit is not None:
        entry["pids_limit"] = spec.pids_limit
    if not spec.writable_root_reason:
        entry["read_only"] = True
    if spec.tmpfs:
        entry["tmpfs"] = [f"{t.target}:{t.docker_options()}" for t in spec.tmpfs]
    return entry


def compose_document(stack: Stack) -> dict[str, Any]:
    """The stack as a compose file; secrets come from ``.env`` by ``${VAR:?}`` interpolation
    (compose refuses to start without them). Written to the compose specification without
    its top-level ``name:``, which compose v1 refuses: the project name is in ``.env``."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for name, spec in stack.containers.items():
        folders = owned_folders(spec)
        volume_at: dict[str, str] = {}
        if folders or spec.data_owner:
            services[f"{name}-files"], volume_at = files_service(stack, spec, folders)
            volumes.update({v: {"name": v} for v in volume_at.values()})
        entry: dict[str, Any] = {
            "image": spec.image,
            "container_name": container_name(stack.spec.name, name),
            "hostname": name,
            "restart": "no" if spec.run_once else "unless-stopped",
            "networks": {"kbinfra": {"aliases": [name]}},
            "cpus": spec.cpus,
            "mem_limit": f"{spec.memory_mb}m",
            "stop_grace_period": f"{spec.stop_timeout_s}s",
            "labels": {"kbinfra.stack": stack.spec.name, "kbinfra.service": name},
        }
        if spec.entrypoint is not None:
            entry["entrypoint"] = spec.entrypoint
        if spec.command is not None:
            entry["command"] = [part.replace("$", "$$") for part in spec.command]
        if spec.user is not None:
            entry["user"] = spec.user
        environment = {key: value.replace("$", "$$") for key, value in spec.env.items()}
        environment.update(
            {k: f"${{{env_var_for(s)}:?run kbinfra render}}" for k, s in spec.secret_env.items()}
        )
        if environment:
            entry["environment"] = dict(sorted(environment.items()))
        if spec.ports:
            entry["ports"] = [f"{p.host_ip}:{p.host_port}:{p.container_port}" for p in spec.ports]
        mounts = [f"{v.volume}:{v.target}" for v in spec.volumes]
        mounts += [f"{b.source}:{b.target}" + (":ro" if b.read_only else "") for b in spec.binds]
        mounts += [
            f"./{f.source}:{f.target}:ro"
            for f in spec.files
            if posixpath.dirname(f.target) not in volume_at
        ]
        mounts += [f"{volume}:{folder}:ro" for folder, volume in volume_at.items()]
        mounts += list(spec.scratch)  # anonymous volumes, removed with the container
        if mounts:
            entry["volumes"] = mounts
        for volume in spec.volumes:
            volumes[volume.volume] = {"name": volume.volume}
        if spec.shm_size_mb:
            entry["shm_size"] = f"{spec.shm_size_mb}m"
        if spec.healthcheck is not None:
            check = spec.healthcheck
            entry["healthcheck"] = {
                "test": [part.replace("$", "$$") for part in check.test],
                "interval": f"{check.interval_s}s",
                "timeout": f"{check.timeout_s}s",
                "retries": check.retries,
                "start_period": f"{check.start_period_s}s",
            }
        entry.update(compose_hardening(spec))
        depends: dict[str, Any] = {
            d: {"condition": started_condition(stack.containers[d])}
            for d in spec.depends_on
            if d in stack.services
        }
        if folders or spec.data_owner:
            depends[f"{name}-files"] = {"condition": "service_completed_successfully"}
        if depends:
            entry["depends_on"] = depends
        if spec.extra_hosts:
            entry["extra_hosts"] = spec.extra_hosts
        services[name] = entry
    return {
        "services": services,
        "networks": {"kbinfra": {"name": network_name(stack.spec.name)}},
        "volumes": volumes,
    }


def started_condition(needed: ContainerSpec) -> str:
    """What compose waits for of a container another one needs: a one-off job (the app's
    migration) to have exited 0, a service to be healthy."""
    return "service_completed_successfully" if needed.run_once else "service_healthy"


def stack_files(stack: Stack) -> list[RenderedFile]:

    document = compose_document(stack)
    header = (
        f"# docker compose export of kbinfra stack {stack.spec.name!r}.\n"
        "# `kbinfra apply` is the supported way to deploy; this file is for people who prefer\n"
        "# compose. Secrets and the project name are read from .env (mode 0600) next to this\n"
        "# file. Written to the compose specification: docker-compose v1 (1.27+) and\n"
        "# docker compose v2 both run it (`docker-compose up -d` in this folder).\n"
    )
    compose = header + dump_yaml(document)
    specs = stack.containers.values()
    secret_names = sorted({s for spec in specs for s in spec.secret_env.values()})
    env_text = f"COMPOSE_PROJECT_NAME={stack.spec.name}\n" + "".join(
        f"{env_var_for(s)}={stack.secrets[s]}\n" for s in secret_names
    )
    published = sorted({(p.host_ip, p.host_port) for spec in specs for p in spec.ports})
    variables = {
        "stack": stack.spec,
        "ssh_port": ssh_port(stack),
        "public_ports": sorted({port for ip, port in published if ip != "127.0.0.1"}),
        "internal_ports": sorted({port for ip, port in published if ip == "127.0.0.1"}),
        **swarm_firewall_variables(stack),
    }
    unit = environment().get_template("_stack/kbinfra.service.j2").render(variables)
    firewall = environment().get_template("_stack/firewall.sh.j2").render(variables)
    return [
        RenderedFile(path=COMPOSE_FILE, text=compose),
        RenderedFile(path=COMPOSE_ENV, text=env_text, mode=0o600, secret=True),
        RenderedFile(path="systemd/kbinfra-stack.service", text=unit),
        RenderedFile(path="firewall.sh", text=firewall, mode=0o755),
    ]


_COMPOSE_TOP = {"services", "networks", "volumes"}
_COMPOSE_SERVICE = {
    "image", "container_name", "hostname", "restart", "networks", "cpus", "mem_limit",
    "stop_grace_period", "labels", "entrypoint", "command", "user", "environment", "ports",
    "volumes", "shm_size", "healthcheck", "depends_on", "extra_hosts", "cap_drop", "cap_add",
    "security_opt", "pids_limit", "network_mode", "read_only", "tmpfs",
}  # fmt: skip
_PORT = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}:)?\d{1,5}:\d{1,5}$")


def compose_problems(document: Any) -> list[str]:
    """What ``docker compose config`` would refuse in the parts of the compose file kbinfra
    writes: unknown keys, a service without an image, a bad port, an undeclared volume or
    network, a dependency on a service that is not there. Empty when the file is sound."""
    if not isinstance(document, dict):
        return ["the compose file is not a mapping"]
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(document) - _COMPOSE_TOP)]
    services = document.get("services") or {}
    volumes = set(document.get("volumes") or {})
    networks = set(document.get("networks") or {})
    for name, service in sorted(services.items()):
        where = f"services.{name}"
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(service) - _COMPOSE_SERVICE)]
        if not service.get("image"):
            problems.append(f"{where}: no image")
        problems += [
            f"{where}.ports: {port!r} is not [ip:]host:container"
            for port in service.get("ports", [])
            if not _PORT.match(str(port))
        ]
        for mount in service.get("volumes", []):
            source = str(mount).split(":", 1)[0]
            if not source.startswith((".", "/")) and source not in volumes:
                problems.append(f"{where}.volumes: {source!r} is not declared under volumes")
        problems += [
            f"{where}.networks: {net!r} is not declared under networks"
            for net in service.get("networks", {})
            if net not in networks
        ]
        problems += [
            f"{where}.depends_on: {dep!r} is not a service of this file"
            for dep in service.get("depends_on", {})
            if dep not in services
        ]
        environment = service.get("environment", {})
        problems += [
            f"{where}.environment.{key}: not a string"
            for key, value in environment.items()
            if not isinstance(value, str)
        ]
    return problems
