"""Every image an integration test names is one that this repository builds.

No registry can be reached here, so an image that exists only on the machine where a test was
written makes that test fail on every fresh machine (it did: `kbinfra-apply/debian:bookworm`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "tests" / "integration"
RECIPES = REPO / "tests" / "testbed" / "images"
#: `scripts/testbed`'s debootstrap base (ensure_base_image).
TESTBED_BASE = "kbinfra-testbed/debian"
IMAGE_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._-]*(?:/[a-z0-9._-]+)+:[A-Za-z0-9_][\w.-]*$")


def _recipe_images() -> set[str]:
    images = set()
    for conf in RECIPES.glob("*/recipe.conf"):
        for line in conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "image":
                images.add(value.strip())
    return images


def _images_built_by_tests(trees: dict[Path, ast.Module]) -> set[str]:
    """Repositories the tests build themselves: `tag=` of a build, or a `REPOSITORY` constant."""
    built = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "tag":
                value = node.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    built.add(value.value.partition(":")[0])
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if "REPOSITORY" in names and isinstance(node.value.value, str):
                    built.add(node.value.value)
    return built


def _image_literals(tree: ast.Module) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and IMAGE_REFERENCE.match(node.value)
    ]


def test_every_image_an_integration_test_names_is_built_here() -> None:
    trees = {path: ast.parse(path.read_text()) for path in sorted(INTEGRATION.glob("*.py"))}
    known = _recipe_images() | _images_built_by_tests(trees) | {TESTBED_BASE}
    unknown = [
        f"{path.relative_to(REPO)}:{line}: {image}"
        for path, tree in trees.items()
        for line, image in _image_literals(tree)
        if image.partition(":")[0] not in known
    ]
    assert not unknown, (
        "images no recipe in tests/testbed/images, no test and not the test bed's base build "
        "(use the `base_image` fixture for a plain Debian): " + "; ".join(unknown)
    )


def test_the_check_sees_an_image_nothing_builds() -> None:
    # The image the rollback test once used; spelt in parts so that no grep for image
    # literals takes this test for one that needs it.
    repository, tag = "kbinfra-apply/debian", "bookworm"
    source = f'broken = "{repository}:{tag}"\n'
    (literal,) = _image_literals(ast.parse(source))
    assert literal == (1, f"{repository}:{tag}")
    assert repository not in _recipe_images() | {TESTBED_BASE}
