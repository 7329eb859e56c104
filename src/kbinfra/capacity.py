"""Does a profile fit the engine it is deployed to? A pure decision from observed facts.

The rule (docs/apply.md explains why):

- **memory**: the memory limits of the enabled services' containers, added up, must not
  exceed the memory the engine reports (``docker info`` ``MemTotal``). Each service tunes
  itself to its limit (PostgreSQL's ``shared_buffers``, Redis' ``maxmemory``, Qdrant's
  caches); a sum beyond the machine's memory ends in the kernel's OOM killer under load.
- **CPUs**: no single container may be given more CPUs than the engine has (``NCPU``):
  Docker refuses such a ``--cpus`` when it creates the container, halfway through an apply.
  CPUs handed out beyond the engine's in total are only a warning: CPU time is shared, so
  services compete under load but keep working.

The profile's declared ``host`` is not part of the rule: what the engine enforces and what
the services tune to are the allocations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

from kbinfra.errors import KbinfraError

if TYPE_CHECKING:
    from kbinfra.service import Service
    from kbinfra.spec.profile import Profile
    from kbinfra.stack import Stack

MIB = 1024 * 1024


class EngineCapacity(NamedTuple):
    """What a Docker Engine reports of its machine: CPUs and memory (MiB)."""

    cpus: int
    memory_mb: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, where: str) -> EngineCapacity:
        """Read ``NCPU`` and ``MemTotal`` (bytes) from the engine's ``docker info``."""
        cpus, memory = info.get("NCPU"), info.get("MemTotal")
        if not _positive_int(cpus) or not _positive_int(memory):
            raise KbinfraError(
                f"the Docker Engine reports no usable CPU count or memory "
                f"(NCPU={cpus!r}, MemTotal={memory!r})",
                where=where,
                fix="check what `docker info` says on the target",
            )
        return cls(cpus=cpus, memory_mb=memory // MIB)

    def describe(self) -> str:
        return f"{self.cpus} CPUs, {gib(self.memory_mb)} of memory"


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class Demand(NamedTuple):
    """What one enabled service's container is given."""

    service: str
    cpus: float
    memory_mb: int


class Fit(NamedTuple):
    """The decision for one profile on one engine."""

    profile: str
    engine: EngineCapacity
    demands: tuple[Demand, ...]
    shortfalls: tuple[str, ...]
    warnings: tuple[str, ...]
    #: The largest built-in profile that fits this engine with the same services, if any.
    fitting_profile: str | None = None

    @property
    def fits(self) -> bool:
        return not self.shortfalls

    @property
    def memory_mb(self) -> int:
        return sum(d.memory_mb for d in self.demands)

    @property
    def cpus(self) -> float:
        return round(sum(d.cpus for d in self.demands), 2)

    def refusal(self) -> str:
        """One line: which profile, what is short, on what."""
        return (
            f"profile {self.profile} does not fit the engine "
            f"({self.engine.describe()}): {'; '.join(self.shortfalls)}"
        )

    def fix(self) -> str:
        instead = (
            f"set `profile: {self.fitting_profile}` in kbinfra.yaml "
            "(the largest built-in profile that fits)"
            if self.fitting_profile
            else "no built-in profile fits: disable services or write a smaller profile "
            "(`extends: minimum`, see docs/profiles.md)"
        )
        return f"{instead}, or pass --allow-oversized-profile to deploy it anyway"

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "fits": self.fits,
            "engine": {"cpus": self.engine.cpus, "memory_mb": self.engine.memory_mb},
            "wanted": {
                "cpus": _number(self.cpus),
                "memory_mb": self.memory_mb,
                "largest_cpus": _number(max((d.cpus for d in self.demands), default=0)),
            },
            "shortfalls": list(self.shortfalls),
            "warnings": list(self.warnings),
            "fitting_profile": self.fitting_profile,
        }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def gib(memory_mb: int) -> str:
    return f"{memory_mb / 1024:.1f} GiB"


def demands_of(services: Mapping[str, Service], profile: Profile) -> tuple[Demand, ...]:
    """The CPUs and memory each of ``services`` is given under ``profile``."""
    return tuple(
        Demand(name, resources.cpus, resources.memory_mb)
        for name, service in services.items()
        for resources in (service.resources(profile),)
    )


def shortfalls(demands: Iterable[Demand], engine: EngineCapacity) -> tuple[str, ...]:
    """Why ``demands`` do not fit ``engine``; empty when they do."""
    demands = tuple(demands)
    found = []
    memory = sum(d.memory_mb for d in demands)
    if memory > engine.memory_mb:
        found.append(
            f"the enabled services are given {gib(memory)} of memory, "
            f"{gib(memory - engine.memory_mb)} more than the engine has"
        )
    too_wide = sorted(
        (d for d in demands if d.cpus > engine.cpus), key=lambda d: (-d.cpus, d.service)
    )
    if too_wide:
        listed = ", ".join(f"{d.service} {d.cpus:g}" for d in too_wide)
        counted = "1 service is" if len(too_wide) == 1 else f"{len(too_wide)} services are"
        found.append(
            f"{counted} given more CPUs than the engine's {engine.cpus} ({listed}), "
            "which Docker refuses"
        )
    return tuple(found)


def cpu_warnings(demands: Iterable[Demand], engine: EngineCapacity) -> tuple[str, ...]:
    total = round(sum(d.cpus for d in demands), 2)
    if total <= engine.cpus:
        return ()
    return (
        f"the enabled services are given {total:g} CPUs on an engine with {engine.cpus}: "
        "they will compete under load",
    )


def assess_fit(
    profile: str,
    demands: Sequence[Demand],
    engine: EngineCapacity,
    candidates: Iterable[tuple[str, Sequence[Demand]]] = (),
) -> Fit:
    """Whether ``demands`` (``profile``'s) fit ``engine``; when not, the largest of
    ``candidates`` (built-in profiles with the same services) that does, by memory given."""
    found = shortfalls(demands, engine)
    fitting = None
    if found:
        fitting_candidates = [
            (sum(d.memory_mb for d in wanted), name)
            for name, wanted in candidates
            if name != profile and not shortfalls(wanted, engine)
        ]
        if fitting_candidates:
            fitting = max(fitting_candidates)[1]
    return Fit(
        profile=profile,
        engine=engine,
        demands=tuple(demands),
        shortfalls=found,
        warnings=cpu_warnings(demands, engine),
        fitting_profile=fitting,
    )


def stack_fit(stack: Stack, engine: EngineCapacity) -> Fit:
    """:func:`assess_fit` for a stack's enabled services, against the built-in profiles."""
    from kbinfra.spec.profile import builtin_profile_names, load_profile  # noqa: PLC0415

    candidates = (
        (name, demands_of(stack.services, load_profile(name).profile))
        for name in builtin_profile_names()
    )
    return assess_fit(
        stack.profile.name, demands_of(stack.services, stack.profile), engine, candidates
    )
