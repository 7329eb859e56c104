"""``kbinfra render --check``: validate rendered files with the real tools, where installed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kbinfra.stack import Stack


@dataclass(frozen=True)
class CheckResult:
    path: str
    tool: str
    ok: bool
    detail: str = ""
    line: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "tool": self.tool,
            "ok": self.ok,
            "detail": self.detail,
            "line": self.line,
        }


def parse_check(out: Path, relative: str) -> CheckResult:
    """YAML and JSON files must at least parse."""
    path = out / relative
    try:
        if relative.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
            return CheckResult(relative, "json parse", True)
        yaml.safe_load(path.read_text(encoding="utf-8"))
        return CheckResult(relative, "yaml parse", True)
    except json.JSONDecodeError as error:
        return CheckResult(relative, "json parse", False, error.msg, error.lineno)
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        return CheckResult(relative, "yaml parse", False, str(error.problem), line)


def validate_tree(stack: Stack, out: Path) -> list[CheckResult]:
    results = []
    for relative in sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()):
        if relative.endswith((".yml", ".yaml", ".json")):
            results.append(parse_check(out, relative))
    return results
