"""The one Jinja environment: every template kbinfra renders, strict and deterministic.

A service's templates are in its folder (``services/<folder>/templates/``) and are named
``<service>/<file>.j2``; the templates that belong to no service (``_stack/``, ``_init/``)
are in the shipped ``templates`` folder.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from kbinfra import __version__
from kbinfra.paths import templates_dir
from kbinfra.registry import all_services, service_folder
from kbinfra.spec.yamlfile import dump_yaml
from kbinfra.units import format_mib


def _to_yaml(value: Any) -> str:
    return dump_yaml(value).rstrip("\n")


def _to_json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, sort_keys=True, indent=indent)


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates under the user's cache dir: compiling them all costs ~0.1 s a run.

    Jinja keys each entry by the template's source checksum, so a changed template is never
    served stale. No cache when the folder cannot be created (read-only home, sandbox).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "kbinfra" / f"jinja-{__version__}-{jinja2.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder))


def _stack_loader() -> jinja2.BaseLoader:
    """The templates that belong to no service: ``_stack/`` (exports) and ``_init/``."""
    return jinja2.FileSystemLoader(str(templates_dir()))


def _service_loaders() -> dict[str, jinja2.BaseLoader]:
    """``<service>/<file>.j2`` is ``kbinfra/services/<folder>/templates/<file>.j2``."""
    return {
        name: jinja2.FileSystemLoader(str(folder))
        for name in all_services()
        if (folder := service_templates(name)) is not None
    }


def service_templates(name: str) -> Path | None:
    """The ``templates/`` folder of service ``name``, or None when it renders none."""
    folder = service_folder(name)
    templates = folder / "templates" if folder is not None else None
    return templates if templates is not None and templates.is_dir() else None


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.PrefixLoader(_service_loaders()), _stack_loader()]),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["mib"] = format_mib
    env.filters["to_yaml"] = _to_yaml
    env.filters["to_json"] = _to_json
    return env


def template_names(service: str) -> list[str]:
    """``<service>/<path>.j2`` for every template in the service's ``templates/`` folder."""
    folder = service_templates(service)
    if folder is None:
        return []
    return sorted(f"{service}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.j2"))
