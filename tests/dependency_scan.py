"""Which third-party modules kbinfra's own code imports: read from its source, not listed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "kbinfra"
# Runs inside the embedding image, in that image's own venv (its requirements.txt).
IN_IMAGE = SRC / "services" / "embeddings" / "image"


def third_party_imports() -> set[str]:
    """Top-level names of every module kbinfra's own code imports, at the top or lazily."""
    found = set()
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(IN_IMAGE):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update(name.partition(".")[0] for name in names)
    return {name for name in found if name not in sys.stdlib_module_names and name != "kbinfra"}
