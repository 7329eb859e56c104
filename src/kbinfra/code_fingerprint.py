"""What kbinfra's own code and data are, cheaply: the size and modification time of each file.

A result kept between runs (the render cache, the no-op record) is a function of kbinfra's
code, its templates and its built-in profiles as well as of the stack. In a wheel the
templates and profiles are inside the package; in a checkout they are the top-level
``templates/`` and ``profiles/`` folders, outside it, and are fingerprinted too.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from kbinfra.paths import data_dir

PACKAGE = Path(__file__).resolve().parent


def code_roots(package: Path = PACKAGE) -> list[Path]:
    """The package, and the data folders kbinfra reads that lie outside it."""
    roots = [package]
    for name in ("templates", "profiles"):
        try:
            folder = data_dir(name)
        except FileNotFoundError:
            continue
        if not folder.resolve().is_relative_to(package):
            roots.append(folder)
    return roots


def code_fingerprint(package: Path = PACKAGE) -> str:
    """Size and modification time of every file of kbinfra (its code, templates, profiles)."""
    digest = hashlib.sha256(sys.version.encode())
    for root in code_roots(package):
        stack = [root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.name == "__pycache__":
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file():
                        info = entry.stat()
                        line = f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\n"
                        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
