"""Everything one stack directory holds, read once and validated: the input of every command."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kbinfra.errors import SpecError, unreadable
from kbinfra.input_files import noted
from kbinfra.registry import all_services
from kbinfra.secrets import (
    BACKUP_KEY_SECRET,
    PREVIOUS_BACKUP_KEYS_SECRET,
    STACK_SECRETS,
    Redactor,
    load_secrets,
)
from kbinfra.service import STAGE_ORDER, ContainerSpec, RenderedFile, Service, ServiceContext
from kbinfra.spec.profile import Profile, load_profile
from kbinfra.spec.stack import StackSpec, load_stack
from kbinfra.spec.yamlfile import YamlDocument
from kbinfra.start_graph import start_graph


@dataclass(frozen=True)
class Stack:
    """A validated stack: spec, profile, secrets and TLS material. Pure from here on."""

    dir: Path
    spec: StackSpec
    profile: Profile
    secrets: Mapping[str, str]
    tls_certificate: str
    tls_key: str
    #: During ``kbinfra secrets rotate``: the other value of each rotating secret, which its
    #: store accepts beside ``secrets`` (:meth:`ServiceContext.accepted`). Empty otherwise.
    overlap: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def families(self) -> dict[str, Service]:
        """The enabled registered services, in deployment order: each renders its files."""
        enabled = set(self.spec.enabled_services())
        return {name: s for name, s in all_services().items() if name in enabled}

    @cached_property
    def services(self) -> dict[str, Service]:
        """What runs, one container each, in deployment order: every enabled service, or
        its instances for one that runs several containers (the app tier's replicas)."""
        instances = [i for family in self.families.values() for i in family.instances(self.spec)]
        instances.sort(key=lambda service: STAGE_ORDER[service.stage])
        return {service.name: service for service in instances}

    @cached_property
    def contexts(self) -> dict[str, ServiceContext]:
        """The context of every enabled registered service and of every instance."""
        enabled = frozenset(self.families) | frozenset(self.services)
        owners = {
            instance.name: family
            for family in self.families.values()
            for instance in family.instances(self.spec)
        }
        return {
            name: ServiceContext(
                name=name,
                stack=self.spec,
                profile=self.profile,
                settings=owners.get(name, service).settings_in(self.spec),
                resources=service.resources(self.profile),
                secrets=self.secrets,
                enabled=enabled,
                extra={"tls_certificate": self.tls_certificate, "tls_key": self.tls_key},
                overlap=self.overlap,
            )
            for name, service in {**self.families, **self.services}.items()
        }

    @cached_property
    def rendered(self) -> list[RenderedFile]:
        """Every file of the stack, rendered once per command (sorted by path), or as the
        last render left them while nothing they come from changed (:mod:`render_cache`)."""
        from kbinfra import render_cache  # noqa: PLC0415

        return render_cache.rendered(self)

    @cached_property
    def containers(self) -> dict[str, ContainerSpec]:
        """Every enabled service's container, in deployment order."""
        containers = {}
        for name, service in self.services.items():
            ctx = self.contexts[name]
            spec = service.container(ctx)
            if spec.pids_limit is None:
                spec = spec._replace(pids_limit=ctx.resources.pids)
            containers[name] = spec
        # A cycle or an unknown name is an error of the service folders, found at load.
        start_graph(
            {n: spec.depends_on for n, spec in containers.items()},
            {*all_services(), *containers},
        )
        return containers

    def select(self, names: Iterable[str], *, asked_as: str = "--only") -> list[str]:
        """The enabled services named (``--only``, or a command's SERVICE arguments: then
        ``asked_as`` is the command), in deployment order; a name that is not an enabled
        service is a one-line error with a did-you-mean hint and the enabled ones."""
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            if name not in self.services:
                close = difflib.get_close_matches(name, list(self.services), n=1)
                state = "disabled in kbinfra.yaml" if name in all_services() else "unknown"
                enabled = f"enabled: {', '.join(self.services)}"
                raise SpecError(
                    f"{asked_as} {name}: service is {state}",
                    fix=f"did you mean {close[0]!r}? ({enabled})"
                    if close
                    else f"use one of the {enabled}",
                )
        return [name for name in self.services if name in wanted]

    @cached_property
    def redact(self) -> Redactor:
        from_settings = {
            f"{name}.{key}": value
            for name, service in self.families.items()
            for key, value in service.secret_settings(self.contexts[name]).items()
        }
        overlap = {f"{name} (rotating)": value for name, value in self.overlap.items()}
        return Redactor({**self.secrets, **overlap, **from_settings, "tls_key": self.tls_key})


def required_secrets(spec: StackSpec) -> set[str]:
    services = all_services()
    offsite = {repository.password_secret for repository in spec.backup.offsite}
    return offsite | {
        secret for name in spec.enabled_services() for secret in services[name].secrets
    }


def secret_uses(spec: StackSpec, names: Iterable[str]) -> dict[str, list[str]]:
    """What uses each of ``names``, asked of each enabled service and of the stack itself;
    a name nothing uses maps to an empty list (a leftover of a removed service)."""
    services = all_services()
    uses: dict[str, list[str]] = {name: [] for name in names}
    for service in spec.enabled_services():
        for secret in services[service].secrets:
            uses.setdefault(secret, []).append(service)
    for repository in spec.backup.offsite:
        uses.setdefault(repository.password_secret, []).append(f"offsite {repository.name}")
    uses.setdefault(BACKUP_KEY_SECRET, []).append("backup signing")
    if PREVIOUS_BACKUP_KEYS_SECRET in uses:
        uses[PREVIOUS_BACKUP_KEYS_SECRET].append("verifying older backups")
    return {name: sorted(used) for name, used in sorted(uses.items())}


def generated_secrets(spec: StackSpec) -> set[str]:
    """What ``kbinfra init`` generates: the services' secrets and the stack's own."""
    return required_secrets(spec) | set(STACK_SECRETS)


def open_stack(stack_dir: Path) -> Stack:
    """Load ``kbinfra.yaml``, its profile, secrets and TLS files from ``stack_dir``."""
    spec, doc = load_stack(stack_dir)
    return stack_of(stack_dir, spec, doc)


def stack_of(
    stack_dir: Path, spec: StackSpec, doc: YamlDocument, profile: Profile | None = None
) -> Stack:
    """The stack ``spec`` describes, with ``stack_dir``'s secrets and TLS files; its profile
    as given (a release's own) or loaded as the spec names it."""
    if profile is None:
        profile = load_profile(spec.profile, relative_to=stack_dir).profile
    secrets = load_secrets(stack_dir, required_secrets(spec))
    certificate = _read_tls(stack_dir, spec.tls.certificate, "TLS certificate")
    key = _read_tls(stack_dir, spec.tls.key, "TLS key")
    stack = Stack(stack_dir, spec, profile, secrets, certificate, key)
    if spec.swarm is not None:
        # Where each service runs depends on its container (a data volume pins it): checked
        # here, once the profile is known, with the stack file's line in every error.
        from kbinfra.swarm.placement import stack_placements  # noqa: PLC0415

        stack_placements(stack, doc)
    return stack


def _read_tls(stack_dir: Path, relative: str, what: str) -> str:
    path = stack_dir / relative
    try:
        text = noted(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"{what} not found",
            where=str(path),
            fix="run `kbinfra init` to create a self-signed one, or set tls: in kbinfra.yaml",
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = unreadable(error)
        raise SpecError(
            f"cannot read the {what}: {reason}",
            where=str(path),
            fix="point tls: in kbinfra.yaml at a readable PEM file",
        ) from None
    if "-----BEGIN" not in text:
        raise SpecError(f"{what} is not PEM", where=str(path), fix="point tls: at a PEM file")
    return text
