"""A Swarm stack's lock: a Swarm config the managers create atomically by name.

Two applies (or an apply and a destroy) of one stack on one Swarm, from any machine, must
not interleave. The managers' Raft store refuses a second config of the same name (HTTP
409), so creating ``<stack>-kbinfra-lock`` is the lock: its labels name the holder (host,
pid, since, the process's start time; see :mod:`kbinfra.lock_holder`), removing it is the
release. It carries no stack label, so neither the prune of unused configs nor destroy
touches it, and it holds no secret.

As on one host: a lock whose holder process on this host is gone is broken with a note;
one held by a live process, or from another host, is refused with one line naming the
holder unless ``--force-unlock``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from kbinfra.errors import KbinfraError
from kbinfra.lock_holder import (
    LockHolder,
    holder_from_labels,
    holder_labels,
    locked_error,
    may_break,
)
from kbinfra.names import lock_name

if TYPE_CHECKING:
    from docker import DockerClient

#: How many stale (or forced) locks one acquisition breaks before it gives up: another
#: process taking the lock between the break and the create is a live holder.
_BREAKS = 2
#: How many times a lock released between the create and the look is tried again.
_LOOKS = 5


def swarm_lock_holder(client: DockerClient, stack: str) -> LockHolder | None:
    """Who holds ``stack``'s lock on the manager's Swarm; None when nobody does."""
    import docker.errors  # noqa: PLC0415

    api: Any = client.api
    try:
        config = api.inspect_config(lock_name(stack))
    except docker.errors.NotFound:
        return None
    return holder_from_labels((config.get("Spec") or {}).get("Labels"))


@contextmanager
def swarm_locked(client: DockerClient, stack: str, *, force: bool = False) -> Iterator[list[str]]:
    """Hold ``stack``'s lock on the manager's Swarm; yields notes (a lock that was broken).

    The lock is released when the block ends, also on an error or Ctrl-C.
    """
    import docker.errors  # noqa: PLC0415

    api: Any = client.api
    name = lock_name(stack)
    labels = holder_labels(stack)
    data = json.dumps({k.rpartition(".")[2]: v for k, v in labels.items()}).encode()
    notes: list[str] = []
    breaks = looks = 0
    while True:
        looks += 1
        try:
            created = api.create_config(name, data, labels=labels)
            break
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise KbinfraError(
                    f"the Swarm refused the stack's lock {name}: "
                    f"{getattr(error, 'explanation', None) or error}",
                    where=name,
                ) from None
        holder = swarm_lock_holder(client, stack)
        if holder is None and looks <= _LOOKS:
            continue  # released between the create and the look
        if holder is None:
            raise KbinfraError(
                f"the stack's lock {name} is taken and released again and again",
                where=name,
                fix="another kbinfra is applying this stack in a loop: stop it, then retry",
            )
        why = may_break(holder, force=force)
        if why is None or breaks >= _BREAKS:
            raise locked_error(stack, holder, f"swarm config {name}")
        with suppress(docker.errors.NotFound):
            api.remove_config(name)
        breaks += 1
        notes.append(f"broke the lock of {holder.describe()} ({why})")
    lock_id = str(created["ID"])
    try:
        yield notes
    finally:
        with suppress(docker.errors.DockerException):
            api.remove_config(lock_id)
