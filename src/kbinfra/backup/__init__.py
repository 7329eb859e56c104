"""Backups: the machinery that names no service; each data service's handler is in its folder.

``handler_for(name)`` returns the ``HANDLER`` of ``kbinfra/services/<folder>/backup.py``
(:func:`kbinfra.registry.service_part`). A service without a ``backup.py`` holds no data
kbinfra backs up (its configuration is in the backup's ``stack/`` folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kbinfra.backup.handler import BackupHandler


def handler_for(service: str) -> BackupHandler | None:
    """The backup handler of ``service``, or None when it holds no data to back up."""
    from kbinfra.backup.handler import BackupHandler  # noqa: PLC0415
    from kbinfra.registry import service_part  # noqa: PLC0415

    module = service_part(service, "backup")
    handler = getattr(module, "HANDLER", None) if module is not None else None
    if isinstance(handler, BackupHandler) and handler.service == service:
        return handler
    return None
