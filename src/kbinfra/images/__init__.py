"""Images kbinfra builds itself, one folder per image (``embeddings/``), and building them.

The folders are build contexts shipped inside the wheel: their code runs in the image and is
never imported by kbinfra.
"""

from __future__ import annotations

from pathlib import Path

from kbinfra.errors import KbinfraError

RECIPES_DIR = Path(__file__).resolve().parent
RECIPES = ("embeddings",)


def recipe_dir(name: str) -> Path:
    """The build context folder of image ``name``."""
    if name not in RECIPES:
        raise KbinfraError(
            f"no image recipe {name!r}",
            where="kbinfra images build",
            fix=f"kbinfra builds: {', '.join(RECIPES)}",
        )
    return RECIPES_DIR / name
