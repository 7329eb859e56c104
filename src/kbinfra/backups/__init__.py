"""Backups: one module per data service, found by the service's module name.

``handler_for("postgres")`` imports ``kbinfra.backups.postgres`` and returns its
``HANDLER``. A service without such a module holds no data kbinfra backs up (its
configuration is in the backup's ``stack/`` folder). Nothing here names a service.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kbinfra.backups.base import BackupHandler

#: Modules of this package that are not a service's handler.
_NOT_HANDLERS = frozenset({"base", "manifest", "retention", "streams", "run", "stackfiles"})


def handler_for(service: str) -> BackupHandler | None:
    """The backup handler of ``service``, or None when it holds no data to back up."""
    from kbinfra.backups.base import BackupHandler  # noqa: PLC0415

    module_name = service.replace("-", "_")
    if (
        module_name in _NOT_HANDLERS
        or module_name.startswith("_")
        or not module_name.isidentifier()
    ):
        return None
    qualified = f"{__name__}.{module_name}"
    if importlib.util.find_spec(qualified) is None:
        return None
    handler = getattr(importlib.import_module(qualified), "HANDLER", None)
    if isinstance(handler, BackupHandler) and handler.service == service:
        return handler
    return None
