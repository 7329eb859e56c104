"""Render every enabled service's files from Jinja templates: pure, deterministic, strict."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from kbinfra.errors import KbinfraError
from kbinfra.exports import stack_files
from kbinfra.service import RenderedFile, Service, ServiceContext
from kbinfra.templating import environment, template_names

if TYPE_CHECKING:
    from kbinfra.stack import Stack


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
    """Every file of every enabled service, plus the stack-wide exports, sorted by path.

    Commands read :attr:`Stack.rendered`, which calls this once per stack."""

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
