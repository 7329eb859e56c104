"""``kbinfra upgrade``: a new image for a service, refused when its data cannot follow.

Each service that keeps data in a format its version owns says what it runs now and whether
a new image can take that data over, in ``kbinfra/services/<folder>/upgrade.py``:

- ``running_version(probe: ProbeContext) -> str``: the version of what runs (or of its data
  on disk: PostgreSQL's ``PG_VERSION``), asked of the service itself;
- ``upgrade_refusal(running: str, new_image: str, settings) -> Refusal | None``: why the new
  image cannot take over, and the way to do it instead; None when it can.

A service without that module (nginx, the exporters, the embedding service) keeps no data
that a version owns: any image is fine. Nothing here knows a service's name.

The steps of an upgrade (:func:`plan_upgrade` decides, the command carries out): every
refusal is reported before anything changes; then a backup of the affected stores, verified
as it is written; then the new images are applied, health-gated, for those services only;
then kbinfra.yaml names the new images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from kbinfra.errors import KbinfraError
from kbinfra.names import normalize_ref

if TYPE_CHECKING:
    from pathlib import Path

    from kbinfra.containers import ObservedContainer
    from kbinfra.probing.probe import ProbeContext
    from kbinfra.stack import Stack
    from kbinfra.targets import Target

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def image_version(image: str) -> tuple[int, ...] | None:
    """The version an image's tag starts with: ``qdrant/qdrant:v1.17.2`` → (1, 17, 2),
    ``postgres:16-bookworm`` → (16,); None when the tag says none (a digest, ``latest``)."""
    name, _, digest = image.partition("@")
    if digest:
        return None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    return version_tuple(last.rsplit(":", 1)[1])


def version_tuple(text: str) -> tuple[int, ...] | None:
    """``1.16.3`` → (1, 16, 3); ``v7.0`` → (7, 0); None when it does not start with one."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def shown(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class Refusal:
    """Why an image cannot take over a service's data, and what to do instead."""

    reason: str
    how: str


class UpgradePart(Protocol):
    """What ``kbinfra/services/<folder>/upgrade.py`` offers."""

    def running_version(self, probe: ProbeContext) -> str: ...

    def upgrade_refusal(self, running: str, new_image: str, settings: Any) -> Refusal | None: ...


@dataclass(frozen=True)
class UpgradeStep:
    """One service's upgrade: from which image to which, and whether its data can follow."""

    service: str
    old_image: str
    new_image: str
    running_version: str | None
    refusal: Refusal | None
    backed_up: bool  # a store: backed up before the new image starts

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "from": self.old_image,
            "to": self.new_image,
            "running_version": self.running_version,
            "allowed": self.refusal is None,
            "reason": self.refusal.reason if self.refusal else None,
            "how": self.refusal.how if self.refusal else None,
            "backed_up": self.backed_up,
        }

    def row(self) -> tuple[str, ...]:
        verdict = "ok" if self.refusal is None else f"refused: {self.refusal.reason}"
        return (
            self.service,
            self.old_image,
            self.new_image,
            self.running_version or "-",
            "yes" if self.backed_up else "no (keeps no data)",
            verdict,
        )


# ---------------------------------------------------------------- the new stack file
def with_images(stack_text: str, images: Mapping[str, str], *, where: str) -> str:
    """``stack_text`` (kbinfra.yaml) with ``services.<name>.image`` set for each of
    ``images``; every other value, comment and key order kept (a ruamel.yaml round trip)."""
    import io  # noqa: PLC0415

    from ruamel.yaml import YAML  # noqa: PLC0415
    from ruamel.yaml.error import YAMLError  # noqa: PLC0415

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.indent(mapping=2, sequence=4, offset=2)
    round_trip.width = 4096
    try:
        document = round_trip.load(stack_text)
    except YAMLError:
        raise KbinfraError(
            "kbinfra.yaml is not valid YAML", where=where, fix="fix it, then upgrade"
        ) from None
    services = document.get("services") if isinstance(document, dict) else None
    for name, image in images.items():
        entry = services.get(name) if isinstance(services, dict) else None
        if entry is None:
            services[name] = {"image": image}  # type: ignore[index]
        elif isinstance(entry, dict):
            entry["image"] = image
        else:
            raise KbinfraError(
                f"services.{name} in kbinfra.yaml is not a mapping",
                where=where,
                fix=f"write it as `{name}: {{image: ...}}`",
            )
    out = io.StringIO()
    round_trip.dump(document, out)
    return out.getvalue()


def new_image_for(current: str, to: str) -> str:
    """``--to``: a whole image reference (has ``/`` or ``:``), or a tag for ``current``'s
    repository."""
    if "/" in to or ":" in to or "@" in to:
        return to
    name = current.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    repository = name.rsplit(":", 1)[0] if ":" in last else name
    return f"{repository}:{to}"


# ---------------------------------------------------------------- deciding
def upgrade_part(stack: Stack, service: str) -> UpgradePart | None:
    from kbinfra.registry import service_part  # noqa: PLC0415

    module = service_part(stack.services[service].folder_service, "upgrade")
    return cast("UpgradePart | None", module)


def plan_upgrade(
    current: Stack,
    new: Stack,
    target: Target,
    *,
    services: Sequence[str],
    containers: Mapping[str, ObservedContainer],
    stores: Sequence[str],
) -> list[UpgradeStep]:
    """Each of ``services``' step from its running container to ``new``'s image; the
    version it runs is asked of the running service (through ``current``'s credentials)."""
    from kbinfra.probing.probe import ProbeContext  # noqa: PLC0415

    steps = []
    for name in services:
        container = containers.get(name)
        if container is None or container.state != "running":
            raise KbinfraError(
                f"{name} is not running, so its version cannot be asked",
                fix="`kbinfra apply` first (or `kbinfra status` to see why it is down)",
            )
        new_image = new.contexts[name].image
        part = upgrade_part(current, name)
        running: str | None = None
        refusal: Refusal | None = None
        if part is not None:
            with ProbeContext(current, current.services[name], target) as probe:
                running = part.running_version(probe)
            refusal = part.upgrade_refusal(running, new_image, new.contexts[name].settings)
        steps.append(
            UpgradeStep(name, container.image, new_image, running, refusal, name in stores)
        )
    return steps


def refuse(steps: Sequence[UpgradeStep]) -> None:
    """Stop before any change when a step is refused: the first one's reason and way."""
    refused = [step for step in steps if step.refusal is not None]
    if refused:
        first = refused[0]
        assert first.refusal is not None
        others = f" (and {len(refused) - 1} more: see the table)" if len(refused) > 1 else ""
        raise KbinfraError(
            f"{first.service}: {first.refusal.reason}{others}; nothing was changed",
            where=f"{first.old_image} → {first.new_image}",
            fix=first.refusal.how,
        )


def changed_images(new: Stack, containers: Mapping[str, ObservedContainer]) -> list[str]:
    """Enabled services whose image in ``new`` is not what their container runs."""
    return [
        name
        for name in new.services
        if name in containers
        and normalize_ref(containers[name].image) != normalize_ref(new.contexts[name].image)
    ]


def stack_file_path(stack: Stack) -> Path:
    from kbinfra.spec.stack import STACK_FILE  # noqa: PLC0415

    return stack.dir / STACK_FILE
