"""Qdrant: one snapshot per collection, downloaded, checked against Qdrant's checksum.

Backup, per collection: ``POST /collections/{c}/snapshots?wait=true``; the file is streamed
down (``GET /collections/{c}/snapshots/{name}``), its sha256 compared with the checksum
Qdrant reported, and the remote copy deleted (also when something failed). The aliases are
recorded in the manifest. (The guide called ``POST /collections/snapshot``, a route that
does not exist, and never downloaded anything.)

Qdrant cannot pause writes, so the count and a sample of points are read just before and
just after the snapshot; when they agree the collection held still and both are exact.
Otherwise the snapshot is taken again (three tries), and if writes never stop the count is
recorded as the range seen around the snapshot, without a sample.

Restore, per collection: ``POST /collections/{c}/snapshots/upload?priority=snapshot`` with
the file streamed from disk as multipart (``PUT …/recover`` would need a location the
server can read); ``priority=snapshot`` because the default ``replica`` can keep the data
a node already has. Then the aliases are recreated. A snapshot restores only onto the same
minor version: restore refuses others before touching anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from kbinfra.backup.handler import (
    BackupError,
    BackupHandler,
    BackupOutput,
    Instance,
    Observed,
    ServiceBackup,
    artifact_of,
)
from kbinfra.backup.manifest import Artifact, ArtifactKind, ServiceRecord, same_minor
from kbinfra.progress import Progress
from kbinfra.services.qdrant.service import API_KEY, HTTP_PORT, own_key

if TYPE_CHECKING:
    import httpx

SAMPLE_POINTS = 16
ATTEMPTS = 3
POINTS = "points"
SAMPLE = "first_points"
ALIASES = "aliases"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class State:
    """A collection's point count and the digest of its first points."""

    count: int
    sample: str


def snapshot_path(collection: str) -> str:
    if _SAFE.match(collection) and not collection.startswith("."):
        return f"qdrant/{collection}.snapshot"
    return f"qdrant/collection-{hashlib.sha256(collection.encode()).hexdigest()[:16]}.snapshot"


def vector_fingerprint(vector: Any) -> Any:
    """What of a vector survives every faithful restore exactly: its shape, the sign of each
    component and where its largest and smallest components are.

    The values themselves do not: a server may answer with the float32 it stores or the
    float64 it was sent, and normalizes cosine vectors on insert (the stand-in answers
    normalized values until it reloads, then the originals). The snapshot's sha256 already
    guards its bytes; this guards against vectors lost, zeroed or mixed up between points.
    """
    if isinstance(vector, dict) and "indices" in vector:  # sparse
        return {"indices": vector["indices"], "values": vector_fingerprint(vector["values"])}
    if isinstance(vector, dict):  # named vectors
        return {name: vector_fingerprint(v) for name, v in sorted(vector.items())}
    if isinstance(vector, list) and vector and isinstance(vector[0], list):  # multivector
        return [vector_fingerprint(v) for v in vector]
    if isinstance(vector, list) and vector:
        values = [float(v) for v in vector]
        signs = "".join("+" if v > 0 else "-" if v < 0 else "0" for v in values)
        return {
            "dim": len(values),
            "signs": signs,
            "max": values.index(max(values)),
            "min": values.index(min(values)),
        }
    return vector


def points_digest(points: Sequence[dict[str, Any]]) -> str:
    """Ids, payloads and vector fingerprints of points, independent of JSON key order."""
    plain = [
        {
            "id": p.get("id"),
            "vector": vector_fingerprint(p.get("vector")),
            "payload": p.get("payload"),
        }
        for p in points
    ]
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def bracket(before: State, after: State) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Counts, counts_min and samples for the manifest from the states around a snapshot."""
    if before == after:
        return {POINTS: after.count}, {}, {SAMPLE: after.sample}
    low, high = sorted((before.count, after.count))
    return {POINTS: high}, ({POINTS: low} if low != high else {}), {}


def aliases_digest(aliases: Sequence[dict[str, str]], collection: str) -> str | None:
    """The names of the aliases pointing at ``collection`` (None when it has none)."""
    names = sorted(a["alias_name"] for a in aliases if a["collection_name"] == collection)
    return hashlib.sha256("\n".join(names).encode()).hexdigest() if names else None


def alias_actions(
    wanted: Sequence[dict[str, str]], existing: Sequence[dict[str, str]]
) -> list[dict[str, Any]]:
    """Delete the aliases of those names that exist now, then create the recorded ones."""
    names = {a["alias_name"] for a in wanted}
    actions: list[dict[str, Any]] = [
        {"delete_alias": {"alias_name": a["alias_name"]}}
        for a in existing
        if a["alias_name"] in names
    ]
    actions += [
        {
            "create_alias": {
                "alias_name": a["alias_name"],
                "collection_name": a["collection_name"],
            }
        }
        for a in sorted(wanted, key=lambda a: a["alias_name"])
    ]
    return actions


class _ReadCounter(io.RawIOBase):
    """A file that reports how much has been read from it (the upload's progress)."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None]) -> None:
        self._file = path.open("rb")
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: Any) -> int:
        size = self._file.readinto(buffer)
        if size:
            self._on_bytes(size)
        return size or 0

    def close(self) -> None:
        self._file.close()
        super().close()


# ---------------------------------------------------------------- the handler
class QdrantBackup(BackupHandler):
    service = "qdrant"
    required_meta: ClassVar[dict[ArtifactKind, tuple[str, ...]]] = {
        "qdrant_snapshot": ("collection",)
    }

    @contextmanager
    def _http(self, instance: Instance) -> Iterator[httpx.Client]:
        import httpx  # noqa: PLC0415

        with (
            instance.reach(HTTP_PORT) as (host, port),
            httpx.Client(
                base_url=f"http://{host}:{port}",
                # Qdrant itself, not its key gate: with the key Qdrant checks
                headers={"api-key": instance.secrets[own_key(instance.ctx, API_KEY)]},
                timeout=httpx.Timeout(60.0, read=None),
            ) as client,
        ):
            yield client

    def _call(self, instance: Instance, client: httpx.Client, method: str, path: str,
              **kwargs: Any) -> Any:  # fmt: skip
        import httpx  # noqa: PLC0415

        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise BackupError(
                f"Qdrant {method} {path} failed: {error}", where=instance.name
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json()["status"]["error"]
            except (ValueError, KeyError, TypeError):
                detail = response.text[:200]
            raise BackupError(
                f"Qdrant {method} {path} answered {response.status_code}: {detail}",
                where=instance.name,
            )
        return response.json().get("result") if path != "/" else response.json()

    def _state(self, instance: Instance, client: httpx.Client, collection: str) -> State:
        base = f"/collections/{quote(collection, safe='')}"
        count = self._call(instance, client, "POST", f"{base}/points/count", json={"exact": True})
        scroll = self._call(
            instance,
            client,
            "POST",
            f"{base}/points/scroll",
            json={"limit": SAMPLE_POINTS, "with_payload": True, "with_vector": True},
        )
        return State(int(count["count"]), points_digest(scroll.get("points") or []))

    # ------------------------------------------------------------ versions
    def version(self, instance: Instance) -> str:
        with self._http(instance) as client:
            return str(self._call(instance, client, "GET", "/")["version"])

    def incompatibility(self, backup_version: str, current_version: str) -> str | None:
        if same_minor(backup_version, current_version):
            return None
        return (
            f"the snapshots are of Qdrant {backup_version}; this server runs "
            f"{current_version}, and a snapshot restores only onto the same minor version"
        )

    # ------------------------------------------------------------ backup
    def backup(self, instance: Instance, out: BackupOutput) -> ServiceBackup:
        artifacts: list[Artifact] = []
        notes: list[str] = []
        with self._http(instance) as client:
            version = str(self._call(instance, client, "GET", "/")["version"])
            listed = self._call(instance, client, "GET", "/collections")["collections"]
            collections = sorted(c["name"] for c in listed)
            aliases = self._call(instance, client, "GET", "/collections/aliases")["aliases"]
            for collection in collections:
                artifact, note = self._snapshot(instance, client, out, collection)
                digest = aliases_digest(aliases, collection)
                if digest is not None:
                    artifact = artifact.model_copy(
                        update={"samples": {**artifact.samples, ALIASES: digest}}
                    )
                artifacts.append(artifact)
                if note:
                    notes.append(note)
        aliases = sorted(
            ({"alias_name": a["alias_name"], "collection_name": a["collection_name"]}
             for a in aliases),
            key=lambda a: a["alias_name"],
        )  # fmt: skip
        return ServiceBackup(
            record=instance.record(version, {"aliases": aliases}),
            artifacts=artifacts,
            notes=notes,
        )

    def _snapshot(
        self, instance: Instance, client: httpx.Client, out: BackupOutput, collection: str
    ) -> tuple[Artifact, str | None]:
        base = f"/collections/{quote(collection, safe='')}"
        path = snapshot_path(collection)
        out.progress.note(self.service, f"snapshot of collection {collection}")
        for attempt in range(1, ATTEMPTS + 1):
            before = self._state(instance, client, collection)
            created = self._call(instance, client, "POST", f"{base}/snapshots?wait=true")
            after = self._state(instance, client, collection)
            remote = f"{base}/snapshots/{quote(created['name'], safe='')}"
            if before == after or attempt == ATTEMPTS:
                break
            self._call(instance, client, "DELETE", f"{remote}?wait=true")
        try:
            with (
                out.file(path, created.get("size")) as handle,
                client.stream("GET", remote) as response,
            ):
                if response.status_code != 200:
                    raise BackupError(
                        f"Qdrant GET {remote} answered {response.status_code}",
                        where=instance.name,
                    )
                for chunk in response.iter_bytes(1024 * 1024):
                    handle.write(chunk)
        finally:
            self._call(instance, client, "DELETE", f"{remote}?wait=true")
        checksum = created.get("checksum")
        if checksum and checksum != handle.sha256:
            raise BackupError(
                f"the snapshot of {collection} arrived corrupt: sha256 {handle.sha256[:12]}…, "
                f"Qdrant says {checksum[:12]}…",
                where=instance.name,
                fix="run the backup again",
            )
        counts, counts_min, samples = bracket(before, after)
        note = None
        if counts_min or not samples:
            note = (
                f"qdrant: collection {collection} kept changing during its snapshot; its "
                f"count is recorded as {counts_min.get(POINTS, counts[POINTS])}.."
                f"{counts[POINTS]} without a sample"
            )
        meta = {"collection": collection, "qdrant_checksum": checksum or ""}
        artifact = artifact_of(
            handle,
            path,
            self.service,
            "qdrant_snapshot",
            counts=counts,
            counts_min=counts_min,
            samples=samples,
            meta=meta,
        )
        return artifact, note

    # ------------------------------------------------------------ restore
    def restore(
        self,
        instance: Instance,
        record: ServiceRecord,
        artifacts: list[Artifact],
        backup_dir: Path,
        progress: Progress,
    ) -> list[str]:
        with self._http(instance) as client:
            for artifact in artifacts:
                collection = artifact.meta["collection"]
                base = f"/collections/{quote(collection, safe='')}"
                query = f"?wait=true&priority=snapshot&checksum={artifact.sha256}"
                with (
                    progress.transfer(f"{artifact.path} → qdrant", artifact.size) as advance,
                    _ReadCounter(backup_dir / artifact.path, advance) as upload,
                ):
                    self._call(
                        instance,
                        client,
                        "POST",
                        f"{base}/snapshots/upload{query}",
                        files={
                            "snapshot": (
                                Path(artifact.path).name,
                                upload,
                                "application/octet-stream",
                            )
                        },
                    )
            wanted = list(record.meta.get("aliases") or [])
            if wanted:
                existing = self._call(instance, client, "GET", "/collections/aliases")["aliases"]
                self._call(
                    instance,
                    client,
                    "POST",
                    "/collections/aliases",
                    json={"actions": alias_actions(wanted, existing)},
                )
        return [f"qdrant: recreated {len(wanted)} alias(es)"] if wanted else []

    # ------------------------------------------------------------ observe
    def observe(
        self, instance: Instance, record: ServiceRecord, artifacts: list[Artifact]
    ) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        with self._http(instance) as client:
            listed = {c["name"] for c in self._call(instance, client, "GET", "/collections")[
                "collections"
            ]}  # fmt: skip
            aliases = {
                a["alias_name"]: a["collection_name"]
                for a in self._call(instance, client, "GET", "/collections/aliases")["aliases"]
            }
            for artifact in artifacts:
                collection = artifact.meta["collection"]
                if collection not in listed:
                    found[artifact.path] = Observed()
                    continue
                state = self._state(instance, client, collection)
                found[artifact.path] = Observed({POINTS: state.count}, {SAMPLE: state.sample})
                alias_list = [
                    {"alias_name": name, "collection_name": target}
                    for name, target in aliases.items()
                ]
                digest = aliases_digest(alias_list, collection)
                if digest is not None:
                    found[artifact.path].samples[ALIASES] = digest
        return found


HANDLER = QdrantBackup()
