"""The stack's lock on whatever the target is: one engine's lock container, or the Swarm's
lock config on its managers (:mod:`kbinfra.swarm.lock`). Commands that change or measure a
stack (bench, backup, restore) hold it, so no apply runs meanwhile."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError

if TYPE_CHECKING:
    from kbinfra.targets.base import Target


def stack_locked(
    target: Target, stack: str, *, force: bool = False
) -> AbstractContextManager[list[str]]:
    """Hold ``stack``'s lock on ``target``; the context yields notes (a lock broken)."""
    if target.kind != "swarm":
        from kbinfra.targets.engine import Engine  # noqa: PLC0415

        return Engine(target.docker_client(), stack).locked(force=force)
    from kbinfra.swarm.lock import swarm_locked  # noqa: PLC0415
    from kbinfra.swarm.run import find_manager  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmTarget  # noqa: PLC0415

    assert isinstance(target, SwarmTarget)
    if find_manager(target) is None:
        raise KbinfraError(
            f"the nodes of stack {stack} are in no Swarm: nothing is applied",
            where=target.name,
            fix="run `kbinfra apply` first",
        )
    return swarm_locked(target.docker_client(), stack, force=force)
