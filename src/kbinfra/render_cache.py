"""The stack's rendered files, kept from the last render while nothing they come from moved.

Rendering imports Jinja and runs every template: about a fifth of a no-op ``apply`` or
``plan``, which renders only to compare. The output is a pure function of the stack (its
validated spec, profile, secrets, TLS files and folder) and of kbinfra's own code and
templates, so it is kept in ``.kbinfra/render-cache.json`` under a key hashed from all of
them: the spec, profile and TLS files as read, every secret's value (hashed, never stored
apart from the files that hold it) and the size and modification time of every file of the
kbinfra package, its templates and its profiles (:mod:`kbinfra.code_fingerprint`). Anything
else, or a cache that does not read back as exactly what a render returns, and the stack is
rendered again.

The rendered files hold secrets (``.env`` files, ACLs, the TLS key), so the cache file is
0600 in a 0700 folder, as ``secrets.yaml`` is, and is written atomically. It is read as
untrusted input: every entry is checked by type, and a path must stay inside the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbinfra.code_fingerprint import code_fingerprint
from kbinfra.private_file import write_private_file
from kbinfra.service import RenderedFile
from kbinfra.stack_folder import STATE_DIR

if TYPE_CHECKING:
    from kbinfra.stack import Stack

CACHE_FILE = STATE_DIR / "render-cache.json"
FORMAT = 1


def render_key(stack: Stack, code: str) -> str:
    digest = hashlib.sha256(f"{FORMAT}\0{code}\0{stack.dir.resolve()}\0".encode())
    digest.update(stack.spec.model_dump_json().encode())
    digest.update(b"\0" + stack.profile.model_dump_json().encode())
    for name, value in sorted(stack.secrets.items()):
        digest.update(f"\0{name}\0{len(value)}\0".encode() + value.encode())
    for name, value in sorted(stack.overlap.items()):
        digest.update(f"\0overlap {name}\0{len(value)}\0".encode() + value.encode())
    digest.update(f"\0{stack.tls_certificate}\0{stack.tls_key}".encode())
    return digest.hexdigest()


def rendered(stack: Stack) -> list[RenderedFile]:
    """What :func:`kbinfra.render.render_stack` returns, from the cache when it still holds."""
    key = render_key(stack, code_fingerprint())
    path = stack.dir / CACHE_FILE
    files = read_cache(path, key)
    if files is not None:
        return files
    from kbinfra.render import render_stack  # noqa: PLC0415 (jinja2 only when rendering)

    files = render_stack(stack)
    # no cache where the folder cannot hold one: the next command renders again
    with contextlib.suppress(OSError):
        write_cache(path, key, files)
    return files


def read_cache(path: Path, key: str) -> list[RenderedFile] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("key") != key:
        return None
    entries = document.get("files")
    if not isinstance(entries, list):
        return None
    files = [_entry(entry) for entry in entries]
    if any(file is None for file in files):
        return None
    return [file for file in files if file is not None]


def _entry(entry: Any) -> RenderedFile | None:
    if not isinstance(entry, list) or len(entry) != 4:
        return None
    path, text, mode, secret = entry
    if not (
        isinstance(path, str)
        and isinstance(text, str)
        and type(mode) is int
        and isinstance(secret, bool)
        and 0 <= mode <= 0o777
        and _inside(path)
    ):
        return None
    return RenderedFile(path=path, text=text, mode=mode, secret=secret)


def _inside(path: str) -> bool:
    normal = posixpath.normpath(path)
    return bool(path) and normal == path and not normal.startswith(("/", "../")) and normal != ".."


def write_cache(path: Path, key: str, files: list[RenderedFile]) -> None:
    document = {"key": key, "files": [[f.path, f.text, f.mode, f.secret] for f in files]}
    write_private_file(path, json.dumps(document), durable=False, folder_mode=0o700)
