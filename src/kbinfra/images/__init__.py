"""Images kbinfra builds itself, and building and moving them.

A service whose image kbinfra builds keeps the build context in its own folder,
``services/<folder>/image/`` (Dockerfile, app, pinned requirements). The folders are shipped
inside the wheel: their code runs in the image and is never imported by kbinfra.
"""

from __future__ import annotations

from pathlib import Path

from kbinfra.errors import KbinfraError

IMAGE_FOLDER = "image"


def recipes() -> list[str]:
    """The services whose image kbinfra builds, in deployment order."""
    from kbinfra.registry import all_services, service_folder  # noqa: PLC0415 (loads services)

    return [
        name
        for name in all_services()
        if (folder := service_folder(name)) is not None and (folder / IMAGE_FOLDER).is_dir()
    ]


def recipe_dir(name: str) -> Path:
    """The build context folder of service ``name``'s image."""
    from kbinfra.registry import service_folder  # noqa: PLC0415 (loads services)

    folder = service_folder(name) if name in recipes() else None
    if folder is None:
        raise KbinfraError(
            f"no image recipe {name!r}",
            where="kbinfra images build",
            fix=f"kbinfra builds: {', '.join(recipes())}",
        )
    return folder / IMAGE_FOLDER


def only_recipe() -> str:
    """The one image kbinfra builds: the default of ``kbinfra images build``."""
    found = recipes()
    if len(found) != 1:
        raise KbinfraError(
            "kbinfra builds several images",
            where="kbinfra images build",
            fix=f"name one of {', '.join(found)}",
        )
    return found[0]
