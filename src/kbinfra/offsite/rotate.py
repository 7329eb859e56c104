"""The offsite repositories' side of ``kbinfra secrets rotate``: restic's keys.

A restic repository's data is encrypted with one master key; each password opens a key
file that wraps it. So a password rotates without touching a snapshot: ``key add`` (the new
password, opened with the old one), the new password proved to open the repository and read
its snapshots, then ``key remove`` of the old password's key (opened with the new one;
restic refuses to remove the key it was opened with).

Each step first looks at what the repository holds, so a rerun after a kill -9 redoes only
what is missing, and never adds a second new key. At every moment the repository has a key
that a value kbinfra holds opens: secrets.yaml's old value until ``key remove``, then the
state file's new one (0600) until the commit writes it to secrets.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping

from kbinfra.offsite.repository import SshSettings, repository_kind, s3_secret_names
from kbinfra.offsite.restic import OffsiteError, Restic, WrongPasswordError
from kbinfra.rotation import Phase
from kbinfra.spec.stack import OffsiteRepository, StackSpec


def offsite_passwords(spec: StackSpec) -> dict[str, OffsiteRepository]:
    """The restic password secrets of the stack's offsite repositories, with their
    repository (the S3 access keys are the bucket owner's to change, not kbinfra's)."""
    return {repository.password_secret: repository for repository in spec.backup.offsite}


def offsite_refusals(spec: StackSpec) -> dict[str, str]:
    """Why the S3 access keys of a repository are not rotated: the provider issues them."""
    return {
        name: "the bucket's access keys are issued by the S3 provider: make new ones there, "
        "put them in secrets.yaml, then revoke the old ones there"
        for repository in spec.backup.offsite
        if repository_kind(repository.repository) == "s3"
        for name in s3_secret_names(repository)
    }


class RepositoryKeys:
    """One repository, opened with the old and with the new password."""

    def __init__(
        self,
        repository: OffsiteRepository,
        secrets: Mapping[str, str],
        old: str,
        new: str,
        ssh: SshSettings,
    ) -> None:
        secret = repository.password_secret
        self.repository = repository
        self.new_password = new
        self.with_old = Restic(repository, {**secrets, secret: old}, ssh)
        self.with_new = Restic(repository, {**secrets, secret: new}, ssh)

    @property
    def name(self) -> str:
        return f"offsite {self.repository.name}"

    def advance(self, phase: Phase) -> str:
        """Bring the repository to ``phase``, redoing any earlier step it lacks (as an apply
        converges); what was done, as one line."""
        if phase == "generated":
            return f"{self.name}: nothing to do"
        if not self.with_old.exists():
            # nothing holds the password yet: the commit alone rotates it
            return f"{self.name}: no repository there yet (no backup sent), nothing to change"
        added = self.ensure_added()  # the new password opens it from here on
        if phase == "added":
            return added
        if phase == "moved":
            count = len(self.with_new.snapshots())
            return f"{self.name}: the new password opens it and lists its {count} snapshot(s)"
        try:
            old_key = next(key.id for key in self.with_old.list_keys() if key.current)
        except WrongPasswordError:
            return f"{self.name}: the old password's key is gone already (removed before)"
        self.with_new.remove_key(old_key)
        return f"{self.name}: the old password's key {old_key} removed (restic key remove)"

    def ensure_added(self) -> str:
        """``key add`` of the new password, unless it opens the repository already (a rerun
        after a kill -9 adds no second key)."""
        if self.with_new.opens():
            return f"{self.name}: the new password opens it already"
        self.with_old.add_key(self.new_password)
        return f"{self.name}: the new password added beside the old one (restic key add)"

    def require_new_opens(self) -> None:
        """The new password must open the repository before anything relies on it."""
        if not self.with_new.opens():
            raise OffsiteError(
                "the new password does not open the repository",
                where=self.with_new.where,
                fix="run `kbinfra secrets rotate` again: it adds the new password first",
            )

    def check(self) -> str:
        """After ``revoked``: the new password opens the repository, the old one does not."""
        if not self.with_new.exists():
            return f"{self.name}: no repository there yet; secrets.yaml's new password makes it"
        self.require_new_opens()
        if self.with_old.opens():
            raise OffsiteError(
                "the old password still opens the repository", where=self.with_old.where
            )
        return f"{self.name}: the new password opens it, the old one is refused"
