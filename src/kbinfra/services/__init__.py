"""The registry of services: every module in this package that defines ``SERVICE``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from kbinfra.services.base import Service

_NOT_SERVICES = {"base"}
_STAGE_ORDER = {"data": 0, "service": 1, "edge": 2, "monitoring": 3}


@cache
def all_services() -> dict[str, Service]:
    """Every known service by name, in deployment order (data stores first, monitoring last)."""
    found: list[Service] = []
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name in _NOT_SERVICES or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        service = getattr(module, "SERVICE", None)
        if isinstance(service, Service):
            found.append(service)
    found.sort(key=lambda s: (_STAGE_ORDER[s.stage], s.name))
    return {service.name: service for service in found}


def get_service(name: str) -> Service:
    return all_services()[name]
