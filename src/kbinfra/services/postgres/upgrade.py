"""PostgreSQL's side of ``kbinfra upgrade``: a data directory belongs to one major version.

PostgreSQL reads a data directory only with the major version that wrote it (``PG_VERSION``
in it says which): a minor upgrade is a new image on the same volume, a major one is a dump
and a restore into a new data directory (or ``pg_upgrade``, which needs both versions'
binaries in one image; no official image has them).
"""

from typing import Any

from kbinfra.probing.probe import CheckFailedError, ProbeContext
from kbinfra.services.postgres.service import DATA_DIR
from kbinfra.upgrade import Refusal, image_version

MAJOR_UPGRADE = (
    "a major upgrade is a dump and restore: `kbinfra backup --only postgres`, then a stack "
    "on the new major with its own data volume (services.postgres.volume), `kbinfra apply`, "
    "`kbinfra restore --only postgres BACKUP`; the old volume stays until you remove it "
    "(docs/operations.md, Upgrades)"
)


def running_version(probe: ProbeContext) -> str:
    """The major version that owns the data directory, from its ``PG_VERSION`` file."""
    code, output = probe.exec(["cat", f"{DATA_DIR}/PG_VERSION"])
    text = output.strip()
    if code != 0 or not text.isdigit():
        raise CheckFailedError(f"cannot read {DATA_DIR}/PG_VERSION: {text[:200]}")
    return text


def upgrade_refusal(running: str, new_image: str, settings: Any) -> Refusal | None:
    tagged = image_version(new_image)
    declared: int | None = getattr(settings, "version", None)
    if tagged is None and declared is None:
        return Refusal(
            f"cannot tell the PostgreSQL major version of {new_image} from its tag",
            "use a tag that starts with it (postgres:16.4) or set services.postgres.version",
        )
    if tagged is not None and declared is not None and tagged[0] != declared:
        return Refusal(
            f"the tag of {new_image} says PostgreSQL {tagged[0]}, "
            f"services.postgres.version says {declared}",
            "make them agree (or drop `version:` and let the tag say it)",
        )
    new_major = tagged[0] if tagged is not None else declared
    assert new_major is not None
    if new_major == int(running):
        return None
    if new_major < int(running):
        return Refusal(
            f"PostgreSQL {new_major} cannot read a data directory of PostgreSQL {running} "
            "(a downgrade)",
            "restore a backup taken on PostgreSQL "
            f"{new_major} into a new data volume instead, or stay on {running}",
        )
    return Refusal(
        f"PostgreSQL {new_major} cannot open PostgreSQL {running}'s data directory", MAJOR_UPGRADE
    )
