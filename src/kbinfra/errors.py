"""The one error type users see: what went wrong, where, and how to fix it."""

from __future__ import annotations


class KbinfraError(Exception):
    """A failure the user can act on, printed as one line and exit code ``exit_code``."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(self.fix)
        return " — ".join(parts)


class ApplyFailedError(KbinfraError):
    """A service did not become healthy; what could be was rolled back."""

    exit_code = 1


class SpecError(KbinfraError):
    """A profile, stack file or secrets file that cannot be used as it is."""


def unreadable(error: OSError | UnicodeDecodeError) -> str:
    """Why a text file could not be read, for a one-line error: the system's reason, or
    that it is not UTF-8."""
    return (error.strerror or str(error)) if isinstance(error, OSError) else "not UTF-8 text"
