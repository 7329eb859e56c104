"""The registry of services: one folder per service, found by one rule.

Every folder ``kbinfra/services/<folder>/`` holds ``service.py``, which defines ``SERVICES``:
the folder's own service first, then the services that exist only for it (its exporter).
Beside it, optional modules hold the rest of the folder's story, for its first service:
``render_check.py`` (``kbinfra render --check``), ``probe.py`` (``kbinfra check`` and
``bench``), ``backup.py`` (``kbinfra backup`` and ``restore``), ``upgrade.py`` (``kbinfra
upgrade``) and ``rotate.py`` (``kbinfra secrets rotate``). Nothing else in kbinfra
knows a service's name.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Literal

from kbinfra import services as services_package
from kbinfra.service import STAGE_ORDER, Service, ServiceContext

#: The optional modules of a service's folder, beside ``service.py``.
Part = Literal["render_check", "probe", "backup", "upgrade", "rotate"]


@cache
def _folders() -> dict[str, tuple[Service, ...]]:
    """Each service folder's package (``kbinfra.services.postgres``) and its ``SERVICES``."""
    found: dict[str, tuple[Service, ...]] = {}
    for module_info in pkgutil.iter_modules(services_package.__path__):
        if not module_info.ispkg or module_info.name.startswith("_"):
            continue
        package = f"{services_package.__name__}.{module_info.name}"
        declared = getattr(importlib.import_module(f"{package}.service"), "SERVICES", ())
        found[package] = tuple(s for s in declared if isinstance(s, Service))
    return found


@cache
def all_services() -> dict[str, Service]:
    """Every known service by name, in deployment order (data stores first, monitoring last)."""
    found = [service for services in _folders().values() for service in services]
    found.sort(key=lambda s: (STAGE_ORDER[s.stage], s.name))
    return {service.name: service for service in found}


def get_service(name: str) -> Service:
    return all_services()[name]


def enabled_services(ctx: ServiceContext) -> list[tuple[Service, ServiceContext]]:
    """Every service enabled in ``ctx``'s stack, in deployment order, with the context it has
    there: how one service asks the others what it needs of them (scrape targets, routes)."""
    return [
        (
            service,
            ctx._replace(
                name=name,
                settings=service.settings_in(ctx.stack),
                resources=service.resources(ctx.profile),
            ),
        )
        for name, service in all_services().items()
        if name in ctx.enabled
    ]


@cache
def _owners() -> dict[str, str]:
    """Service name → the package of the folder it owns (its first service)."""
    return {services[0].name: package for package, services in _folders().items() if services}


def service_part(name: str, part: Part) -> ModuleType | None:
    """``kbinfra.services.<folder>.<part>`` of the folder service ``name`` owns, or None
    when the folder has no such module (or ``name`` owns no folder: an exporter)."""
    package = _owners().get(name)
    if package is None:
        return None
    qualified = f"{package}.{part}"
    if importlib.util.find_spec(qualified) is None:
        return None
    return importlib.import_module(qualified)


def service_folder(name: str) -> Path | None:
    """The folder of the service ``name`` owns (its ``templates/`` live there), or None."""
    package = _owners().get(name)
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
