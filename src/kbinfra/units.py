"""Human sizes (``16GB``, ``16GiB``, ``512MB``) to whole MiB or GB.

Memory sizes are binary whatever the suffix says (``16GB`` of RAM is 16 GiB, as Docker's
``--memory 16g``); storage sizes are decimal (``1TB`` is 1000 GB, as disks are sold).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

#: Far above any host (64 TiB of RAM, 100 PB of disk), and far below what breaks arithmetic:
#: a size past these is a typo or ``.inf``, which would overflow or print as invalid JSON.
MAX_MEMORY_MIB = 64 * 1024 * 1024
MAX_STORAGE_GB = 100_000_000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[kmgt])?\s*$", re.IGNORECASE)
_POWER = {"K": 1, "M": 2, "G": 3, "T": 4}


def _split(text: str) -> tuple[float, int] | None:
    match = _SIZE.match(text)
    if match is None:
        return None
    number, unit = match.groups()
    return float(number), _POWER[unit[0].upper()] if unit else 0


def parse_memory_mib(value: object) -> int:
    """``16GB`` → 16384. A bare number is already MiB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 16GB or 512MB")
    if isinstance(value, int | float):
        return _bounded(value, MAX_MEMORY_MIB, "MiB", whole=int)
    parsed = _split(str(value))
    if parsed is None:
        raise ValueError(f"{value!r} is not a size; write it like 16GB, 16GiB or 512MB")
    number, power = parsed
    if power == 0:
        return _bounded(number, MAX_MEMORY_MIB, "MiB", whole=int)
    return _bounded(number * 1024 ** (power - 2), MAX_MEMORY_MIB, "MiB", whole=round)


def parse_storage_gb(value: object) -> int:
    """``1TB`` → 1000, ``500GB`` → 500. A bare number is already GB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 500GB or 2TB")
    if isinstance(value, int | float):
        return _bounded(value, MAX_STORAGE_GB, "GB", whole=int)
    parsed = _split(str(value))
    if parsed is None:
        raise ValueError(f"{value!r} is not a size; write it like 500GB or 2TB")
    number, power = parsed
    if power == 0:
        return _bounded(number, MAX_STORAGE_GB, "GB", whole=int)
    return _bounded(number * 1000 ** (power - 3), MAX_STORAGE_GB, "GB", whole=round)


def _bounded(value: float, limit: int, unit: str, *, whole: Callable[[float], int]) -> int:
    """``value`` as a whole number of ``unit``: finite, above zero, at most ``limit``."""
    if not math.isfinite(value):
        raise ValueError(f"a size must be a finite number, not {value}")
    if value > limit:
        raise ValueError(f"a size must be at most {limit} {unit}; this is {value:g} {unit}")
    number = whole(value)
    if number <= 0:
        raise ValueError("a size must be greater than zero")
    return number


def format_mib(mib: int) -> str:
    """1536 → ``1536MB``, 16384 → ``16GB``: the units PostgreSQL and Redis read."""
    if mib % 1024 == 0:
        return f"{mib // 1024}GB"
    return f"{mib}MB"
