"""Validate a rendered JSON file against the pydantic model it was built from.

Shared by services whose rendered file is JSON for another program to read (the embedding
service's config, Unstructured's strategies).
"""

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from kbinfra.service import CheckResult


def check_json_file(out: Path, relative: str, model: type[BaseModel], tool: str) -> CheckResult:
    """Parse ``out/relative`` and validate it with ``model``; the first error, with its line."""
    text = (out / relative).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return CheckResult(relative, tool, "failed", error.msg, error.lineno)
    try:
        model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc = tuple(first["loc"])
        where = ".".join(str(part) for part in loc) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        return CheckResult(relative, tool, "failed", f"{where}: {message}", json_line(text, loc))
    return CheckResult(relative, tool, "ok")


def json_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line of the deepest key of ``loc`` found in order (indented JSON, one key a line)."""
    lines = text.splitlines()
    found: int | None = None
    start = 0
    for part in loc:
        if not isinstance(part, str):
            continue
        needle = json.dumps(part) + ":"
        for index in range(start, len(lines)):
            if lines[index].lstrip().startswith(needle):
                found, start = index + 1, index + 1
                break
        else:
            break
    return found
