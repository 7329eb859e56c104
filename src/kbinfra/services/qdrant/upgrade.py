"""Qdrant's side of ``kbinfra upgrade``: one minor version at a time, never back.

Qdrant guarantees that its storage and snapshots carry over from one minor version to the
next only (1.16 → 1.17, not 1.16 → 1.18), and an older Qdrant may not read what a newer one
wrote; a snapshot restores only onto the minor version that took it.
"""

from typing import Any

from kbinfra.probing.probe import CheckFailedError, ProbeContext
from kbinfra.services.qdrant.probe import client
from kbinfra.services.qdrant.service import API_KEY
from kbinfra.upgrade import Refusal, image_version, shown, version_tuple


def running_version(probe: ProbeContext) -> str:
    """``GET /``'s ``version``, as the running server reports it."""
    with client(probe.url(), probe.secret(API_KEY)) as http:
        answer = http.get("/")
    if answer.status_code != 200:
        raise CheckFailedError(f"GET / answered {answer.status_code}")
    version = answer.json().get("version")
    if not isinstance(version, str) or version_tuple(version) is None:
        raise CheckFailedError(f"GET / reports no version: {answer.text[:200]}")
    return version


def upgrade_refusal(running: str, new_image: str, settings: Any) -> Refusal | None:
    del settings
    new = image_version(new_image)
    now = version_tuple(running)
    assert now is not None
    if new is None or len(new) < 2:
        return Refusal(
            f"cannot tell the Qdrant version of {new_image} from its tag",
            "use a tag that names it (qdrant/qdrant:v1.17.2): Qdrant upgrades one minor "
            "version at a time",
        )
    if new[:2] == now[:2]:
        return None if new >= now else _downgrade(running, new)
    if new[0] != now[0] or new[1] < now[1]:
        return _downgrade(running, new) if new < now else _one_minor(running, new)
    if new[1] - now[1] > 1:
        return _one_minor(running, new)
    return None


def _one_minor(running: str, new: tuple[int, ...]) -> Refusal:
    now = version_tuple(running) or (0, 0)
    step = f"v{now[0]}.{now[1] + 1}"
    return Refusal(
        f"Qdrant upgrades one minor version at a time: {running} → {shown(new)} skips "
        f"{now[0]}.{now[1] + 1}",
        f"upgrade --to {step}.x first (its latest patch), then on to {shown(new)}",
    )


def _downgrade(running: str, new: tuple[int, ...]) -> Refusal:
    return Refusal(
        f"Qdrant {shown(new)} may not read storage written by {running} (a downgrade)",
        f"restore a snapshot taken on Qdrant {shown(new[:2])} into a new stack instead "
        "(snapshots restore only onto the minor version that took them)",
    )
