"""Desired state vs observed facts → what ``apply`` would do, and why. Pure: no I/O.

A container carries labels with the sha256 of each part that defines it (image, command,
every env var, ports, volumes, limits, health check, every file it mounts) and one
``kbinfra.config-hash`` over all of them. Comparing the single hash tells *whether* to
recreate; comparing the parts tells the user *why*.

The files a service reloads in place (``ContainerSpec.reload``: nginx's configuration and
certificate) are not among those parts: a container keeps its labels for life, and these files
change under it. What it serves is what the target's stack folder holds (apply writes a file
there once every service that mounts it took it), so a reloadable file that differs from its
deployed copy is a ``reload``, not a recreate.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from kbinfra.containers import (
    DesiredService,
    Facts,
    MountedFile,
    ObservedContainer,
    config_folders,
)
from kbinfra.names import (
    LABEL_CONFIG_HASH,
    LABEL_HASH_PREFIX,
    LABEL_STACK,
    OLD_SUFFIX,
    container_name,
    normalize_ref,
)
from kbinfra.registry import all_services
from kbinfra.service import ContainerSpec, RenderedFile
from kbinfra.stack import Stack
from kbinfra.start_graph import start_graph

HASH_FORMAT = "1"  # bump when the hashed parts change meaning, so every container is recreated

Action = Literal["create", "recreate", "reload", "start", "remove", "nothing"]
FileChangeKind = Literal["add", "change", "remove"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_parts(
    spec: ContainerSpec, files: Sequence[MountedFile], secrets: Mapping[str, str]
) -> dict[str, str]:
    """sha256 of every part of a container; secret values enter only as their sha256."""
    parts: dict[str, Any] = {
        "image": spec.image,
        "command": {"command": spec.command, "entrypoint": spec.entrypoint, "user": spec.user},
        "ports": [p._asdict() for p in spec.ports],
        "volumes": [v._asdict() for v in spec.volumes],
        "limits": {
            "cpus": spec.cpus,
            "memory_mb": spec.memory_mb,
            "shm_size_mb": spec.shm_size_mb,
            "stop_timeout_s": spec.stop_timeout_s,
        },
        "healthcheck": spec.healthcheck._asdict() if spec.healthcheck else None,
        "extra_hosts": spec.extra_hosts,
        "hardening": {
            "cap_add": spec.cap_add,
            "pids_limit": spec.pids_limit,
            "read_only_root": not spec.writable_root_reason,
            "tmpfs": [t._asdict() for t in spec.tmpfs],
            "scratch": spec.scratch,
            "data_owner": spec.data_owner,
            # The files' folders are volumes of their own: containers that had their files
            # written into their root are recreated.
            "file_volumes": config_folders(f.target for f in spec.files),
        },
    }
    if spec.binds:  # only then: containers without binds keep the hash they always had
        parts["binds"] = [b._asdict() for b in spec.binds]
    if spec.run_once:  # likewise
        parts["run_once"] = True
    for name, value in spec.env.items():
        parts[f"env.{name}"] = value
    for name, secret in spec.secret_env.items():
        parts[f"env.{name}"] = {"secret": sha256_text(secrets.get(secret, ""))}
    for mounted in files:
        parts[f"file.{mounted.file.path}"] = {
            "target": mounted.mount.target,
            "uid": mounted.mount.uid,
            "gid": mounted.mount.gid,
            "mode": mounted.file.mode,
            "sha256": sha256_bytes(mounted.data),
        }
    return {name: sha256_text(_canonical(value)) for name, value in sorted(parts.items())}


def config_hash(parts: Mapping[str, str]) -> str:
    return sha256_text(_canonical({"format": HASH_FORMAT, "parts": dict(parts)}))


def desired_service(
    stack: str,
    spec: ContainerSpec,
    stage: str,
    rendered: Mapping[str, RenderedFile],
    secrets: Mapping[str, str],
) -> DesiredService:
    missing = [m.source for m in spec.files if m.source not in rendered]
    if missing:
        raise ValueError(f"{spec.service} mounts files that were not rendered: {missing}")
    files = tuple(MountedFile(m, rendered[m.source]) for m in spec.files)
    reloadable = set(spec.reload.files) if spec.reload is not None else set()
    parts = {
        name: digest
        for name, digest in config_parts(spec, files, secrets).items()
        if name.removeprefix("file.") not in reloadable
    }
    return DesiredService(
        service=spec.service,
        container=container_name(stack, spec.service),
        stage=stage,
        spec=spec,
        files=files,
        parts=parts,
        config_hash=config_hash(parts),
    )


@dataclass(frozen=True)
class ServiceAction:
    service: str
    container: str
    action: Action
    reasons: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "container": self.container,
            "action": self.action,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class FileChange:
    path: str
    change: FileChangeKind
    secret: bool = False
    diff: str | None = None  # unified diff, redacted; None for secret or removed files

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "change": self.change, "secret": self.secret, "diff": self.diff}


@dataclass(frozen=True)
class Plan:
    stack: str
    target: str
    services: tuple[ServiceAction, ...]
    files: tuple[FileChange, ...]
    leftovers: tuple[str, ...] = ()  # containers an interrupted apply left behind
    missing_images: tuple[str, ...] = ()

    @property
    def has_changes(self) -> bool:
        return bool(
            self.files or self.leftovers or any(a.action != "nothing" for a in self.services)
        )

    def action(self, service: str) -> ServiceAction:
        return next(a for a in self.services if a.service == service)

    def only(self, services: Collection[str], owners: Mapping[str, set[str]]) -> Plan:
        """The plan for ``services`` alone (``apply --only``): every other service keeps
        what it runs, and only files mounted by the named services change. Stack-wide files
        (the compose export) describe every service, so they wait for a full apply."""
        chosen = set(services)
        return replace(
            self,
            services=tuple(
                a if a.service in chosen else replace(a, action="nothing", reasons=())
                for a in self.services
            ),
            files=tuple(
                f for f in self.files if owners.get(f.path, set()) & chosen and f.change != "remove"
            ),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "target": self.target,
            "changes": self.has_changes,
            "services": [a.as_json() for a in self.services],
            "files": [f.as_json() for f in self.files],
            "leftovers": list(self.leftovers),
            "missing_images": list(self.missing_images),
        }


def _describe_part(part: str, change: str) -> str:
    if part.startswith("env."):
        return f"env {part[4:]} {change}"
    if part.startswith("file."):
        return f"file {part[5:]} {change}"
    return f"{part} {change}"


def recreate_reasons(desired: DesiredService, observed: ObservedContainer) -> list[str]:
    """Why the running container differs from the desired one, part by part."""
    old = {
        key.removeprefix(LABEL_HASH_PREFIX): value
        for key, value in observed.labels.items()
        if key.startswith(LABEL_HASH_PREFIX)
    }
    reloadable = reloadable_paths(desired)
    reasons: list[str] = []
    for part in sorted(set(old) | set(desired.parts)):
        if part.removeprefix("file.") in reloadable:
            continue  # reloaded in place: its label tells what the container was created with
        if part not in old:
            reasons.append(_describe_part(part, "added"))
        elif part not in desired.parts:
            reasons.append(_describe_part(part, "removed"))
        elif old[part] != desired.parts[part]:
            if part == "image":
                reasons.append(f"image {observed.image} → {desired.spec.image}")
            else:
                reasons.append(_describe_part(part, "changed"))
    if not reasons:
        reasons.append("made by another kbinfra version (hash format changed)")
    return reasons


def reloadable_paths(desired: DesiredService) -> frozenset[str]:
    """The rendered files the service takes while running (``ContainerSpec.reload``)."""
    reload = desired.spec.reload
    return frozenset(reload.files) if reload is not None else frozenset()


def files_to_reload(desired: DesiredService, deployed: Mapping[str, str]) -> list[str]:
    """Its reloadable files whose rendered text is not the deployed copy, the one it serves."""
    reloadable = reloadable_paths(desired)
    return sorted(
        {
            m.file.path
            for m in desired.files
            if m.file.path in reloadable and deployed.get(m.file.path) != sha256_text(m.file.text)
        }
    )


def service_action(
    desired: DesiredService,
    observed: ObservedContainer | None,
    image_id: str | None,
    deployed: Mapping[str, str] | None = None,
) -> ServiceAction:
    """What to do about one service, from its desired state and its container, if any;
    ``deployed``: the target's stack folder (path → sha256), where reloaded files are told."""

    def act(action: Action, *reasons: str) -> ServiceAction:
        return ServiceAction(desired.service, desired.container, action, tuple(reasons))

    if observed is None:
        return act("create", "no container yet")
    if observed.state == "created":
        return act("create", "left unstarted by an interrupted apply")
    if observed.labels.get(LABEL_CONFIG_HASH) != desired.config_hash:
        return act("recreate", *recreate_reasons(desired, observed))
    if image_id is not None and observed.image_id and observed.image_id != image_id:
        return act(
            "recreate",
            f"image {desired.spec.image} was updated ({_short(observed.image_id)} → "
            f"{_short(image_id)})",
        )
    changed = files_to_reload(desired, deployed or {})
    if changed:
        described = [f"file {path} changed" for path in changed]
        if observed.state != "running":
            return act("recreate", *described, f"container is {observed.state}")
        return act("reload", *[f"{line}: reloaded in place" for line in described])
    if desired.spec.run_once and observed.state == "exited":
        code = observed.exit_code
        return act("nothing") if code == 0 else act("start", f"its last run exited {code}")
    if observed.state in ("exited", "dead", "paused"):
        return act("start", f"container is {observed.state}")
    return act("nothing")


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def files_to_read(rendered: Iterable[RenderedFile], deployed: Mapping[str, str]) -> list[str]:
    """Deployed files whose old content a diff needs: changed and not secret."""
    return [
        f.path
        for f in rendered
        if f.path in deployed and deployed[f.path] != sha256_text(f.text) and not is_secret_file(f)
    ]


def is_secret_file(file: RenderedFile) -> bool:
    return file.secret or not file.mode & 0o077


def file_changes(
    rendered: Iterable[RenderedFile],
    deployed: Mapping[str, str],
    old_texts: Mapping[str, str],
    redact: Callable[[str], str],
) -> list[FileChange]:
    """Files to upload or remove in the target's stack folder, with redacted diffs."""
    changes: list[FileChange] = []
    seen: set[str] = set()
    for file in rendered:
        seen.add(file.path)
        old_hash = deployed.get(file.path)
        if old_hash == sha256_text(file.text):
            continue
        secret = is_secret_file(file)
        kind: FileChangeKind = "add" if old_hash is None else "change"
        diff = None
        if not secret:
            old = old_texts.get(file.path, "") if kind == "change" else ""
            diff = redact(unified_diff(file.path, old, file.text))
        changes.append(FileChange(file.path, kind, secret, diff))
    changes.extend(FileChange(path, "remove") for path in sorted(set(deployed) - seen))
    return changes


def unified_diff(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"deployed/{path}",
        tofile=f"rendered/{path}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def leftovers(stack: str, facts: Facts) -> list[str]:
    """Containers an interrupted apply left: renamed old ones and never-started new ones."""
    names = []
    for container in facts.containers:
        if container.labels.get(LABEL_STACK) != stack:
            continue
        if container.name.endswith(OLD_SUFFIX) or container.state == "created":
            names.append(container.name)
    return sorted(names)


def make_plan(
    *,
    stack: str,
    target: str,
    desired: Mapping[str, DesiredService],
    rendered: Sequence[RenderedFile],
    facts: Facts,
    old_texts: Mapping[str, str],
    redact: Callable[[str], str],
) -> Plan:
    """Per service create / recreate / reload / start / remove / nothing, and the file
    changes."""
    actions = [
        service_action(
            d,
            facts.container(d.container),
            facts.images.get(normalize_ref(d.spec.image)),
            facts.deployed_files,
        )
        for d in desired.values()
    ]
    wanted = {d.container for d in desired.values()}
    for container in facts.containers:
        service = container.service
        if (
            container.labels.get(LABEL_STACK) == stack
            and service is not None
            and container.name == container_name(stack, service)
            and container.name not in wanted
        ):
            actions.append(
                ServiceAction(service, container.name, "remove", ("not enabled in kbinfra.yaml",))
            )
    missing = sorted(
        {d.spec.image for d in desired.values() if normalize_ref(d.spec.image) not in facts.images}
    )
    return Plan(
        stack=stack,
        target=target,
        services=tuple(actions),
        files=tuple(file_changes(rendered, facts.deployed_files, old_texts, redact)),
        leftovers=tuple(leftovers(stack, facts)),
        missing_images=tuple(missing),
    )


def dependencies(desired: Mapping[str, DesiredService]) -> dict[str, frozenset[str]]:
    """What each service waits for before it starts: the enabled services its container
    ``depends_on`` (:mod:`kbinfra.start_graph`); no stage waits for another."""
    return start_graph(
        {n: d.spec.depends_on for n, d in desired.items()}, {*all_services(), *desired}
    )


def mounted_by(desired: Mapping[str, DesiredService]) -> dict[str, set[str]]:
    """For each rendered file path, the services that mount it."""
    owners: dict[str, set[str]] = {}
    for name, service in desired.items():
        for mounted in service.files:
            owners.setdefault(mounted.file.path, set()).add(name)
    return owners


def desired_services(stack: Stack, rendered: Sequence[RenderedFile]) -> dict[str, DesiredService]:
    """Every enabled service's desired container, in deployment order."""
    by_path = {f.path: f for f in rendered}
    return {
        name: desired_service(
            stack.spec.name, stack.containers[name], service.stage, by_path, stack.secrets
        )
        for name, service in stack.services.items()
    }


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``kbinfra status``: desired vs running, health and drift."""

    service: str
    container: str
    desired_image: str | None
    running_image: str | None
    state: str
    health: str | None
    uptime: str
    ports: tuple[str, ...]
    drift: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "container": self.container,
            "desired_image": self.desired_image,
            "running_image": self.running_image,
            "state": self.state,
            "health": self.health,
            "uptime": self.uptime,
            "ports": list(self.ports),
            "drift": list(self.drift),
        }


def _uptime(status: str) -> str:
    text = status.split(" (", 1)[0]
    return text.removeprefix("Up ") if text.startswith("Up ") else ""


def stack_status(
    stack: str, desired: Mapping[str, DesiredService], facts: Facts
) -> list[ServiceStatus]:
    """Every enabled service (and any container of a disabled one) as it runs now."""
    rows = []
    for service in desired.values():
        observed = facts.container(service.container)
        if observed is None:
            rows.append(
                ServiceStatus(
                    service.service,
                    service.container,
                    service.spec.image,
                    None,
                    "missing",
                    None,
                    "",
                    (),
                    ("no container",),
                )
            )
            continue
        action = service_action(
            service,
            observed,
            facts.images.get(normalize_ref(service.spec.image)),
            facts.deployed_files,
        )
        drift = action.reasons if action.action in ("recreate", "create", "reload") else ()
        rows.append(
            ServiceStatus(
                service.service,
                service.container,
                service.spec.image,
                observed.image,
                observed.state,
                observed.health,
                _uptime(observed.status),
                observed.ports,
                drift,
            )
        )
    wanted = {d.container for d in desired.values()}
    for observed in facts.containers:
        if observed.name in wanted or observed.labels.get(LABEL_STACK) != stack:
            continue
        if observed.service is None:
            continue
        rows.append(
            ServiceStatus(
                observed.service,
                observed.name,
                None,
                observed.image,
                observed.state,
                observed.health,
                _uptime(observed.status),
                observed.ports,
                ("leftover of an interrupted apply",)
                if observed.name.endswith(OLD_SUFFIX)
                else ("not enabled in kbinfra.yaml",),
            )
        )
    return rows
