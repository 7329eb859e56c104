"""Render every enabled service's files from Jinja templates: pure, deterministic, strict."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
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
    if stack.spec.swarm is not None:
        from kbinfra.swarm.compose import swarm_stack_file  # noqa: PLC0415 (Swarm stacks only)

        files.append(swarm_stack_file(stack, files))
    paths = [f.path for f in files]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise KbinfraError(f"two services render the same file: {', '.join(duplicates)}")
    return sorted(files, key=lambda f: f.path)


#: The file ``write_tree`` puts in every folder it writes: proof that the folder is render's
#: own output and may be replaced whole by the next render.
RENDER_MARKER = ".kbinfra-rendered"
RENDER_MARKER_TEXT = (
    "kbinfra render wrote this folder; the next render replaces it whole.\n"
    "Keep nothing of your own here.\n"
)
#: A stack's own output folder: adopted once without the marker (see ``replaceable_folder``).
DEFAULT_OUT = "rendered"


def write_tree(files: Sequence[RenderedFile], out: Path, *, stack_dir: Path | None = None) -> Path:
    """Write ``files`` under ``out`` atomically: all of them appear at once, or none.

    ``out`` is replaced whole, so it must be a folder render may replace
    (:func:`replaceable_folder`). A failed write leaves the previous output as it was.
    Returns the real folder written (``out`` with symlinks resolved).
    """
    folder = replaceable_folder(out, stack_dir=stack_dir, files=files)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        for file in [*files, RenderedFile(path=RENDER_MARKER, text=RENDER_MARKER_TEXT)]:
            target = staging / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(file.text)
            os.chmod(target, file.mode)
        os.chmod(staging, 0o755)
        if folder.exists():
            _swap_in(staging, folder)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _swap_in(staging: Path, folder: Path) -> None:
    """Put ``staging`` where ``folder`` is; on any failure ``folder`` is put back as it was.

    The previous output is deleted only once the new one is in place: if even putting it
    back fails, it stays in the hidden ``.NAME.old-*`` folder next to it.
    """
    retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    previous = retired / folder.name
    try:
        os.replace(folder, previous)
    except BaseException:
        retired.rmdir()
        raise
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(previous, folder)
        retired.rmdir()
        raise
    shutil.rmtree(retired, ignore_errors=True)


def replaceable_folder(
    out: Path, *, stack_dir: Path | None = None, files: Sequence[RenderedFile] = ()
) -> Path:
    """The real folder behind ``out``, if render may replace it whole; else a one-line error.

    Render may replace a folder that does not exist yet, an empty one, or one it wrote itself
    (it holds :data:`RENDER_MARKER`). A stack's own ``rendered/`` from before the marker
    existed is adopted when every entry in it is a file this render writes. Never a file,
    never the stack folder nor a folder that contains it (compared with symlinks and ``..``
    resolved).
    """
    if out.is_symlink() and not out.exists():
        raise KbinfraError(
            "the output path is a symlink to nothing",
            where=str(out),
            fix="point --out at a real folder, or remove the dangling link",
        )
    folder = out.resolve()
    if stack_dir is not None:
        stack = stack_dir.resolve()
        if folder == stack or stack.is_relative_to(folder):
            what = (
                "is the stack folder" if folder == stack else f"contains the stack folder {stack}"
            )
            raise KbinfraError(
                f"the output folder {what}: render replaces its output folder whole",
                where=str(out),
                fix=f"pass --out a folder of its own, e.g. {stack / DEFAULT_OUT}",
            )
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise KbinfraError(
            "the output path is a file, not a folder: render replaces its output folder whole",
            where=str(out),
            fix="pass --out a new or empty folder, or one an earlier render wrote",
        )
    marker = folder / RENDER_MARKER
    if marker.is_file() and not marker.is_symlink():
        return folder
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return folder
    if stack_dir is not None and folder == stack_dir.resolve() / DEFAULT_OUT:
        foreign = _not_written_by_render(folder, files)
        if not foreign:
            return folder  # the stack's own output from before the marker: adopted
        what = f"has no {RENDER_MARKER} and holds files this render does not write"
    else:
        foreign = entries
        what = f"is not empty and has no {RENDER_MARKER} (kbinfra render did not write it)"
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise KbinfraError(
        f"the output folder {what} ({shown}); render replaces its output folder whole",
        where=str(out),
        fix="pass --out a new or empty folder, or move those files away first",
    )


def _not_written_by_render(folder: Path, files: Sequence[RenderedFile]) -> list[str]:
    """What in ``folder`` is not one of ``files`` or a folder holding them (sorted)."""
    expected = {file.path for file in files}
    expected_dirs = {parent.as_posix() for path in expected for parent in Path(path).parents}
    foreign = []
    for entry in sorted(folder.rglob("*")):
        relative = entry.relative_to(folder).as_posix()
        if entry.is_symlink():
            foreign.append(relative)
        elif entry.is_dir():
            if relative not in expected_dirs:
                foreign.append(f"{relative}/")
        elif not entry.is_file() or relative not in expected:
            foreign.append(relative)
    return foreign
