"""Human sizes (``16GB``, ``16GiB``, ``512MB``) to whole MiB or GB.

Memory sizes are binary whatever the suffix says (``16GB`` of RAM is 16 GiB, as Docker's
``--memory 16g``); storage sizes are decimal (``1TB`` is 1000 GB, as disks are sold).
"""

from __future__ import annotations

import re

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
        return _positive(int(value))
    parsed = _split(str(value))
    if parsed is None:
        raise ValueError(f"{value!r} is not a size; write it like 16GB, 16GiB or 512MB")
    number, power = parsed
    if power == 0:
        return _positive(int(number))
    return _positive(round(number * 1024 ** (power - 2)))


def parse_storage_gb(value: object) -> int:
    """``1TB`` → 1000, ``500GB`` → 500. A bare number is already GB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 500GB or 2TB")
    if isinstance(value, int | float):
        return _positive(int(value))
    parsed = _split(str(value))
    if parsed is None:
        raise ValueError(f"{value!r} is not a size; write it like 500GB or 2TB")
    number, power = parsed
    if power == 0:
        return _positive(int(number))
    return _positive(round(number * 1000 ** (power - 3)))


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("a size must be greater than zero")
    return value


def format_mib(mib: int) -> str:
    """1536 → ``1536MB``, 16384 → ``16GB``: the units PostgreSQL and Redis read."""
    if mib % 1024 == 0:
        return f"{mib // 1024}GB"
    return f"{mib}MB"
