"""The stack folder's own names, and finding the folder from the current one.

Light on purpose (pathlib only): the fast no-op path (:mod:`kbinfra.noop_fast`), which runs
before typer, pydantic or docker-py are imported, and the CLI's options share one copy.
"""

from __future__ import annotations

from pathlib import Path

STACK_FILE = "kbinfra.yaml"
#: kbinfra's own state in the stack folder (the rotation's, the deployed copy, the no-op
#: record, the render cache).
STATE_DIR = Path(".kbinfra")
ROTATION_FILE = STATE_DIR / "rotation.json"
DEPLOYED_DIR = STATE_DIR / "deployed"


def find_stack_dir(start: Path) -> Path | None:
    """The nearest folder holding ``kbinfra.yaml``: ``start`` or a folder above it (as git
    finds its repository)."""
    for folder in (start, *start.parents):
        if (folder / STACK_FILE).is_file():
            return folder
    return None


def found_stack_dir(cwd: Path) -> Path | None:
    """:func:`find_stack_dir` from ``cwd``, as messages show it: the current folder as
    ``Path()``, a folder above it whole."""
    found = find_stack_dir(cwd)
    return None if found is None else (Path() if found == cwd else found)
