"""The stack file, ``kbinfra.yaml``: which services, where, with which images and ports."""

import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from kbinfra.registry import all_services
from kbinfra.service import ServiceSettings
from kbinfra.spec.app import AppSettings
from kbinfra.spec.swarm import PlacementsBase, ServicePlacement, SwarmSettings
from kbinfra.spec.values import (
    LOCAL_TARGET,
    SWARM_TARGET,
    Domain,
    SshTarget,
    Target,
    TextLine,
    VolumeName,
    parse_ssh_target,
)
from kbinfra.spec.yamlfile import YamlDocument, parse_yaml, read_yaml, validate
from kbinfra.stack_folder import STACK_FILE

Workload = Literal["web", "oltp", "dw", "mixed"]
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Strict):
    certificate: TextLine = Field(
        "tls/cert.pem", description="PEM certificate, relative to the stack dir"
    )
    key: TextLine = Field("tls/key.pem", description="PEM private key, relative to the stack dir")


_OFFSITE_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
_REPOSITORY_SCHEMES = ("sftp:", "rest:", "s3:")
_SCHEME = re.compile(r"^[a-z][a-z0-9]+$")


class OffsiteRepository(_Strict):
    """One restic repository that every new backup is sent to (``backup.offsite[]``)."""

    name: str = Field(description="Short name; the password is the secret offsite_<name>_password")
    repository: str = Field(
        description="restic repository: a local path, sftp:user@host:/path, "
        "rest:https://host/path or s3:https://host/bucket/path"
    )
    keep_last: Annotated[int, Field(ge=1)] = 7
    keep_daily: Annotated[int, Field(ge=0)] = 30
    keep_weekly: Annotated[int, Field(ge=0)] = 8
    keep_monthly: Annotated[int, Field(ge=0)] = 12

    @field_validator("name")
    @classmethod
    def _secret_safe(cls, value: str) -> str:
        if not _OFFSITE_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a usable repository name: lowercase letters, digits and _, "
                "starting with a letter, at most 31 characters"
            )
        return value

    @field_validator("repository")
    @classmethod
    def _restic_repository(cls, value: str) -> str:
        if not value or any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError(f"{value!r} is not a restic repository: no spaces or control chars")
        scheme = value.partition(":")[0]
        if _SCHEME.match(scheme) and not value.startswith(_REPOSITORY_SCHEMES):
            raise ValueError(
                f"{value!r}: kbinfra supports local paths and sftp:, rest:, s3: repositories"
            )
        return value

    @property
    def password_secret(self) -> str:
        return f"offsite_{self.name}_password"


class BackupSettings(_Strict):
    root: TextLine = "backups"
    keep_last: Annotated[int, Field(ge=1)] = 7
    keep_days: Annotated[int, Field(ge=1)] | None = 30
    # Not default_factory=list: pydantic would read that builtin's signature, which compiles
    # the tokenize module's regex (~4 ms of every start). Pydantic copies mutable defaults.
    volumes: list[VolumeName] = Field([], description="Extra named volumes to back up")
    offsite: list[OffsiteRepository] = Field(
        [], description="restic repositories every new backup is sent to"
    )

    @field_validator("offsite")
    @classmethod
    def _names_unique(cls, value: list[OffsiteRepository]) -> list[OffsiteRepository]:
        names = [r.name for r in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"offsite repository name {twice[0]!r} is used twice")
        return value


class SecretsSettings(_Strict):
    max_age_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        None, description="`kbinfra check` reports secrets older than this many days"
    )


class DeploySettings(_Strict):
    dir: TextLine | None = Field(
        None,
        description="Deployed stack folder on an SSH target (default /var/lib/kbinfra/<name> "
        "as root, else ~/.kbinfra/<name>)",
    )
    health_timeout_s: Annotated[int, Field(ge=5, le=3600)] | None = Field(
        None, description="Seconds a new container has to become healthy (default: from its check)"
    )
    parallel: Annotated[int, Field(ge=1, le=16)] = 4


class ServicesBase(_Strict):
    """Subclassed at run time with one field per registered service."""

    # Only the subclass validates anything: build its validator then, not this one's now.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    def get(self, name: str) -> ServiceSettings:
        settings: ServiceSettings = getattr(self, name)
        return settings

    def names(self) -> list[str]:
        """Registered services, in deployment order."""
        fields = type(self).model_fields
        return [name for name in all_services() if name in fields]


class StackSpec(_Strict):
    """The stack file; :func:`stack_model` subclasses it with the registered services."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = "kb"
    profile: TextLine = "recommended"
    target: Target = "local"
    domain: Domain = "kb.example.com"
    workload: Workload = "web"
    tls: TlsSettings = TlsSettings()
    app: AppSettings = AppSettings()
    backup: BackupSettings = BackupSettings()
    deploy: DeploySettings = DeploySettings()
    secrets: SecretsSettings = SecretsSettings()
    services: ServicesBase = Field(default_factory=ServicesBase)
    swarm: SwarmSettings | None = Field(
        None, description="target: swarm only: the nodes, and where each service runs"
    )

    @field_validator("name")
    @classmethod
    def _docker_safe(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a usable stack name: lowercase letters, digits and -, "
                "starting with a letter, at most 31 characters"
            )
        return value

    @model_validator(mode="after")
    def _swarm_section_with_swarm_target(self) -> Self:
        if self.target == SWARM_TARGET and self.swarm is None:
            raise ValueError(
                "target: swarm needs a swarm: section with the nodes "
                "(kbinfra init --target swarm --nodes FILE writes one)"
            )
        if self.target != SWARM_TARGET and self.swarm is not None:
            raise ValueError(
                f"a swarm: section is only read with target: swarm (target is {self.target}); "
                "remove it or set target: swarm"
            )
        if self.target == SWARM_TARGET and self.app.image is not None:
            # Its replicas, workers and one-off migration are containers of one host today;
            # without this the Swarm stack would leave them out and nginx proxy to nothing.
            raise ValueError(
                "app.image (the application tier) is not built for target: swarm yet; "
                "run the app elsewhere and point app.upstream at it, or use one host"
            )
        return self

    @model_validator(mode="after")
    def _ports_unique(self) -> Self:
        seen: dict[int, str] = {}
        for name in self.services.names():
            settings = self.services.get(name)
            if not settings.enabled:
                continue
            for port in settings.host_ports():
                if port in seen:
                    raise ValueError(
                        f"services {seen[port]} and {name} both use host port {port}; "
                        "give each its own port"
                    )
                seen[port] = name
        return self

    def enabled_services(self) -> list[str]:
        """The registered services this stack deploys, in deployment order."""
        fields = type(self.services).model_fields
        return [
            name
            for name, service in all_services().items()
            if (name in fields or not service.in_services_section) and service.enabled_in(self)
        ]

    def placement(self, service: str) -> ServicePlacement:
        """What ``swarm.services.<service>`` says (empty when nothing, or not on a Swarm)."""
        return self.swarm.services.of(service) if self.swarm else ServicePlacement()

    def ssh_parts(self) -> SshTarget | None:
        """``(user, host, port)`` for an ssh:// target, else None (local, swarm)."""
        if self.target in (LOCAL_TARGET, SWARM_TARGET):
            return None
        return parse_ssh_target(self.target)


@cache
def stack_model() -> type[StackSpec]:
    """StackSpec whose ``services`` has a typed field for every registered service."""
    fields: dict[str, Any] = {}
    for name, service in all_services().items():
        if not service.in_services_section:
            continue
        defaults = service.settings_model(
            image=service.default_image,
            port=service.default_host_port,
            enabled=service.enabled_by_default,
        )
        fields[name] = (service.settings_model, defaults)
    services_model = create_model("Services", __base__=ServicesBase, **fields)
    placements: dict[str, Any] = {name: (ServicePlacement | None, None) for name in all_services()}
    placements_model = create_model("SwarmServices", __base__=PlacementsBase, **placements)
    swarm_model = create_model(
        "Swarm",
        __base__=SwarmSettings,
        services=(placements_model, Field(default_factory=placements_model)),
    )
    return create_model(
        "Stack",
        __base__=StackSpec,
        services=(services_model, Field(default_factory=services_model)),
        swarm=(swarm_model | None, None),
    )


def load_stack(stack_dir: Path) -> tuple[StackSpec, YamlDocument]:
    """Read and validate ``stack_dir/kbinfra.yaml``."""
    doc = read_yaml(
        stack_dir / STACK_FILE,
        what="stack file",
        fix_missing=f"run `kbinfra init --dir {stack_dir}` first, or pass --dir",
    )
    return validate_stack(doc), doc


def parse_stack(text: str, where: Path) -> tuple[StackSpec, YamlDocument]:
    """Validate a stack file's ``text`` (one kept in a release record); ``where`` for errors."""
    doc = parse_yaml(text, where, what="stack file")
    return validate_stack(doc), doc


def validate_stack(doc: YamlDocument) -> StackSpec:
    data = _fill_service_defaults(doc.data)
    return validate(stack_model(), data, doc, what="stack file")


def _fill_service_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """An empty ``image:`` or absent ``port:`` means the service's default."""
    services = data.get("services")
    if not isinstance(services, dict):
        return data
    known = all_services()
    filled = {}
    for name, raw in services.items():
        if name in known and (raw is None or isinstance(raw, dict)):
            settings = dict(raw or {})
            if not settings.get("image"):
                settings["image"] = known[name].default_image
            settings.setdefault("port", known[name].default_host_port)
            settings.setdefault("enabled", known[name].enabled_by_default)
            filled[name] = settings
        else:
            filled[name] = raw
    return {**data, "services": filled}
