"""Where stacks run. ``open_target`` picks local or SSH from the stack file's ``target``.

Nothing here imports docker or paramiko at module level: ``kbinfra --help`` and
``kbinfra render`` stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kbinfra.errors import KbinfraError
from kbinfra.targets.base import FileStore, Target

if TYPE_CHECKING:
    from kbinfra.spec.stack import StackSpec
    from kbinfra.spec.swarm import SwarmSettings

__all__ = ["FileStore", "Target", "open_target"]


def open_target(
    spec: StackSpec,
    stack_dir: Path,
    *,
    target: str | None = None,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    swarm: bool = False,
) -> Target:
    """The stack's target (``target`` overrides the stack file's), not yet connected.

    A Swarm stack opens only for a command that says it handles one (``swarm``): the
    others refuse it in one line, never falling through to the local engine."""
    from kbinfra.spec.values import SWARM_TARGET  # noqa: PLC0415 (loaded with ``spec``)

    if target is not None and target != spec.target:
        spec = spec.model_copy(update={"target": _checked_target(target)})
    if spec.target == SWARM_TARGET:
        if not swarm or spec.swarm is None:
            raise KbinfraError(
                "this command does not work on a Swarm stack yet (target: swarm)",
                where=str(stack_dir / "kbinfra.yaml"),
                fix="plan, apply, status, destroy, check and backup do; render writes "
                "rendered/swarm-stack.yml for `docker stack deploy`",
            )
        return _swarm_target(spec.swarm, stack_dir, known_hosts, identity)
    parts = spec.ssh_parts()
    if parts is None:
        from kbinfra.targets.local import LocalTarget  # noqa: PLC0415

        return LocalTarget(stack_dir)
    from kbinfra.targets.openssh import SSHAddress, SSHOptions  # noqa: PLC0415
    from kbinfra.targets.ssh import SSHTarget, default_known_hosts  # noqa: PLC0415

    user, host, port = parts
    key_file = _identity(identity)
    return SSHTarget(
        SSHAddress(user, host, port),
        SSHOptions(
            known_hosts=known_hosts or default_known_hosts(),
            identity=key_file,
            deploy_dir=spec.deploy.dir,
        ),
    )


def _identity(identity: Path | None, default: Path | None = None) -> Path | None:
    """``--identity``, else ``KBINFRA_SSH_IDENTITY``, else ``default``: a file, or an error."""
    identity_env = os.environ.get("KBINFRA_SSH_IDENTITY")
    key_file = identity or (Path(identity_env) if identity_env else default)
    if key_file is not None and not key_file.expanduser().is_file():
        state = "is a directory" if key_file.expanduser().is_dir() else "does not exist"
        raise KbinfraError(
            f"SSH private key file {state}",
            where=str(key_file),
            fix="pass --identity (or KBINFRA_SSH_IDENTITY) the path of a private key file",
        )
    return key_file


def _swarm_target(
    swarm: SwarmSettings, stack_dir: Path, known_hosts: Path | None, identity: Path | None
) -> Target:
    """Every node of the stack file's ``swarm:`` section, over SSH with strict host keys:
    ``--known-hosts`` and ``--identity`` override the section's (relative to the stack)."""
    from kbinfra.spec.values import parse_ssh_target  # noqa: PLC0415
    from kbinfra.targets.openssh import SSHAddress, SSHOptions  # noqa: PLC0415
    from kbinfra.targets.ssh import default_known_hosts  # noqa: PLC0415
    from kbinfra.targets.swarm import SwarmNodeAddress, SwarmTarget  # noqa: PLC0415

    def beside(value: str | None) -> Path | None:
        return None if value is None else stack_dir / Path(value).expanduser()

    nodes = [
        SwarmNodeAddress(
            name=node.name,
            address=SSHAddress(*parse_ssh_target(node.address)),
            role=node.role,
            labels=dict(node.labels),
        )
        for node in swarm.nodes
    ]
    options = SSHOptions(
        known_hosts=known_hosts or beside(swarm.known_hosts) or default_known_hosts(),
        identity=_identity(identity, beside(swarm.identity)),
    )
    return SwarmTarget(nodes, options)


def _checked_target(target: str) -> str:
    """``--target`` is checked as the stack file's ``target:`` is, as a one-line error."""
    from kbinfra.spec.values import check_target  # noqa: PLC0415

    try:
        return check_target(target)
    except ValueError as error:
        raise KbinfraError(str(error), where="--target", fix="fix the --target option") from None
