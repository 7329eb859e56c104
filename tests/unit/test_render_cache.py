"""The render cache: the same files as a render, again rendered when any input moves, private,
and read as untrusted input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kbinfra import render_cache
from kbinfra.private_file import write_private_file
from kbinfra.render import render_stack
from kbinfra.secrets import dump_secrets, load_secrets
from kbinfra.stack import Stack, open_stack, required_secrets
from tests.conftest import edit_stack_file, write_stack_dir


def test_a_cached_render_is_the_render_and_private(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    first = render_cache.rendered(stack)
    cache = stack.dir / render_cache.CACHE_FILE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert (
        render_cache.read_cache(
            cache, render_cache.render_key(stack, render_cache.code_fingerprint())
        )
        == first
    )
    assert open_stack(stack.dir).rendered == render_stack(stack) == first


def test_every_input_moves_the_key(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "kb")
    code = render_cache.code_fingerprint()
    base = render_cache.render_key(open_stack(folder), code)
    assert render_cache.render_key(open_stack(folder), code) == base

    edit_stack_file(folder, {"services": {"postgres": {"max_connections": 77}}})
    changed_spec = render_cache.render_key(open_stack(folder), code)
    assert changed_spec != base

    spec = open_stack(folder).spec
    secrets = dict(load_secrets(folder, required_secrets(spec)))
    secrets[sorted(secrets)[0]] += "x"
    write_private_file(folder / "secrets.yaml", dump_secrets(secrets))
    assert render_cache.render_key(open_stack(folder), code) not in (base, changed_spec)

    assert render_cache.render_key(open_stack(folder), code + "0") != render_cache.render_key(
        open_stack(folder), code
    )


def test_a_code_or_template_change_moves_the_fingerprint(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "templates").mkdir(parents=True)
    template = package / "templates" / "a.conf.j2"
    template.write_text("x")
    before = render_cache.code_fingerprint(package)
    template.write_text("xy")
    assert render_cache.code_fingerprint(package) != before
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "m.pyc").write_bytes(b"")
    after = render_cache.code_fingerprint(package)
    assert render_cache.code_fingerprint(package) == after  # bytecode is not the code


def test_a_tampered_cache_is_rendered_again(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    expected = render_cache.rendered(stack)
    cache = stack.dir / render_cache.CACHE_FILE
    document = json.loads(cache.read_text())
    for bad in (["../../etc/cron.d/x", "* * * * * root sh\n", 0o644, False], ["a", 1, 420, False]):
        document["files"][0] = bad
        cache.write_text(json.dumps(document))
        assert render_cache.read_cache(cache, document["key"]) is None
        assert render_cache.rendered(stack) == expected
    cache.write_text("not json")
    assert render_cache.rendered(stack) == expected


def test_a_noop_plan_with_a_cache_imports_no_jinja(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "kb")
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kbinfra.stack import open_stack\n"
        f"stack = open_stack(Path({str(folder)!r}))\n"
        "stack.rendered\n"
        "print('jinja2' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["True"], ["False"]]  # rendered once, then read back
