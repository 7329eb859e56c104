"""Hardware profiles: what the host has and how much of it each part of the stack may use."""

from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from kbinfra.errors import SpecError
from kbinfra.paths import profiles_dir
from kbinfra.spec.values import ProfileName, TextLine
from kbinfra.spec.yamlfile import read_yaml, validate
from kbinfra.units import parse_memory_mib, parse_storage_gb

MemoryMiB = Annotated[int, BeforeValidator(parse_memory_mib)]
StorageGB = Annotated[int, BeforeValidator(parse_storage_gb)]
Cpus = Annotated[float, Field(gt=0, le=1024, multiple_of=0.05, allow_inf_nan=False)]
DiskKind = Literal["ssd", "nvme", "hdd"]

#: The budgets a profile hands out. Every deployable service draws from one of them.
ALLOCATION_GROUPS = (
    "qdrant",
    "postgres",
    "redis",
    "embeddings",
    "unstructured",
    "app",
    "monitoring",
)

#: Faster than any NIC sold; ``.inf`` would print as ``Infinity``, which is not JSON.
MAX_NETWORK_GBPS = 10_000

#: Below this share of host memory left for the OS and page cache, a profile gets a warning.
MIN_HEADROOM_FRACTION = 0.10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Host(_Strict):
    cpus: Annotated[int, Field(gt=0, le=4096)]
    memory_mb: MemoryMiB = Field(alias="memory")
    storage_gb: StorageGB = Field(alias="storage")
    disk: DiskKind = "ssd"
    network_gbps: Annotated[float, Field(gt=0, le=MAX_NETWORK_GBPS, allow_inf_nan=False)] = 1


class Allocation(_Strict):
    cpus: Cpus
    memory_mb: MemoryMiB = Field(alias="memory")
    storage_gb: StorageGB = Field(alias="storage")
    pids: Annotated[int, Field(ge=32, le=4_194_304)] = Field(
        1024, description="Processes and threads each container of this budget may run"
    )


class Allocations(_Strict):
    qdrant: Allocation
    postgres: Allocation
    redis: Allocation
    embeddings: Allocation
    unstructured: Allocation
    app: Allocation
    monitoring: Allocation

    def items(self) -> list[tuple[str, Allocation]]:
        return [(name, getattr(self, name)) for name in ALLOCATION_GROUPS]


class Profile(_Strict):
    name: ProfileName
    description: TextLine = ""
    host: Host
    services: Allocations

    @model_validator(mode="after")
    def _fits_on_host(self) -> Self:
        memory = sum(a.memory_mb for _, a in self.services.items())
        if memory > self.host.memory_mb:
            raise ValueError(
                f"services are given {memory} MiB of memory but the host has "
                f"{self.host.memory_mb} MiB; lower an allocation or raise host.memory"
            )
        storage = sum(a.storage_gb for _, a in self.services.items())
        if storage > self.host.storage_gb:
            raise ValueError(
                f"services are given {storage} GB of storage but the host has "
                f"{self.host.storage_gb} GB; lower an allocation or raise host.storage"
            )
        return self

    def warnings(self) -> list[str]:
        """Things that work but deserve a second look: thin OS headroom, CPU overcommit."""
        found = []
        memory = sum(a.memory_mb for _, a in self.services.items())
        headroom = self.host.memory_mb - memory
        if headroom < self.host.memory_mb * MIN_HEADROOM_FRACTION:
            found.append(
                f"profile {self.name}: services take {memory} of {self.host.memory_mb} MiB, "
                f"leaving "
                f"{headroom} MiB for the OS and page cache (under "
                f"{MIN_HEADROOM_FRACTION:.0%}); PostgreSQL and Qdrant read faster with more"
            )
        cpus = sum(a.cpus for _, a in self.services.items())
        if cpus > self.host.cpus:
            found.append(
                f"profile {self.name}: services are given {cpus:g} CPUs on a {self.host.cpus}-CPU "
                "host; they will compete under load"
            )
        return found

    def summary(self) -> dict[str, Any]:
        """The ``profiles show --output json`` shape: integers in MiB and GB."""
        return {
            "name": self.name,
            "host": {
                "cpus": self.host.cpus,
                "memory_mb": self.host.memory_mb,
                "storage_gb": self.host.storage_gb,
                "disk": self.host.disk,
                "network_gbps": _number(self.host.network_gbps),
            },
            "services": {
                name: {
                    "cpus": _number(a.cpus),
                    "memory_mb": a.memory_mb,
                    "storage_gb": a.storage_gb,
                }
                for name, a in self.services.items()
            },
        }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class LoadedProfile(NamedTuple):
    profile: Profile
    source: Path


def builtin_profile_names() -> list[str]:
    return sorted(path.stem for path in profiles_dir().glob("*.yaml"))


def load_profile(ref: str, *, relative_to: Path | None = None) -> LoadedProfile:
    """A built-in profile by name, or a user profile by path (which may ``extends:`` another)."""
    return _load(ref, relative_to=relative_to, chain=())


def _resolve(ref: str, relative_to: Path | None) -> Path:
    looks_like_path = "/" in ref or ref.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(ref).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return path
    builtin = profiles_dir() / f"{ref}.yaml"
    if not builtin.is_file():
        names = ", ".join(builtin_profile_names())
        raise SpecError(
            f"unknown profile {ref!r}",
            fix=f"use one of {names}, or the path of your own profile YAML",
        )
    return builtin


def _load(ref: str, *, relative_to: Path | None, chain: tuple[Path, ...]) -> LoadedProfile:
    path = _resolve(ref, relative_to)
    if path.resolve() in chain:
        raise SpecError("profiles extend each other in a loop", where=str(path))
    doc = read_yaml(
        path, what="profile", fix_missing="check the path, or run `kbinfra profiles list`"
    )
    data = dict(doc.data)
    parent_ref = data.pop("extends", None)
    data.setdefault("name", path.stem)
    if parent_ref is not None:
        if not isinstance(parent_ref, str) or not parent_ref.strip():
            raise SpecError("extends: must name a profile or a path", where=doc.where(("extends",)))
        extends_line = doc.where(("extends",))
        try:
            parent_path = _resolve(parent_ref, path.parent)
        except SpecError as error:
            raise SpecError(error.what, where=extends_line, fix=error.fix) from None
        if not parent_path.is_file():
            raise SpecError(
                f"extends: {parent_ref!r} is not a profile file ({parent_path})",
                where=extends_line,
                fix="name a built-in profile or the path of a profile YAML",
            )
        # Errors inside the parent name the parent's own file and line.
        parent = _load(parent_ref, relative_to=path.parent, chain=(*chain, path.resolve()))
        data = _merge(parent.profile.model_dump(by_alias=True), data)
    return LoadedProfile(profile=validate(Profile, data, doc, what="profile"), source=path)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings: the override wins key by key, lists and scalars are replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
