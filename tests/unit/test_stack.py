"""Stack: everything a command needs, derived once (contexts, containers, rendered files)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kbinfra import render
from kbinfra.probing.stack_checks import secret_paths
from kbinfra.service import RenderedFile
from kbinfra.stack import Stack


def test_a_command_renders_the_stack_once(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack("minimum")
    calls = []
    real = render.render_stack

    def counting(stack: Stack) -> list[RenderedFile]:
        calls.append(stack)
        return real(stack)

    monkeypatch.setattr(render, "render_stack", counting)
    # What `kbinfra check` and `kbinfra backup` read several times, from several modules.
    assert secret_paths(stack) == secret_paths(stack)
    assert stack.rendered is stack.rendered
    assert [f.path for f in stack.rendered] == [f.path for f in real(stack)]
    assert len(calls) == 1
