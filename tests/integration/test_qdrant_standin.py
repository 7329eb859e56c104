"""The Qdrant STAND-IN (tests/testbed/images/qdrant) against upstream's REST semantics.

Qdrant's server cannot be had here; every test that backs up, checks or benchmarks Qdrant
runs against this stand-in, so what it answers must be what upstream answers for the parts
kbinfra uses: the envelope and status codes, API-key rules, Cosine vectors stored normalized,
and snapshots that give back every point and refuse a hostile archive without touching the
collection. It runs on Qdrant Edge (Qdrant's own storage engine).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import grpc
import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb
from qdrant_client.grpc import (
    collections_service_pb2_grpc,
    points_service_pb2_grpc,
    qdrant_pb2_grpc,
)

from kbinfra.containers import locked_down
from kbinfra.service import DEFAULT_PIDS_LIMIT, TmpfsMount

pytestmark = pytest.mark.integration

KEY = "standin-test-admin-key"
READ_KEY = "standin-test-read-key"
ALT_KEY = "standin-test-alt-key"
DIMENSION = 16


class Standin:
    def __init__(self, container: Any) -> None:
        self.container = container
        self.url = wait_ready(container)  # the published port may change on a restart
        bound = container.attrs["NetworkSettings"]["Ports"]["6334/tcp"]
        self.grpc_address = f"127.0.0.1:{bound[0]['HostPort']}"


@pytest.fixture(scope="module")
def standin(docker_client: docker.DockerClient, images: dict[str, str]) -> Iterator[Standin]:
    """One stand-in container for the module, with an admin, an alternative admin (the one
    a key rotation adds) and a read-only key."""
    container = run_standin(
        docker_client,
        images["qdrant"],
        environment={
            "QDRANT__SERVICE__API_KEY": KEY,
            "QDRANT__SERVICE__READ_ONLY_API_KEY": READ_KEY,
            "QDRANT__SERVICE__ALT_API_KEY": ALT_KEY,
        },
    )
    try:
        yield Standin(container)
    finally:
        container.remove(force=True, v=True)


def run_standin(docker_client: docker.DockerClient, image: str, **options: Any) -> Any:
    """A stand-in container on a random loopback port; ``options`` go to docker-py's run."""
    # docker-py documents a host port of None as "a random one"; its stubs do not allow it.
    return docker_client.containers.run(  # type: ignore[call-overload]
        image,
        detach=True,
        name=f"kbt-qdrant-standin-{random.randrange(1 << 32):08x}",
        ports={"6333/tcp": ("127.0.0.1", None), "6334/tcp": ("127.0.0.1", None)},
        **options,
    )


def wait_ready(container: Any) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        container.reload()
        bound = (container.attrs["NetworkSettings"]["Ports"] or {}).get("6333/tcp")
        if bound:
            url = f"http://127.0.0.1:{bound[0]['HostPort']}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    raise AssertionError(f"the stand-in did not answer: {container.logs(tail=20)!r}")


@pytest.fixture
def admin(standin: Standin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, headers={"api-key": KEY}, timeout=30) as client:
        yield client


@pytest.fixture
def collection(admin: httpx.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "t_" + "".join(c for c in request.node.name if c.isalnum())[:40]
    admin.delete(f"/collections/{name}")
    created = admin.put(
        f"/collections/{name}", json={"vectors": {"size": DIMENSION, "distance": "Cosine"}}
    )
    assert created.status_code == 200, created.text
    yield name
    admin.delete(f"/collections/{name}")


def points(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "vector": [rng.uniform(-5, 5) for _ in range(DIMENSION)],
            "payload": {"n": i, "text": f"chunk {i}"},
        }
        for i in range(count)
    ]


def upsert(http: httpx.Client, name: str, batch: list[dict[str, Any]]) -> None:
    response = http.put(f"/collections/{name}/points?wait=true", json={"points": batch})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["status"] == "completed"


def every_point(http: httpx.Client, name: str) -> dict[Any, tuple[Any, list[float]]]:
    found: dict[Any, tuple[Any, list[float]]] = {}
    offset = None
    while True:
        body = {"limit": 100, "with_payload": True, "with_vector": True, "offset": offset}
        page = http.post(f"/collections/{name}/points/scroll", json=body).json()["result"]
        found.update({p["id"]: (p["payload"], p["vector"]) for p in page["points"]})
        offset = page["next_page_offset"]
        if offset is None:
            return found


def count(http: httpx.Client, name: str) -> int:
    response = http.post(f"/collections/{name}/points/count", json={"exact": True})
    assert response.status_code == 200, response.text
    return int(response.json()["result"]["count"])


def test_cosine_vectors_are_stored_normalized_as_upstream(
    admin: httpx.Client, collection: str
) -> None:
    upsert(admin, collection, points(20, seed=1))
    stored = every_point(admin, collection)
    assert len(stored) == 20
    for _, vector in stored.values():
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
    query = {"query": [1.0] * DIMENSION, "limit": 5, "params": {"exact": True}}
    hits = admin.post(f"/collections/{collection}/points/query", json=query).json()
    scores = [p["score"] for p in hits["result"]["points"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)  # cosine of unit vectors


def test_it_answers_errors_and_keys_as_upstream(
    standin: Standin, admin: httpx.Client, collection: str
) -> None:
    url = standin.url
    again = admin.put(
        f"/collections/{collection}", json={"vectors": {"size": DIMENSION, "distance": "Cosine"}}
    )
    assert again.status_code == 409
    assert "already exists" in again.json()["status"]["error"]
    missing = admin.get("/collections/no_such_collection")
    assert missing.status_code == 404
    assert set(missing.json()) == {"status", "time"}
    assert httpx.get(f"{url}/collections").status_code == 401
    assert httpx.get(f"{url}/collections", headers={"api-key": "wrong"}).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200  # upstream's whitelist
    reader = {"api-key": READ_KEY}
    upsert(admin, collection, points(3, seed=2))
    query = {"query": [0.5] * DIMENSION, "limit": 2}
    read = httpx.post(f"{url}/collections/{collection}/points/query", json=query, headers=reader)
    assert read.status_code == 200 and len(read.json()["result"]["points"]) == 2
    write = httpx.put(
        f"{url}/collections/{collection}/points?wait=true",
        json={"points": points(1, seed=3)},
        headers=reader,
    )
    assert write.status_code == 403
    # alt_api_key grants what api_key grants (upstream 1.17+: the second key of a rotation)
    alternative = {"api-key": ALT_KEY}
    for method, path, body in (
        ("PUT", f"/collections/{collection}/points?wait=true", {"points": points(1, seed=4)}),
        ("POST", f"/collections/{collection}/points/query", query),
        ("GET", "/collections", None),
    ):
        answer = httpx.request(method, f"{url}{path}", json=body, headers=alternative)
        assert answer.status_code == 200, (path, answer.text)
    unsupported = admin.post(
        f"/collections/{collection}/points/query",
        json={"prefetch": [{"query": [0.1] * DIMENSION}], "query": {"fusion": "rrf"}},
    )
    assert unsupported.status_code == 400  # refused, never silently ignored


def snapshot(http: httpx.Client, name: str) -> dict[str, Any]:
    response = http.post(f"/collections/{name}/snapshots?wait=true")
    assert response.status_code == 200, response.text
    return dict(response.json()["result"])


def grpc_answer(
    address: str, stub: Any, method: str, request: Any, metadata: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            getattr(stub(channel), method)(request, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_its_grpc_api_answers_keys_points_and_errors_as_upstream(
    standin: Standin, admin: httpx.Client, collection: str
) -> None:
    address = standin.grpc_address
    points_stub = points_service_pb2_grpc.PointsStub
    listing = (collections_service_pb2_grpc.CollectionsStub, "List", pb.ListCollectionsRequest())
    ok = (grpc.StatusCode.OK, "")
    # upstream's auth (src/tonic/auth.rs): the health check is open, everything else needs
    # a key in api-key or as a Bearer token
    health = (qdrant_pb2_grpc.QdrantStub, "HealthCheck", pb.HealthCheckRequest())
    assert grpc_answer(address, *health, []) == ok
    assert grpc_answer(address, *health, [("api-key", "wrong")]) == ok
    assert grpc_answer(address, *listing, []) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "Must provide an API key or an Authorization bearer token",
    )
    assert grpc_answer(address, *listing, [("api-key", "wrong")]) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "Invalid API key or JWT",
    )
    for metadata in ([("api-key", KEY)], [("authorization", f"Bearer {ALT_KEY}")]):
        assert grpc_answer(address, *listing, metadata) == ok
    upsert_one = pb.UpsertPoints(
        collection_name=collection,
        wait=True,
        points=[
            pb.PointStruct(
                id=pb.PointId(num=7), vectors=pb.Vectors(vector=pb.Vector(data=[1.0] * DIMENSION))
            )
        ],
    )
    assert grpc_answer(address, points_stub, "Upsert", upsert_one, [("api-key", READ_KEY)]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "Forbidden: Global manage access is required",
    )
    counting = pb.CountPoints(collection_name=collection)
    assert grpc_answer(address, points_stub, "Count", counting, [("api-key", READ_KEY)]) == ok
    missing = pb.CountPoints(collection_name="no_such_collection")
    assert grpc_answer(address, points_stub, "Count", missing, [("api-key", KEY)]) == (
        grpc.StatusCode.NOT_FOUND,
        "Not found: Collection `no_such_collection` doesn't exist!",
    )
    # the gRPC health checking protocol, open like HealthCheck
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", metadata=[("api-key", "wrong")], timeout=30) == b"\x08\x01"  # SERVING
    # a message far over grpcio's 4 MB default: upstream takes any size
    big = pb.UpsertPoints(
        collection_name=collection,
        wait=True,
        points=[
            pb.PointStruct(
                id=pb.PointId(num=100 + i),
                vectors=pb.Vectors(vector=pb.Vector(data=[1.0] * DIMENSION)),
                payload={"text": pb.Value(string_value="x" * 1_000_000)},
            )
            for i in range(6)
        ],
    )
    assert big.ByteSize() > 6_000_000
    assert grpc_answer(address, points_stub, "Upsert", big, [("api-key", KEY)]) == ok
    assert count(admin, collection) == 6
    deleting = pb.DeletePoints(collection_name=collection)
    assert grpc_answer(address, points_stub, "Delete", deleting, [("api-key", KEY)])[0] == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    # Qdrant's own client over gRPC: what it writes REST reads back, and the other way round
    client = QdrantClient(
        host="127.0.0.1",
        port=int(standin.url.rpartition(":")[2]),
        grpc_port=int(address.rpartition(":")[2]),
        prefer_grpc=True,
        https=False,
        api_key=KEY,
        check_compatibility=False,
    )
    try:
        batch = points(30, seed=5)
        client.upsert(
            collection,
            [
                models.PointStruct(id=p["id"], vector=p["vector"], payload=p["payload"])
                for p in batch
            ],
            wait=True,
        )
        assert count(admin, collection) == 36 and client.count(collection).count == 36
        query = {"query": batch[4]["vector"], "limit": 5, "with_payload": True}
        rest = admin.post(f"/collections/{collection}/points/query", json=query).json()
        over_grpc = client.query_points(collection, **query)
        assert [(p.id, p.payload) for p in over_grpc.points] == [
            (p["id"], p["payload"]) for p in rest["result"]["points"]
        ]
        assert over_grpc.points[0].id == 4
        assert client.collection_exists(collection) and not client.collection_exists("nope")
        assert collection in {c.name for c in client.get_collections().collections}
    finally:
        client.close()


def test_a_snapshot_gives_back_every_point_and_survives_a_restart(
    standin: Standin, admin: httpx.Client, collection: str
) -> None:
    upsert(admin, collection, points(300, seed=4))
    before = every_point(admin, collection)
    taken = snapshot(admin, collection)
    # Edge preallocates 32 MiB files; the snapshot holds their data, not their holes.
    assert taken["size"] < 4 * 1024 * 1024, taken
    upsert(admin, collection, points(350, seed=5))
    assert every_point(admin, collection) != before
    location = f"file:///qdrant/snapshots/{collection}/{taken['name']}"
    recovered = admin.put(
        f"/collections/{collection}/snapshots/recover",
        json={"location": location, "priority": "snapshot", "checksum": taken["checksum"]},
    )
    assert recovered.status_code == 200, recovered.text
    assert every_point(admin, collection) == before
    standin.container.restart(timeout=10)
    standin.url = wait_ready(standin.container)
    admin.base_url = httpx.URL(standin.url)
    assert every_point(admin, collection) == before


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def manifest(**extra: Any) -> tuple[tarfile.TarInfo, bytes]:
    body = {
        "format": "kbinfra-testbed-qdrant-standin-snapshot/2",
        "qdrant_version": "1.16.3",
        "collection": "x",
        "config": {"params": {"vectors": {"size": DIMENSION, "distance": "Cosine"}}},
        **extra,
    }
    return tarfile.TarInfo("standin-manifest.json"), json.dumps(body).encode()


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


HOSTILE: dict[str, Callable[[], bytes]] = {
    "path out of the folder": lambda: tar_bytes(
        [manifest(), (tarfile.TarInfo("shard/../../../tmp/kbinfra-escaped"), b"x")]
    ),
    "symlink": lambda: tar_bytes([manifest(), symlink("shard/segments", "/etc")]),
    "size of a file it does not hold": lambda: tar_bytes(
        [manifest(sizes={"../../etc/passwd": 10}), (tarfile.TarInfo("shard/a"), b"x")]
    ),
    "not a shard": lambda: tar_bytes([manifest(), (tarfile.TarInfo("shard/a"), b"garbage")]),
    "not a tar file": lambda: b"\x00" * 4096,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_snapshot_is_refused_and_the_collection_untouched(
    admin: httpx.Client, collection: str, kind: str
) -> None:
    upsert(admin, collection, points(10, seed=6))
    before = every_point(admin, collection)
    response = admin.post(
        f"/collections/{collection}/snapshots/upload?priority=snapshot",
        files={"snapshot": ("hostile.snapshot", HOSTILE[kind](), "application/octet-stream")},
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"status", "time"}
    assert every_point(admin, collection) == before


#: More than the 64 MB tmpfs kbinfra gives Qdrant's /tmp (TmpfsMount's default size).
LARGE_UPLOAD = 72 * 1024 * 1024


def test_an_upload_larger_than_the_tmp_tmpfs_is_spooled_into_the_snapshots_path(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    """Run as kbinfra runs Qdrant (read-only root, /tmp a 64 MB tmpfs: QdrantService's
    container), an uploaded snapshot larger than /tmp restores: upstream spools a multipart
    upload into its snapshots path (src/actix/mod.rs, TempFileConfig), not into /tmp."""
    tmp = TmpfsMount("/tmp")
    assert tmp.size_mb * 1024 * 1024 < LARGE_UPLOAD
    container = run_standin(
        docker_client,
        images["qdrant"],
        environment={"QDRANT__SERVICE__API_KEY": KEY},
        # anonymous volumes, as the service's storage and snapshots volumes; v=True removes them
        mounts=[
            docker.types.Mount(target=target, source=None, type="volume")
            for target in ("/qdrant/storage", "/qdrant/snapshots")
        ],
        **locked_down(pids_limit=DEFAULT_PIDS_LIMIT, tmpfs=(tmp,)),
    )
    try:
        url = wait_ready(container)
        with httpx.Client(base_url=url, headers={"api-key": KEY}, timeout=120) as http:
            name = "large_upload"
            created = http.put(
                f"/collections/{name}", json={"vectors": {"size": DIMENSION, "distance": "Cosine"}}
            )
            assert created.status_code == 200, created.text
            upsert(http, name, points(50, seed=7))
            before = every_point(http, name)
            taken = snapshot(http, name)
            archive = http.get(f"/collections/{name}/snapshots/{taken['name']}")
            assert archive.status_code == 200, archive.text
            # Zero blocks after the archive's end-of-archive marker, as tar pads a record: the
            # same snapshot to a reader, but an upload larger than /tmp.
            padded = archive.content + bytes(LARGE_UPLOAD - len(archive.content))
            checksum = hashlib.sha256(padded).hexdigest()
            assert http.delete(f"/collections/{name}").status_code == 200
            response = http.post(
                f"/collections/{name}/snapshots/upload",
                params={"priority": "snapshot", "checksum": checksum},
                files={"snapshot": ("large.snapshot", padded, "application/octet-stream")},
            )
            assert response.status_code == 200, (response.text, container.logs(tail=20))
            assert response.json()["result"] is True
            assert every_point(http, name) == before
    finally:
        container.remove(force=True, v=True)
