"""Render every enabled service's files from Jinja templates: pure, deterministic, strict."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from kbinfra import __version__
from kbinfra.errors import KbinfraError
from kbinfra.paths import templates_dir
from kbinfra.registry import all_services, service_folder
from kbinfra.service import RenderedFile, Service, ServiceContext
from kbinfra.spec.yamlfile import dump_yaml
from kbinfra.stack import Stack
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


def render_service(service: Service, ctx: ServiceContext) -> list[RenderedFile]:
    """The files of one service: its templates, then the files it builds in code."""
    variables = {"stack": ctx.stack, "resources": ctx.resources, **service.template_context(ctx)}
    secret_templates = service.secret_templates()
    rendered = []
    for name in template_names(service.name):
        try:
            text = environment().get_template(name).render(variables)
        except jinja2.TemplateError as error:
            line = getattr(error, "lineno", None)
            where = (getattr(error, "filename", None) or name) + (f":{line}" if line else "")
            raise KbinfraError(f"template failed: {error}", where=where) from None
        short = Path(name).name.removesuffix(".j2")
        secret = short in secret_templates
        rendered.append(
            RenderedFile(
                path=name.removesuffix(".j2"),
                text=text,
                mode=0o600 if secret else 0o644,
                secret=secret,
            )
        )
    rendered.extend(service.files(ctx))
    return rendered


def render_stack(stack: Stack) -> list[RenderedFile]:
    """Every file of every enabled service, plus the stack-wide exports, sorted by path."""
    from kbinfra.exports import stack_files  # noqa: PLC0415 (exports needs render's env)

    files: list[RenderedFile] = []
    for name, service in stack.services.items():
        files.extend(render_service(service, stack.contexts[name]))
    files.extend(stack_files(stack))
    paths = [f.path for f in files]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise KbinfraError(f"two services render the same file: {', '.join(duplicates)}")
    return sorted(files, key=lambda f: f.path)


def write_tree(files: Iterable[RenderedFile], out: Path) -> None:
    """Write ``files`` under ``out`` atomically: all of them appear at once, or none."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for file in files:
            target = staging / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(file.text)
            os.chmod(target, file.mode)
        os.chmod(staging, 0o755)
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
