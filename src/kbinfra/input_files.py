"""The files this process loaded the stack from: what a kept result (the no-op record) is
a function of on this side, besides kbinfra's own code."""

from __future__ import annotations

from pathlib import Path

#: Every input file read so far, absolute, in the order first read.
_READ: dict[str, None] = {}


def noted(path: Path) -> Path:
    """Remember ``path`` as an input of this run; returns it."""
    _READ.setdefault(str(path.resolve()), None)
    return path


def read_so_far() -> list[str]:
    return list(_READ)
