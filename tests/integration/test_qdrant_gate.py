"""nginx as Qdrant's key gate on REST and gRPC, and the rotation of Qdrant's two client keys
through it, on the local engine: a real nginx in front of the test bed's Qdrant STAND-IN (no
registry here has Qdrant's server; the stand-in checks ``api-key`` or ``Authorization: Bearer``
against its read-write and read-only keys as upstream does, on REST and on gRPC, and answers
401/403 and UNAUTHENTICATED/PERMISSION_DENIED alike). The gRPC clients are qdrant-client's
own stubs and ``QdrantClient(prefer_grpc=True)``.

One stack (Qdrant and nginx, Qdrant's gRPC published on a free port) is shared by the tests
of this module, which run in order:

- the gate: each client key opens Qdrant through nginx's loopback port (Qdrant's host port)
  with its own access (the read-only key reads, and its write is 403), in ``api-key`` and as a
  Bearer token; no key is answered by Qdrant itself (401), any other key by nginx (401),
  Qdrant's own keys and both headers at once included; Qdrant on the stack network refuses the
  clients' keys (nothing goes around the gate) and takes its own; no client key is in either
  container's ``docker inspect``; ``check`` passes, its gate rows (REST and gRPC) included;
- the gate on gRPC (h2c through nginx's loopback port, Qdrant's gRPC host port): the same
  keys with the same access, in ``api-key`` metadata and as a Bearer token; any other key
  UNAUTHENTICATED from nginx with Qdrant's own message, no key Qdrant's own answer, the health
  checks open whatever key is sent, a 6.5 MB message passed on; Qdrant's own gRPC port refuses
  the clients' keys;
- a backup and a restore reach Qdrant itself with its own key and give back every point;
- ``secrets rotate qdrant_api_key qdrant_read_only_api_key`` while a writer and a reader loop
  through the gate on REST and on gRPC, a new connection each time, with the keys they hold
  (moved when the rotation says so): zero failed requests, the old keys refused afterwards on
  both, neither nginx nor Qdrant recreated, Qdrant's own keys unchanged, the next plan empty;
- the same rotation with ``--stop-after moved`` while the loops keep the old keys (clients
  kbinfra does not manage): both values accepted until the loops move and a rerun finishes;
  no request fails.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

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

from kbinfra.probing.grpc_status import grpc_status

try:  # a package when tests/ has __init__.py files, plain modules otherwise
    from .stack_support import (
        ROTATION_STATE,
        Deployment,
        applied_deployment,
        container_url,
        free_port,
        rotate_following,
    )
    from .stack_support import stack_secrets as secrets_of
    from .testbed_support import Testbed
    from .traffic import BackgroundTraffic
except ImportError:
    from stack_support import (  # type: ignore[no-redef]
        ROTATION_STATE,
        Deployment,
        applied_deployment,
        container_url,
        free_port,
        rotate_following,
    )
    from stack_support import stack_secrets as secrets_of  # type: ignore[no-redef]
    from testbed_support import Testbed  # type: ignore[no-redef]
    from traffic import BackgroundTraffic  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

WRITE = "qdrant_api_key"
READ = "qdrant_read_only_api_key"
OWN_WRITE = "qdrant_upstream_api_key"
OWN_READ = "qdrant_upstream_read_only_api_key"
COLLECTION = "gate_docs"
DIMENSION = 8
MAX_SECONDS = 300.0


@pytest.fixture(scope="module")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("qgate") / "stack"

    def publish_grpc(data: dict[str, object]) -> None:
        data["services"]["qdrant"]["grpc_port"] = free_port()  # type: ignore[index]

    with applied_deployment(
        testbed, folder, ["qdrant", "nginx"], "kbq", configure=publish_grpc
    ) as deployment:
        yield deployment


def gate(stack: Deployment) -> str:
    return f"http://127.0.0.1:{stack.port('qdrant')}"


def grpc_gate(stack: Deployment) -> str:
    return f"127.0.0.1:{stack.spec['services']['qdrant']['grpc_port']}"


def key_metadata(key: str | None, form: str = "api-key") -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in key_headers(key, form).items()]


def grpc_call(
    address: str, method: str, key: str | None, form: str = "api-key", **fields: object
) -> tuple[grpc.StatusCode, str]:
    """One gRPC call on a new channel (a new connection): its status code and message."""
    with grpc.insecure_channel(address) as channel:
        stubs = {
            "HealthCheck": (qdrant_pb2_grpc.QdrantStub, pb.HealthCheckRequest),
            "List": (collections_service_pb2_grpc.CollectionsStub, pb.ListCollectionsRequest),
            "Count": (points_service_pb2_grpc.PointsStub, pb.CountPoints),
            "Upsert": (points_service_pb2_grpc.PointsStub, pb.UpsertPoints),
            "Query": (points_service_pb2_grpc.PointsStub, pb.QueryPoints),
        }
        stub, request = stubs[method]
        try:
            getattr(stub(channel), method)(
                request(**fields), metadata=key_metadata(key, form), timeout=30
            )
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def grpc_points(seed: int, count: int) -> list[pb.PointStruct]:
    return [
        pb.PointStruct(
            id=pb.PointId(num=int(point["id"])),  # type: ignore[call-overload]
            vectors=pb.Vectors(vector=pb.Vector(data=point["vector"])),
        )
        for point in points(seed, count)
    ]


def key_headers(key: str | None, form: str = "api-key") -> dict[str, str]:
    if key is None:
        return {}
    return {"api-key": key} if form == "api-key" else {"Authorization": f"Bearer {key}"}


def status(base: str, method: str, path: str, headers: dict[str, str], body: object = None) -> int:
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        response = http.request(method, path, json=body)
    if response.status_code == 200 and method == "GET":
        assert response.json()["status"] == "ok", response.text
    return response.status_code


def points(seed: int, count: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {"id": seed * 1000 + i, "vector": [rng.random() for _ in range(DIMENSION)]}
        for i in range(count)
    ]


def test_the_gate_gives_each_client_key_its_own_access_and_qdrant_its_own_key(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    secrets = secrets_of(stack)
    write, read = secrets[WRITE], secrets[READ]
    base = gate(stack)
    created = status(
        base,
        "PUT",
        f"/collections/{COLLECTION}",
        key_headers(write),
        {"vectors": {"size": DIMENSION, "distance": "Cosine"}},
    )
    assert created == 200
    upsert = {"points": points(1, 50)}
    assert (
        status(
            base, "PUT", f"/collections/{COLLECTION}/points?wait=true", key_headers(write), upsert
        )
        == 200
    )
    for form in ("api-key", "Bearer"):
        assert status(base, "GET", f"/collections/{COLLECTION}", key_headers(write, form)) == 200
        assert status(base, "GET", f"/collections/{COLLECTION}", key_headers(read, form)) == 200
        # the read-only key gets Qdrant's read-only key, never more
        refused = status(base, "DELETE", f"/collections/{COLLECTION}", key_headers(read, form))
        assert refused == 403, form
        for other in (secrets[OWN_WRITE], secrets[OWN_READ], write.swapcase(), write + "x"):
            assert status(base, "GET", "/collections", key_headers(other, form)) == 401, form
    assert status(base, "GET", "/collections", {}) == 401  # Qdrant's own answer
    # what Qdrant answers with no key, nginx sends on with none, whatever key came
    for path in ("/readyz", "/healthz", "/"):
        with httpx.Client(base_url=base, headers=key_headers("not-a-key-of-this-stack")) as http:
            assert http.get(path).status_code == 200, path
    both = {"api-key": write, "Authorization": f"Bearer {write}"}
    assert status(base, "GET", "/collections", both) == 401
    direct = container_url(docker_client, stack, "qdrant", 6333)
    for client_key in (write, read):  # nothing goes around the gate
        assert status(direct, "GET", "/collections", key_headers(client_key)) == 401
    assert status(direct, "GET", "/collections", key_headers(secrets[OWN_WRITE])) == 200
    for service in ("qdrant", "nginx"):
        shown = json.dumps(docker_client.api.inspect_container(stack.container(service)))
        assert write not in shown and read not in shown, f"{service}'s docker inspect"
    shown = json.dumps(docker_client.api.inspect_container(stack.container("nginx")))
    assert secrets[OWN_WRITE] not in shown and secrets[OWN_READ] not in shown
    checked = stack.run("check", "--only", "qdrant", "-o", "json")  # no app behind nginx
    assert checked.code == 0, checked.out + checked.err
    rows = {(r["service"], r["check"]): r for r in checked.json()["checks"]}
    for row in (
        "refuses-other-keys",
        "read-only-key-cannot-write",
        "collections-with-api-key",
        "grpc-with-api-key",
        "grpc-refuses-other-keys",
    ):
        assert rows[("qdrant", row)]["ok"], rows


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_on_grpc_the_gate_gives_the_same_keys_the_same_access(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    secrets = secrets_of(stack)
    write, read = secrets[WRITE], secrets[READ]
    address = grpc_gate(stack)
    ok = (grpc.StatusCode.OK, "")
    upsert = {"collection_name": COLLECTION, "wait": True, "points": grpc_points(3, 5)}
    for form in ("api-key", "Bearer"):
        assert grpc_call(address, "Upsert", write, form, **upsert) == ok, form
        assert grpc_call(address, "Count", read, form, collection_name=COLLECTION) == ok, form
        # the read-only key gets Qdrant's read-only key, never more
        assert grpc_call(address, "Upsert", read, form, **upsert) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "Forbidden: Global manage access is required",
        ), form
        for other in (secrets[OWN_WRITE], secrets[OWN_READ], write.swapcase(), write + "x"):
            assert grpc_call(address, "List", other, form) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "Invalid API key or JWT",
            ), form
        # the health check needs no key, and a wrong one does not close it
        assert grpc_call(address, "HealthCheck", "not-a-key-of-this-stack", form) == ok
    assert grpc_call(address, "List", None) == (  # Qdrant's own answer
        grpc.StatusCode.UNAUTHENTICATED,
        "Must provide an API key or an Authorization bearer token",
    )
    # Qdrant's own client, unchanged, over gRPC through the gate
    client = QdrantClient(
        host="127.0.0.1",
        port=stack.port("qdrant"),
        grpc_port=int(address.rpartition(":")[2]),
        prefer_grpc=True,
        https=False,
        api_key=read,
        check_compatibility=False,
    )
    try:
        found = client.query_points(COLLECTION, query=points(3, 1)[0]["vector"], limit=3)
        assert found.points[0].id == 3000
        assert client.count(COLLECTION).count == 55
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            client.upsert(COLLECTION, [models.PointStruct(id=1, vector=[0.5] * DIMENSION)])
    finally:
        client.close()
    # a message far over gRPC's usual 4 MB passes the gate (nginx takes any body size), and
    # the gRPC health checking protocol is open through it whatever key is sent
    big = pb.UpsertPoints(
        collection_name=COLLECTION,
        wait=True,
        points=[
            pb.PointStruct(
                id=point.id,  # the same points again: the count stays
                vectors=point.vectors,
                payload={"text": pb.Value(string_value="x" * 1_300_000)},
            )
            for point in grpc_points(3, 5)
        ],
    )
    assert big.ByteSize() > 6_000_000
    assert grpc_call(address, "Upsert", write, **{f.name: v for f, v in big.ListFields()}) == ok
    host, _, port = address.rpartition(":")
    health = grpc_status(host, int(port), "/grpc.health.v1.Health/Check", [("api-key", "bad")])
    assert health == (0, "")
    # nothing goes around the gate: Qdrant's own gRPC port takes its own keys only
    direct = container_url(docker_client, stack, "qdrant", 6334).removeprefix("http://")
    for client_key in (write, read):
        assert grpc_call(direct, "List", client_key)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_call(direct, "List", secrets[OWN_WRITE]) == ok


def test_backup_and_restore_reach_qdrant_itself_and_give_back_every_point(
    stack: Deployment,
) -> None:
    write = secrets_of(stack)[WRITE]
    base = gate(stack)
    count = f"/collections/{COLLECTION}/points/count"
    with httpx.Client(base_url=base, headers=key_headers(write), timeout=60) as http:
        before = http.post(count, json={"exact": True}).json()["result"]["count"]
    assert before == 55  # 50 over REST, 5 over gRPC
    made = stack.run("backup", "--output", "json", timeout=900)
    assert made.code == 0, made.err
    backup = made.json()["path"]
    extra = {"points": points(2, 10)}
    assert (
        status(
            base, "PUT", f"/collections/{COLLECTION}/points?wait=true", key_headers(write), extra
        )
        == 200
    )
    restored = stack.run(
        "restore", backup, "--yes", "--no-safety-backup", "--output", "json", timeout=900
    )
    assert restored.code == 0, restored.err
    with httpx.Client(base_url=base, headers=key_headers(write), timeout=60) as http:
        after = http.post(count, json={"exact": True}).json()["result"]["count"]
    assert after == before  # the 10 points written after the backup are gone again


class Clients(BackgroundTraffic):
    """A writer (upserts, read-write key) and a reader (reads, read-only key) through the
    gate on REST and on gRPC, a new connection each request, alternating the two header
    forms; :meth:`move` gives them the new keys."""

    max_seconds = MAX_SECONDS

    def __init__(self, stack: Deployment, keys: dict[str, str]) -> None:
        super().__init__()
        self.stack = stack
        self.keys = dict(keys)

    def move(self, new: dict[str, str]) -> None:
        self.keys = {name: new.get(name, value) for name, value in self.keys.items()}

    def send(self) -> None:
        base, address = gate(self.stack), grpc_gate(self.stack)
        for number in self.rounds():
            form = "api-key" if number % 2 else "Bearer"
            requests = (
                (
                    "writer",
                    "PUT",
                    f"/collections/{COLLECTION}/points?wait=true",
                    WRITE,
                    {"points": points(100 + number % 50, 2)},
                ),
                ("reader", "GET", f"/collections/{COLLECTION}", READ, None),
            )
            for who, method, path, secret, body in requests:
                self.sent += 1
                try:
                    code = status(base, method, path, key_headers(self.keys[secret], form), body)
                except httpx.HTTPError as error:
                    self.failures.append(f"{who}: {type(error).__name__}: {error}")
                    continue
                if code != 200:
                    self.failures.append(f"{who} ({form}): HTTP {code}")
            calls = (
                (
                    "gRPC writer",
                    "Upsert",
                    WRITE,
                    {
                        "collection_name": COLLECTION,
                        "wait": True,
                        "points": grpc_points(200 + number % 50, 2),
                    },
                ),
                ("gRPC reader", "Count", READ, {"collection_name": COLLECTION}),
            )
            for who, method, secret, fields in calls:
                self.sent += 1
                answer = grpc_call(address, method, self.keys[secret], form, **fields)
                if answer[0] != grpc.StatusCode.OK:
                    self.failures.append(f"{who} ({form}): {answer[0].name} {answer[1]}")


def test_rotating_both_client_keys_reloads_nginx_and_fails_no_request(
    stack: Deployment, docker_client: docker.DockerClient
) -> None:
    old = secrets_of(stack)
    ids = {
        s: docker_client.api.inspect_container(stack.container(s))["Id"]
        for s in ("qdrant", "nginx")
    }
    with Clients(stack, {WRITE: old[WRITE], READ: old[READ]}) as clients:
        time.sleep(0.5)
        code, err, out = rotate_following(stack, clients.move, WRITE, READ, "--yes", "-o", "json")
        time.sleep(0.5)
    print(clients.report())
    assert code == 0, err
    assert clients.sent >= 40 and clients.failures == [], clients.report()
    assert sorted(json.loads(out)["rotated"]) == [WRITE, READ]
    assert "qdrant: the new values open it, the old ones are refused" in err
    new = secrets_of(stack)
    assert clients.keys == {WRITE: new[WRITE], READ: new[READ]}
    assert (new[OWN_WRITE], new[OWN_READ]) == (old[OWN_WRITE], old[OWN_READ])
    base = gate(stack)
    for form in ("api-key", "Bearer"):
        for secret in (WRITE, READ):
            assert new[secret] != old[secret]
            assert status(base, "GET", "/collections", key_headers(old[secret], form)) == 401
            assert status(base, "GET", "/collections", key_headers(new[secret], form)) == 200
            refused = grpc_call(grpc_gate(stack), "List", old[secret], form)
            assert refused == (grpc.StatusCode.UNAUTHENTICATED, "Invalid API key or JWT")
            assert grpc_call(grpc_gate(stack), "List", new[secret], form)[0] == grpc.StatusCode.OK
    for service, before in ids.items():
        now = docker_client.api.inspect_container(stack.container(service))["Id"]
        assert now == before, f"{service} was recreated"
    plan = stack.run("plan", "-o", "json")
    assert plan.code == 0 and not plan.json()["changes"], plan.out
    checked = stack.run("check", "--only", "qdrant", "-o", "json")  # no app behind nginx
    assert checked.code == 0, checked.out + checked.err


def test_a_rotation_stopped_after_moved_waits_for_clients_kbinfra_does_not_manage(
    stack: Deployment,
) -> None:
    """``--stop-after moved``: kbinfra's own clients are moved, both values stay accepted
    while the operator moves clients of their own (here: the loops, which the command never
    moves), and a rerun revokes the old values. No request of theirs fails on the way."""
    old = secrets_of(stack)
    base, address = gate(stack), grpc_gate(stack)
    with Clients(stack, {WRITE: old[WRITE], READ: old[READ]}) as clients:
        time.sleep(0.5)
        code, err, out = rotate_following(
            stack, lambda _: None, WRITE, READ, "--yes", "--stop-after", "moved", "-o", "json"
        )
        assert code == 0, err
        assert json.loads(out)["stopped_after"] == "moved"
        assert "the rotation is unfinished: move the clients kbinfra does not manage" in err
        state_file = stack.dir / ROTATION_STATE
        assert state_file.stat().st_mode & 0o777 == 0o600
        new = json.loads(state_file.read_text())["new"]
        for secret in (WRITE, READ):  # both values open the gate, on REST and on gRPC
            for value in (old[secret], new[secret]):
                assert status(base, "GET", "/collections", key_headers(value)) == 200
                assert grpc_call(address, "List", value)[0] == grpc.StatusCode.OK
        assert secrets_of(stack)[WRITE] == old[WRITE]  # secrets.yaml waits for the finish
        refused = stack.run("apply", "--yes")
        assert refused.code == 2 and "is unfinished" in refused.err, refused.err
        time.sleep(0.5)
        clients.move(new)  # the operator moves their own clients, reading rotation.json
        time.sleep(0.5)
        code, err, out = rotate_following(stack, lambda _: None, "--yes", "-o", "json")
        assert code == 0, err
        finished = json.loads(out)
        assert finished["stopped_after"] is None and finished["resumed_from"] == "moved"
        time.sleep(0.5)
    print(clients.report())
    assert clients.sent >= 40 and clients.failures == [], clients.report()
    assert {s: secrets_of(stack)[s] for s in (WRITE, READ)} == {s: new[s] for s in (WRITE, READ)}
    for secret in (WRITE, READ):
        assert status(base, "GET", "/collections", key_headers(old[secret])) == 401
        assert grpc_call(address, "List", old[secret])[0] == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_call(address, "List", new[secret])[0] == grpc.StatusCode.OK
