"""A stack's Swarm objects, built from each service's ContainerSpec: pure, imports nothing of
docker.

How each part of a container reaches a Swarm task (docs/swarm.md has the table):

- a secret is a Docker secret, a file under ``/run/secrets``, never an environment variable
  (``docker inspect`` shows those). Where the image reads it from a file named by a variable
  (:meth:`Service.secret_file_env`: ``POSTGRES_PASSWORD_FILE``), that variable points at
  the file; where it reads it only from its environment, the task starts with a shell that
  exports it from the file and execs the image's own start (:attr:`Service.image_start`),
  so the value lives in that process's environment alone, as on one host;
- a rendered file is a Docker config at the same path (a 0600 one a Docker secret, owned by
  the user the service runs as);
- both are named by the sha256 of their content: Swarm objects are immutable, so a changed
  file is a new object and the service using it is updated, and rolled, by Swarm itself;
- volumes are named volumes on the node the task runs on; writable scratch folders are
  volumes of their own that hold no data; ``/dev/shm`` is a tmpfs of the size asked for;
- only ports published beyond loopback on one host (nginx's) are published, in host mode;
  every other service is reached on the overlay network only;
- limits, never reservations; the same health check as on one host; the update policy
  stops the old task first for a pinned service (two tasks must not open one data folder)
  and starts the new one first otherwise; an update that fails its health check is rolled
  back by Swarm.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.names import (
    LABEL_CONFIG_HASH,
    LABEL_SERVICE,
    container_name,
    swarm_network_name,
    swarm_service_name,
)
from kbinfra.service import ContainerSpec, FileMount, RenderedFile, Service
from kbinfra.swarm.desired import (
    LABEL_SWARM_STACK,
    SwarmConfig,
    SwarmMount,
    SwarmPort,
    SwarmSecret,
    SwarmService,
    SwarmStack,
    UpdatePolicy,
)
from kbinfra.swarm.placement import Placement, published_ports, stack_placements

if TYPE_CHECKING:
    from kbinfra.spec.yamlfile import YamlDocument
    from kbinfra.stack import Stack

SECRETS_DIR = "/run/secrets"
#: Where :func:`secrets_as_files` says its secret files come from: no file of ``rendered/``.
DRILL_SECRETS_SOURCE = ".kbinfra-secrets"
#: A version of the content in every secret's and config's name: 12 hex digits of sha256.
CONTENT_DIGITS = 12
#: Docker refuses config and secret names longer than this.
MAX_OBJECT_NAME = 64
#: A rolled task is watched this long (at least) for a failed health check.
MIN_MONITOR_S = 15.0
#: $0 of the shell that reads secrets from their files before it execs the image's start.
SHELL_START_NAME = "kbinfra-secrets"
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versioned_name(stack: str, what: str, data: bytes) -> str:
    """``<stack>_<what>_<12 hex of sha256(data)>``, within Docker's 64 characters."""
    digest = sha256_hex(data)[:CONTENT_DIGITS]
    room = MAX_OBJECT_NAME - len(stack) - len(digest) - 2
    slug = _NOT_NAME_CHARS.sub("-", what).strip("-.")[-room:].lstrip("-.")
    return f"{stack}_{slug}_{digest}"


def _numeric_user(user: str | None) -> tuple[str, str] | None:
    """``"999:999"`` → ("999", "999"); a name or nothing → None (not known here)."""
    if user is None:
        return None
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return uid, gid or uid
    return None


def _env_secrets(
    stack: Stack, service: Service, spec: ContainerSpec
) -> tuple[dict[str, str], list[SwarmSecret], list[tuple[str, str]]]:
    """The variables that point the image at its secret files, the secrets, and the
    (variable, file) pairs a start shell must export because the image reads no file."""
    env: dict[str, str] = {}
    secrets: list[SwarmSecret] = []
    shell_exports: list[tuple[str, str]] = []
    owner = _numeric_user(spec.user)
    for variable, secret in sorted(spec.secret_env.items()):
        data = stack.secrets[secret].encode("utf-8")
        uid, gid = owner or ("0", "0")
        secrets.append(
            SwarmSecret(
                name=versioned_name(stack.spec.name, secret, data),
                data=data,
                target=secret,
                uid=uid,
                gid=gid,
                # Readable by the image's own user when kbinfra does not know its uid.
                mode=0o400 if owner else 0o444,
            )
        )
        path = f"{SECRETS_DIR}/{secret}"
        file_variable = service.secret_file_env(variable)
        if file_variable is not None:
            env[file_variable] = path
        else:
            shell_exports.append((variable, path))
    return env, secrets, shell_exports


def _shell_start(
    service: Service, spec: ContainerSpec, exports: Sequence[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """The entrypoint and command of a task whose image reads secrets only from its
    environment: ``sh -c`` exports each from its file, then execs what the image would run."""
    if spec.entrypoint is not None:
        start = [*spec.entrypoint, *(spec.command or ())]
    elif spec.command is None:
        start = list(service.image_start)
    else:
        start = []
    if not start:
        raise KbinfraError(
            f"{service.name} reads {exports[0][0]} only from its environment, and its service "
            "folder does not say how its image starts (image_start)",
            fix="set image_start in its service.py, or a *_FILE variable it reads "
            "(secret_file_env)",
        )
    reads = "".join(
        f'{variable}="$(cat {shlex.quote(path)})" && export {variable} && '
        for variable, path in exports
    )
    script = f'{reads}exec "$@"'
    return ["/bin/sh", "-c", script, SHELL_START_NAME], start


def _file_objects(
    stack: str, spec: ContainerSpec, rendered: Mapping[str, RenderedFile]
) -> tuple[list[SwarmConfig], list[SwarmSecret]]:
    configs: list[SwarmConfig] = []
    secrets: list[SwarmSecret] = []
    for mount in spec.files:
        file = rendered.get(mount.source)
        if file is None:
            raise KbinfraError(f"{spec.service} mounts {mount.source}, which was not rendered")
        data = file.text.encode("utf-8")
        name = versioned_name(stack, mount.source, data)
        uid, gid = str(mount.uid), str(mount.gid)
        if file.secret:
            secrets.append(SwarmSecret(name=name, data=data, target=mount.target, uid=uid, gid=gid))
        else:
            configs.append(SwarmConfig(name=name, data=data, target=mount.target, uid=uid, gid=gid))
    return configs, secrets


def _mounts(stack: str, spec: ContainerSpec) -> list[SwarmMount]:
    mounts = [SwarmMount(source=v.volume, target=v.target, data=v.data) for v in spec.volumes]
    mounts += [
        SwarmMount(source=b.source, target=b.target, read_only=b.read_only, data=False, kind="bind")
        for b in spec.binds
    ]
    mounts += [
        SwarmMount(source=f"{stack}-{spec.service}-scratch{index}", target=folder, data=False)
        for index, folder in enumerate(spec.scratch)
    ]
    return mounts


def update_policy(spec: ContainerSpec, *, pinned: bool) -> UpdatePolicy:
    """Stop first for a pinned service (its new task opens the same data folder), start
    first otherwise; watched for at least one health check after its start period."""
    check = spec.healthcheck
    monitor = MIN_MONITOR_S
    if check is not None:
        monitor = max(MIN_MONITOR_S, float(check.start_period_s + check.interval_s))
    return UpdatePolicy(order="stop-first" if pinned else "start-first", monitor_s=monitor)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def service_config_hash(service: SwarmService) -> str:
    """sha256 of everything that defines a Swarm service; secrets and configs enter by
    their versioned names (which carry their content's hash), never by their data."""
    described = asdict(service)
    described.pop("labels")
    described.pop("config_hash")
    for kind in ("secrets", "configs"):
        for item in described[kind]:
            item.pop("data")
    return sha256_hex(_canonical(described).encode("utf-8"))


def swarm_service(
    stack: Stack,
    name: str,
    placement: Placement,
    rendered: Mapping[str, RenderedFile],
    *,
    replica: bool = False,
) -> SwarmService:
    """One service of the stack as a Swarm service (``replica``: its streaming replica,
    ``<name>-replica``, on the replica's node)."""
    service = stack.services[name]
    spec = stack.containers[name]
    if replica:
        replica_spec = service.replica_container(stack.contexts[name])
        if replica_spec is None or placement.replica is None:
            raise KbinfraError(f"{name} has no streaming replica to build")
        spec = replica_spec
        placement = placement._replace(
            nodes=(placement.replica,), constraints=(f"node.hostname == {placement.replica}",)
        )
    stack_name = stack.spec.name
    own = spec.service
    env = dict(spec.env)
    file_env, env_secrets, exports = _env_secrets(stack, service, spec)
    env.update(file_env)
    entrypoint = list(spec.entrypoint) if spec.entrypoint is not None else None
    command = list(spec.command) if spec.command is not None else None
    if exports:
        entrypoint, command = _shell_start(service, spec, exports)
    configs, file_secrets = _file_objects(stack_name, spec, rendered)
    tmpfs = [(t.target, t.size_mb) for t in spec.tmpfs]
    if spec.shm_size_mb:
        tmpfs.append(("/dev/shm", spec.shm_size_mb))
    built = SwarmService(
        stack=stack_name,
        # A replica is a service of its own on the network: it must never answer to the
        # primary's name, which the replica itself streams from.
        service=own,
        name=swarm_service_name(stack_name, own),
        image=spec.image,
        cpus=spec.cpus,
        memory_mb=spec.memory_mb,
        replicas=placement.replicas,
        constraints=placement.constraints,
        max_replicas_per_node=placement.max_per_node,
        hostname=own if placement.pinned else None,
        command=command,
        entrypoint=entrypoint,
        user=spec.user,
        env=dict(sorted(env.items())),
        secrets=tuple(sorted([*env_secrets, *file_secrets], key=lambda s: s.target)),
        configs=tuple(sorted(configs, key=lambda c: c.target)),
        mounts=tuple(_mounts(stack_name, spec)),
        tmpfs=tuple(tmpfs),
        ports=tuple(
            SwarmPort(target=p.container_port, published=p.host_port) for p in published_ports(spec)
        ),
        healthcheck=spec.healthcheck,
        update=update_policy(spec, pinned=placement.pinned),
        stop_grace_s=spec.stop_timeout_s,
        read_only=not spec.writable_root_reason,
        cap_add=tuple(spec.cap_add),
        # nginx names a rolling server by its container name (app: ``upstream_address``)
        network_aliases=(own, container_name(stack_name, own)) if spec.rolling else (own,),
        labels={},  # set once the hash is known (asdict cannot copy the default's proxy)
    )
    digest = service_config_hash(built)
    return _with_hash(built, digest)


def peer_hostnames(service: str, peers: Sequence[str]) -> list[str]:
    """``qdrant-1``, ``qdrant-2``, …: a peer's stable name, kept in the cluster's state."""
    return [f"{service}-{index}" for index in range(1, len(peers) + 1)]


def peer_services(
    stack: Stack, name: str, placement: Placement, rendered: Mapping[str, RenderedFile]
) -> list[SwarmService]:
    """One Swarm service per peer of a store that clusters by itself: each pinned to its
    node, with its own volumes there (named as one store's, node-local), its stable host
    name, and the arguments its service folder gives it (the first starts the cluster)."""
    service = stack.services[name]
    hostnames = peer_hostnames(name, placement.peers)
    built = []
    for index, node in enumerate(placement.peers):
        one = placement._replace(nodes=(node,), constraints=(f"node.hostname == {node}",), peers=())
        base = swarm_service(stack, name, one, rendered)
        arguments = service.peer_arguments(hostnames, index) or []
        peer = replace(
            base,
            name=swarm_service_name(stack.spec.name, hostnames[index]),
            hostname=hostnames[index],
            command=[*(base.command or ()), *arguments],
            network_aliases=(name, hostnames[index]),
        )
        built.append(_with_hash(peer, service_config_hash(peer)))
    return built


def _with_hash(service: SwarmService, digest: str) -> SwarmService:
    labels = {
        LABEL_SWARM_STACK: service.stack,
        LABEL_SERVICE: service.service,
        LABEL_CONFIG_HASH: digest,
    }
    return replace(service, labels=labels, config_hash=digest)


def swarm_stack(
    stack: Stack,
    rendered: Sequence[RenderedFile],
    doc: YamlDocument | None = None,
    *,
    only: Collection[str] = (),
) -> SwarmStack:
    """The stack's Swarm services, secrets, configs and network, from its containers and
    its rendered files (``render`` passes them before it adds the Swarm stack file itself).
    A placement rule broken is a one-line error naming the stack file's line (``doc``).

    ``only``: just these services of the stack (``--only``), each with its replica or
    peers; placement is still checked for the whole stack."""
    placements = stack_placements(stack, doc)
    by_path = {file.path: file for file in rendered}
    services = tuple(
        built
        for name in stack.services
        if not only or name in only
        for built in (
            peer_services(stack, name, placements[name], by_path)
            if placements[name].peers
            else [swarm_service(stack, name, placements[name], by_path)]
            + (
                [swarm_service(stack, name, placements[name], by_path, replica=True)]
                if placements[name].replica
                else []
            )
        )
    )
    return SwarmStack(
        stack=stack.spec.name, network=swarm_network_name(stack.spec.name), services=services
    )


def secrets_as_files(
    stack: Stack, service: Service, spec: ContainerSpec
) -> tuple[ContainerSpec, list[RenderedFile]]:
    """``spec`` for a plain container on a Swarm node (the restore drill's) whose files are
    rendered for the Swarm: each secret the image reads from a file (``*_FILE``) is a file at
    the path a task has it (``/run/secrets/<name>``), the variable pointing at it, as in the
    task; a secret the image reads only from its environment stays there, as on one host.
    The files are returned as rendered files (0400 or 0444, like the Docker secrets), to be
    put into the created container; never written anywhere else."""
    file_env, secrets, exports = _env_secrets(stack, service, spec)
    from_env = {variable for variable, _ in exports}
    by_file = {v: s for v, s in spec.secret_env.items() if v not in from_env}
    if not by_file:
        return spec, []
    files: dict[str, RenderedFile] = {}
    mounts = list(spec.files)
    for secret in secrets:
        if secret.target not in by_file.values() or secret.target in files:
            continue
        source = f"{DRILL_SECRETS_SOURCE}/{secret.target}"
        files[secret.target] = RenderedFile(
            source, secret.data.decode("utf-8"), mode=secret.mode, secret=True
        )
        mounts.append(
            FileMount(source, f"{SECRETS_DIR}/{secret.target}", int(secret.uid), int(secret.gid))
        )
    in_env = {v: s for v, s in spec.secret_env.items() if v in from_env}
    return (
        spec._replace(env={**spec.env, **file_env}, secret_env=in_env, files=tuple(mounts)),
        list(files.values()),
    )
