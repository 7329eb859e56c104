"""What a backup holds (``manifest.json``) and the pure checks around it. No I/O but parsing.

A backup directory is trusted only through its manifest: every artifact is listed with its
size, sha256 and the content counts taken when it was written. Restore and the drill verify
the files against it before touching anything, and compare what they restored with it after.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST_FILE = "manifest.json"
MANIFEST_SUM_FILE = "manifest.sha256"
MANIFEST_SIGNATURE_FILE = "manifest.hmac"
SECRETS_MARKER = "CONTAINS-SECRETS.txt"
PARTIAL_SUFFIX = ".partial"
OWNER_FILE = ".kbinfra-owner.json"
FORMAT = 1
_STAMP = "%Y%m%dT%H%M%SZ"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ArtifactKind = Literal[
    "pg_globals",
    "pg_roles",
    "pg_dump",
    "qdrant_snapshot",
    "redis_rdb",
    "volume_tar",
    "stack_file",
    "secrets",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Artifact(_Model):
    """One file of the backup and what it held when it was written."""

    path: str = Field(description="Relative to the backup directory, POSIX separators")
    service: str
    kind: ArtifactKind
    size: int = Field(ge=0)
    sha256: str
    #: Content counts at backup time: rows per table, points, keys per db, files.
    counts: dict[str, int] = Field(default_factory=dict)
    #: For counts that may legitimately come back lower (Redis keys with a TTL, a Qdrant
    #: collection that never held still during its snapshot): the lowest acceptable value.
    counts_min: dict[str, int] = Field(default_factory=dict)
    #: Digests of a sample of the content (never the content itself), by sample name.
    samples: dict[str, str] = Field(default_factory=dict)
    #: What restore needs to know: database name, collection, Qdrant's own checksum, volume.
    meta: dict[str, str] = Field(default_factory=dict)
    secret: bool = False

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        normal = posixpath.normpath(value)
        if (
            not value
            or value.startswith("/")
            or normal != value
            or normal.startswith("..")
            or "\\" in value
            or normal in (MANIFEST_FILE, MANIFEST_SUM_FILE, MANIFEST_SIGNATURE_FILE)
        ):
            raise ValueError(f"{value!r} is not a plain relative path inside the backup")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError(f"{value!r} is not a sha256 hex digest")
        return value

    def lowest(self, name: str) -> int:
        return self.counts_min.get(name, self.counts[name])


class ServiceRecord(_Model):
    """The service as it ran when the backup was taken."""

    image: str = ""
    image_id: str = ""
    version: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Model):
    format: int = FORMAT
    kbinfra_version: str
    name: str
    stack: str
    profile: str
    target: str
    created_at: dt.datetime
    finished_at: dt.datetime
    reason: Literal["manual", "safety"] = "manual"
    includes_secrets: bool = False
    services: dict[str, ServiceRecord] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @field_validator("created_at", "finished_at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("times must carry a timezone")
        return value.astimezone(dt.UTC)

    def for_service(self, service: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.service == service]

    def data_services(self) -> list[str]:
        """Services whose data the backup holds (not the stack files), in backup order."""
        seen: dict[str, None] = {}
        for artifact in self.artifacts:
            if artifact.kind not in ("stack_file", "secrets"):
                seen.setdefault(artifact.service, None)
        return list(seen)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class ManifestError(ValueError):
    """A manifest that cannot be trusted: unreadable, or not what its checksum says."""


def parse_manifest(data: bytes, recorded_sum: str | None) -> Manifest:
    """The manifest from ``manifest.json`` bytes, checked against ``manifest.sha256``."""
    if recorded_sum is not None:
        expected = recorded_sum.split()[0] if recorded_sum.split() else ""
        if hashlib.sha256(data).hexdigest() != expected:
            raise ManifestError(f"{MANIFEST_FILE} does not match {MANIFEST_SUM_FILE}")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{MANIFEST_FILE} is not JSON: {error}") from None
    except RecursionError:
        # kbinfra writes a manifest three levels deep; this one was not written by it.
        raise ManifestError(f"{MANIFEST_FILE} is nested too deeply to be a manifest") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ManifestError(f"{MANIFEST_FILE} has format {found!r}; this kbinfra reads {FORMAT}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{MANIFEST_FILE}: {where}: {first['msg']}") from None


def manifest_sum_line(data: bytes) -> str:
    """``sha256sum`` format, so ``sha256sum -c manifest.sha256`` works from a shell."""
    return f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_FILE}\n"


# ---------------------------------------------------------------- names
def backup_name(stack: str, created: dt.datetime, taken: Iterable[str] = ()) -> str:
    """``<stack>-20260101T020000Z``; ``-2``, ``-3`` … when that name is already used."""
    base = f"{stack}-{created.astimezone(dt.UTC).strftime(_STAMP)}"
    used = set(taken)
    name, number = base, 1
    while name in used or name + PARTIAL_SUFFIX in used:
        number += 1
        name = f"{base}-{number}"
    return name


def is_partial(dir_name: str) -> bool:
    return dir_name.endswith(PARTIAL_SUFFIX)


# ---------------------------------------------------------------- verification
@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str

    def describe(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class VerificationPlan:
    """Which files are missing or of the wrong size, and which must be hashed."""

    problems: tuple[FileProblem, ...]
    to_hash: tuple[Artifact, ...]


def plan_verification(
    artifacts: Iterable[Artifact], sizes: Mapping[str, int | None]
) -> VerificationPlan:
    """From the size of each listed file on disk (None: missing), what to hash next.

    A file of the wrong size is corrupt without reading it; every other one is hashed.
    """
    problems: list[FileProblem] = []
    to_hash: list[Artifact] = []
    for artifact in artifacts:
        size = sizes.get(artifact.path)
        if size is None:
            problems.append(FileProblem(artifact.path, "missing"))
        elif size != artifact.size:
            problems.append(
                FileProblem(artifact.path, f"size {size} bytes, manifest says {artifact.size}")
            )
        else:
            to_hash.append(artifact)
    return VerificationPlan(tuple(problems), tuple(to_hash))


def hash_problems(artifacts: Iterable[Artifact], hashes: Mapping[str, str]) -> list[FileProblem]:
    return [
        FileProblem(a.path, "sha256 differs from the manifest: the file is corrupt")
        for a in artifacts
        if hashes.get(a.path) != a.sha256
    ]


# ---------------------------------------------------------------- counts
@dataclass(frozen=True)
class Difference:
    """One count or sample that restored data does not match."""

    artifact: str
    name: str
    expected: str
    actual: str
    kind: Literal["missing", "different", "extra", "sample"]

    def describe(self) -> str:
        if self.kind == "extra":
            return f"{self.artifact}: {self.name} is not in the backup (now {self.actual})"
        if self.kind == "sample":
            return f"{self.artifact}: sample {self.name} differs"
        return f"{self.artifact}: {self.name} expected {self.expected}, found {self.actual}"

    def as_json(self) -> dict[str, str]:
        return {
            "artifact": self.artifact,
            "name": self.name,
            "expected": self.expected,
            "actual": self.actual,
            "kind": self.kind,
        }


def _expected_text(artifact: Artifact, name: str) -> str:
    low, high = artifact.lowest(name), artifact.counts[name]
    return str(high) if low == high else f"{low}..{high}"


def compare_counts(artifact: Artifact, actual: Mapping[str, int]) -> list[Difference]:
    """Every count the manifest lists must be back, within its accepted range.

    Names present now but absent from the manifest come back as ``extra``: the caller
    decides whether that fails (a drill into empty containers) or warns (a restore into a
    live store keeps what the backup did not know about).
    """
    differences: list[Difference] = []
    for name, high in sorted(artifact.counts.items()):
        value = actual.get(name)
        if value is None:
            if artifact.lowest(name) == 0:
                continue  # an empty table or db may legitimately not show up at all
            differences.append(
                Difference(artifact.path, name, _expected_text(artifact, name), "none", "missing")
            )
        elif not artifact.lowest(name) <= value <= high:
            differences.append(
                Difference(
                    artifact.path, name, _expected_text(artifact, name), str(value), "different"
                )
            )
    for name in sorted(set(actual) - set(artifact.counts)):
        if actual[name]:
            differences.append(Difference(artifact.path, name, "none", str(actual[name]), "extra"))
    return differences


def compare_samples(artifact: Artifact, actual: Mapping[str, str]) -> list[Difference]:
    """Each sampled digest must be identical; a sample that cannot be found differs too."""
    return [
        Difference(artifact.path, name, digest, actual.get(name, "none"), "sample")
        for name, digest in sorted(artifact.samples.items())
        if actual.get(name) != digest
    ]


# ---------------------------------------------------------------- versions
def _numbers(version: str, parts: int) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+(?:\.\d+)*)", version.strip())
    if match is None:
        return None
    numbers = tuple(int(p) for p in match.group(1).split("."))
    return (numbers + (0,) * parts)[:parts]


def same_minor(backup: str, current: str) -> bool:
    """Qdrant restores a snapshot only onto the same major.minor version."""
    a, b = _numbers(backup, 2), _numbers(current, 2)
    return a is not None and a == b


def not_older(backup: str, current: str, parts: int) -> bool:
    """The current server is at least as new as the one that wrote the backup."""
    a, b = _numbers(backup, parts), _numbers(current, parts)
    return a is not None and b is not None and b >= a
