"""Where stacks run. ``open_target`` picks local or SSH from the stack file's ``target``.

Nothing here imports docker or paramiko at module level: ``kbinfra --help`` and
``kbinfra render`` stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from kbinfra.errors import KbinfraError
from kbinfra.spec.stack import StackSpec
from kbinfra.spec.values import SWARM_TARGET, check_target
from kbinfra.targets.base import FileStore, Target

__all__ = ["FileStore", "Target", "open_target"]


def open_target(
    spec: StackSpec,
    stack_dir: Path,
    *,
    target: str | None = None,
    known_hosts: Path | None = None,
    identity: Path | None = None,
) -> Target:
    """The stack's target (``target`` overrides the stack file's), not yet connected."""
    if target is not None and target != spec.target:
        spec = spec.model_copy(update={"target": _checked_target(target)})
    if spec.target == SWARM_TARGET:
        # Never fall through to the local engine: a Swarm stack is applied through a manager.
        raise KbinfraError(
            "this command does not reach a Swarm yet (target: swarm)",
            where=str(stack_dir / "kbinfra.yaml"),
            fix="render it with `kbinfra render` (rendered/swarm-stack.yml), "
            "or deploy that file with `docker stack deploy`",
        )
    parts = spec.ssh_parts()
    if parts is None:
        from kbinfra.targets.local import LocalTarget  # noqa: PLC0415

        return LocalTarget(stack_dir)
    from kbinfra.targets.ssh import (  # noqa: PLC0415
        SSHAddress,
        SSHOptions,
        SSHTarget,
        default_known_hosts,
    )

    user, host, port = parts
    identity_env = os.environ.get("KBINFRA_SSH_IDENTITY")
    key_file = identity or (Path(identity_env) if identity_env else None)
    if key_file is not None and not key_file.expanduser().is_file():
        state = "is a directory" if key_file.expanduser().is_dir() else "does not exist"
        raise KbinfraError(
            f"SSH private key file {state}",
            where=str(key_file),
            fix="pass --identity (or KBINFRA_SSH_IDENTITY) the path of a private key file",
        )
    return SSHTarget(
        SSHAddress(user, host, port),
        SSHOptions(
            known_hosts=known_hosts or default_known_hosts(),
            identity=key_file,
            deploy_dir=spec.deploy.dir,
        ),
    )


def _checked_target(target: str) -> str:
    """``--target`` is checked as the stack file's ``target:`` is, as a one-line error."""
    try:
        return check_target(target)
    except ValueError as error:
        raise KbinfraError(str(error), where="--target", fix="fix the --target option") from None
