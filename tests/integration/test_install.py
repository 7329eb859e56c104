"""``pip install kbinfra`` alone, as users install it: the wheel, its dependencies, nothing else.

Builds the wheel, installs it without extras into a fresh venv (pip fetches the dependencies
from the package index; its cache makes that quick) and runs it from another folder, with no
PYTHONPATH pointing back at this checkout. Needs no test bed, only pip and the index.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dependency_scan import SRC, third_party_imports

pytestmark = pytest.mark.slow

REPO = SRC.parents[1]
# Imports every module of the installed kbinfra (but ``python -m kbinfra`` and the embedding
# image's own app), then every third-party module kbinfra's code imports anywhere, lazily or not.
IMPORT_ALL = """
import importlib, pkgutil, sys
import kbinfra
for module in pkgutil.walk_packages(kbinfra.__path__, "kbinfra."):
    image = module.name.startswith("kbinfra.services.embeddings.image.")
    skip = module.name == "kbinfra.__main__" or image
    if not skip:
        importlib.import_module(module.name)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(kbinfra.__file__)
"""


def _run(
    args: list[str | Path], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_the_wheel_alone_renders_and_imports_everything_apply_check_backup_need(
    tmp_path: Path,
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("KBINFRA_")
    }
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO], REPO, env)
    (wheel,) = wheels.glob("kbinfra-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    python, kbinfra = venv / "bin" / "python", venv / "bin" / "kbinfra"
    _run([python, "-m", "pip", "install", "-q", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([kbinfra, "init", "--profile", "minimum", "--dir", "stack"], elsewhere, env)
    rendered = _run([kbinfra, "render", "--dir", "stack"], elsewhere, env)
    assert "rendered" in rendered.stdout
    assert (elsewhere / "stack" / "rendered" / "postgres" / "postgresql.conf").is_file()

    imported = _run([python, "-c", IMPORT_ALL, *sorted(third_party_imports())], elsewhere, env)
    assert Path(imported.stdout.strip()).is_relative_to(venv), "imported this checkout instead"

    extra = _run([python, "-m", "pip", "install", "-q", f"kbinfra[runtime] @ {wheel.as_uri()}"],
                 elsewhere, env)  # fmt: skip
    assert "does not provide the extra" not in extra.stderr
