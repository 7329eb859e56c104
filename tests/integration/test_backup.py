"""backup / restore / backup verify against real PostgreSQL, Redis and the Qdrant stand-in,
locally and over SSH. Every claim runs the real CLI; the data is read back with real clients.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from kbinfra.backup.manifest import manifest_sum_line
from kbinfra.backup.signing import signature_line

from . import testbed_support
from .stack_support import SECRET_MARK, Deployment, fixed_secret, new_deployment

pytestmark = pytest.mark.integration

DATA_SERVICES = ("postgres", "qdrant", "redis")
REDIS_READ = {
    "string": ("GET",),
    "list": ("LRANGE", "0", "-1"),
    "set": ("SMEMBERS",),
    "zset": ("ZRANGE", "0", "-1", "WITHSCORES"),
    "hash": ("HGETALL",),
    "stream": ("XRANGE", "-", "+"),
}


@pytest.fixture(scope="module", params=["local", "ssh"])
def stack(
    request: pytest.FixtureRequest,
    testbed: testbed_support.Testbed,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """One deployment of the three data services per target kind, shared by this module."""
    folder = tmp_path_factory.mktemp(f"backup-{request.param}") / "stack"
    deployment = new_deployment(request.param, folder, testbed, DATA_SERVICES, prefix="kbb")
    applied = deployment.run("apply", "--yes")
    assert applied.code == 0, applied.err
    yield deployment
    deployment.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
    )


# ---------------------------------------------------------------- clients
def pg(stack: Deployment, database: str = "kb") -> psycopg.Connection[Any]:
    connection: psycopg.Connection[Any] = stack.postgres(database)
    return connection


def qdrant(stack: Deployment) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.port('qdrant')}",
        headers={"api-key": fixed_secret("qdrant_api_key")},
        timeout=60,
    )


def rdb(stack: Deployment, db: int = 0) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=stack.port("redis"),
        db=db,
        username="admin",
        password=fixed_secret("redis_admin_password"),
    )


# ---------------------------------------------------------------- seeding and reading
def seed(stack: Deployment) -> dict[str, Any]:
    """Known data: several tables and a second database, two collections with vectors and
    payloads and an alias, keys of every type in three Redis dbs. Returns the vectors sent."""
    with pg(stack) as conn:
        conn.execute(
            "create table docs (id serial primary key, title text, body text, score float8, "
            "meta jsonb, created timestamptz default '2026-01-01')"
        )
        conn.execute("create table chunks (doc_id int, n int, text text, primary key (doc_id, n))")
        conn.execute("create table events (at int, what text)")  # no primary key
        conn.execute(
            "insert into docs (title, body, score, meta) select 'doc ' || g, "
            "repeat(md5(g::text), g % 20), g / 7.0, jsonb_build_object('g', g) "
            "from generate_series(1, 3000) g"
        )
        conn.execute(
            "insert into chunks select g / 10, g % 10, md5(g::text) "
            "from generate_series(10, 4009) g"
        )
        conn.execute("insert into events select g, 'e' || g from generate_series(1, 700) g")
        conn.execute("create database second")
        conn.execute("create role reader login connection limit 3")
        conn.execute("grant pg_read_all_data to reader")
    with pg(stack, "second") as conn:
        conn.execute("create table t (k text primary key, v bytea)")
        conn.execute(
            "insert into t select 'k' || g, sha256(g::text::bytea) from generate_series(1, 1200) g"
        )
    rnd = random.Random(42)
    vectors: dict[str, dict[int, list[float]]] = {}
    with qdrant(stack) as client:
        for name, dim, count in (("kb_docs", 8, 1200), ("kb_faq", 4, 300)):
            client.put(
                f"/collections/{name}", json={"vectors": {"size": dim, "distance": "Dot"}}
            ).raise_for_status()
            vectors[name] = {}
            for start in range(0, count, 400):
                points = []
                for i in range(start, min(count, start + 400)):
                    vector = [rnd.uniform(-1, 1) for _ in range(dim)]
                    vectors[name][i] = vector
                    points.append(
                        {"id": i, "vector": vector, "payload": {"i": i, "tag": f"t{i % 7}"}}
                    )
                client.put(
                    f"/collections/{name}/points?wait=true", json={"points": points}
                ).raise_for_status()
        client.post(
            "/collections/aliases",
            json={
                "actions": [{"create_alias": {"alias_name": "docs", "collection_name": "kb_docs"}}]
            },
        ).raise_for_status()
    for db in (0, 3, 7):
        pipe = rdb(stack, db).pipeline()
        for i in range(300):
            pipe.set(f"s:{i}", f"v{i}-{db}")
        for i in range(25):
            pipe.rpush(f"l:{i}", *[f"e{j}" for j in range(i + 1)])
            pipe.sadd(f"set:{i}", *[f"m{j}" for j in range(i + 1)])
            pipe.hset(f"h:{i}", mapping={f"f{j}": j for j in range(i + 1)})
            pipe.zadd(f"z:{i}", {f"m{j}": j / 3 for j in range(i + 1)})
            pipe.xadd(f"x:{i}", {"a": str(i)})
        pipe.set("ttl", "lives long", ex=86400)
        pipe.execute()
    return vectors


def read_postgres(
    stack: Deployment, databases: tuple[str, ...] = ("kb", "second")
) -> dict[str, dict[str, list[str]]]:
    content: dict[str, dict[str, list[str]]] = {}
    for database in databases:
        with pg(stack, database) as conn:
            tables = conn.execute(
                "select schemaname || '.' || tablename from pg_tables "
                "where schemaname = 'public' order by 1"
            ).fetchall()
            content[database] = {
                name: [
                    row[0]
                    for row in conn.execute(f"select t::text from {name} t order by 1").fetchall()
                ]
                for (name,) in tables
            }
    return content


def read_qdrant(stack: Deployment) -> dict[str, Any]:
    content: dict[str, Any] = {}
    with qdrant(stack) as client:
        names = [c["name"] for c in client.get("/collections").json()["result"]["collections"]]
        for name in sorted(names):
            points = client.post(
                f"/collections/{name}/points/scroll",
                json={"limit": 100000, "with_payload": True, "with_vector": True},
            ).json()["result"]["points"]
            content[name] = {p["id"]: (p["vector"], p["payload"]) for p in points}
        content["aliases"] = sorted(
            (a["alias_name"], a["collection_name"])
            for a in client.get("/collections/aliases").json()["result"]["aliases"]
        )
    return content


def read_redis(stack: Deployment) -> dict[int, dict[bytes, Any]]:
    content: dict[int, dict[bytes, Any]] = {}
    for db in range(16):
        client = rdb(stack, db)
        keys = sorted(client.scan_iter(count=1000))
        if not keys:
            continue
        values: dict[bytes, Any] = {}
        for key in keys:
            kind = client.type(key).decode()
            name, *rest = REDIS_READ[kind]
            value = client.execute_command(name, key, *rest)
            if kind == "set":
                value = sorted(value)
            elif kind == "hash":
                value = sorted(value.items()) if isinstance(value, dict) else value
            values[key] = (kind, value, client.pttl(key) > 0)
        content[db] = values
    return content


def assert_vectors_equal(found: dict[str, Any], sent: dict[str, dict[int, list[float]]]) -> None:
    """Every point back with its payload, and its vector as stored (float32 precision)."""
    for name, points in sent.items():
        assert set(found[name]) == set(points), name
        for point_id, vector in points.items():
            got, payload = found[name][point_id]
            assert payload == {"i": point_id, "tag": f"t{point_id % 7}"}
            assert len(got) == len(vector)
            assert all(
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                for a, b in zip(got, vector, strict=True)
            )


def destroy_data(stack: Deployment) -> None:
    with pg(stack) as conn:
        conn.execute("drop table chunks")
        conn.execute("delete from docs where id % 3 = 0")
        conn.execute("update events set what = 'changed'")
        conn.execute("drop database second with (force)")
        conn.execute("drop role reader")
    with qdrant(stack) as client:
        client.delete("/collections/kb_docs").raise_for_status()
        client.post("/collections/kb_faq/points/delete?wait=true", json={"points": [1, 2, 3]})
    rdb(stack).flushall()
    rdb(stack, 3).set("intruder", "x")


def docker_cli(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def in_volume(image: str, volume: str, script: str) -> str:
    """Run ``sh -c script`` with ``volume`` at /v (the target is this machine, also for SSH)."""
    return docker_cli(
        "run", "--rm", "-v", f"{volume}:/v", "--entrypoint", "sh", image, "-c", script
    )


def volume_files(image: str, volume: str) -> str:
    return in_volume(image, volume, "cd /v && find . -type f | sort | xargs sha256sum")


def rewrite_manifest(backup: Path, change: Any) -> None:
    """Edit a backup's manifest and write a matching manifest.sha256 and signature, with the
    stack's own key: a consistent lie only the key's holder can tell."""
    manifest = json.loads((backup / "manifest.json").read_text())
    change(manifest)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (backup / "manifest.json").write_bytes(data)
    (backup / "manifest.sha256").write_text(manifest_sum_line(data))
    key = fixed_secret("backup_hmac_key")
    (backup / "manifest.hmac").write_text(signature_line(data, key))


def backups_of(stack: Deployment) -> list[Path]:
    root = stack.dir / "backups"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def reset(stack: Deployment) -> None:
    """Empty every store so each test starts from nothing of another test's data."""
    with pg(stack) as conn:
        for (name,) in conn.execute(
            "select tablename from pg_tables where schemaname = 'public'"
        ).fetchall():
            conn.execute(f'drop table "{name}" cascade')
        conn.execute("drop database if exists second with (force)")
        conn.execute("drop role if exists reader")
    with qdrant(stack) as client:
        for collection in client.get("/collections").json()["result"]["collections"]:
            client.delete(f"/collections/{collection['name']}").raise_for_status()
    rdb(stack).flushall()
    shutil.rmtree(stack.dir / "backups", ignore_errors=True)
    stack.edit(lambda d: d["backup"].update({"volumes": []}))


# ---------------------------------------------------------------- the tests
def test_backup_destroy_restore_gives_back_every_row_point_and_key(
    stack: Deployment, testbed: testbed_support.Testbed
) -> None:
    reset(stack)
    sent = seed(stack)
    before_pg, before_q, before_r = read_postgres(stack), read_qdrant(stack), read_redis(stack)
    # An uploaded-files volume that no service mounts, declared in backup.volumes.
    image, uploads = testbed.images["redis"], f"{stack.name}-uploads"
    docker_cli("volume", "create", "--label", f"kbinfra.stack={stack.name}", uploads)
    in_volume(image, uploads, "mkdir -p /v/docs && echo one > /v/a.txt && "
              "head -c 300000 /dev/urandom > /v/docs/b.bin")  # fmt: skip
    before_files = volume_files(image, uploads)
    stack.edit(lambda d: d["backup"].update({"volumes": [uploads]}))

    made = stack.run("backup", "--output", "json")
    assert made.code == 0, made.err
    result = made.json()
    backup = Path(result["path"])
    assert backup.is_dir() and not list(backup.parent.glob("*.partial"))
    manifest = json.loads((backup / "manifest.json").read_text())
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    assert by_path["postgres/kb.dump"]["counts"] == {
        "public.chunks": 4000, "public.docs": 3000, "public.events": 700,
    }  # fmt: skip
    assert by_path["postgres/second.dump"]["counts"] == {"public.t": 1200}
    assert by_path["qdrant/kb_docs.snapshot"]["counts"] == {"points": 1200}
    assert by_path["qdrant/kb_faq.snapshot"]["counts"] == {"points": 300}
    assert by_path["redis/dump.rdb"]["counts"] == {"db0": 426, "db3": 426, "db7": 426}
    assert manifest["services"]["qdrant"]["meta"]["aliases"] == [
        {"alias_name": "docs", "collection_name": "kb_docs"}
    ]
    assert by_path[f"volumes/{uploads}.tar"]["counts"] == {"files": 2, "bytes": 300004}
    # Samples: tables with a primary key, the first points, a few keys per Redis db.
    assert set(by_path["postgres/kb.dump"]["samples"]) == {"public.chunks", "public.docs"}
    assert set(by_path["qdrant/kb_docs.snapshot"]["samples"]) == {"first_points", "aliases"}
    redis_samples = by_path["redis/dump.rdb"]["samples"]
    assert {name.split(":")[0] for name in redis_samples} == {"db0", "db3", "db7"}
    assert len(redis_samples) == 24
    assert "stack/kbinfra.yaml" in by_path and "stack/secrets.yaml" not in by_path
    assert not any(a["secret"] for a in manifest["artifacts"])
    assert (backup / "manifest.hmac").read_text().startswith("hmac-sha256 ")
    roles = json.loads((backup / "postgres" / "roles.json").read_text())
    reader = next(r for r in roles["roles"] if r["name"] == "reader")
    assert reader["login"] and reader["connection_limit"] == 3 and reader["password"] is None
    assert {"role": "pg_read_all_data", "member": "reader", "admin": False} in roles["memberships"]
    assert "postgres/globals.sql" not in by_path

    # A flipped byte in a copy of the backup: refused, naming the file, nothing changed.
    corrupt = backup.parent / "corrupt-copy"
    shutil.copytree(backup, corrupt)
    snapshot = corrupt / "qdrant" / "kb_faq.snapshot"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    rdb(stack).set("marker", "still here")
    refused = stack.run("restore", str(corrupt), "--yes")
    assert refused.code == 2
    assert "qdrant/kb_faq.snapshot: sha256 differs" in refused.err
    assert rdb(stack).get("marker") == b"still here"
    assert read_postgres(stack) == before_pg
    shutil.rmtree(corrupt)
    rdb(stack).delete("marker")

    destroy_data(stack)
    in_volume(image, uploads, "rm /v/a.txt && echo new > /v/c.txt")
    restored = stack.run("restore", str(backup), "--yes", "--output", "json")
    assert restored.code == 0, restored.err
    report = restored.json()
    assert report["ok"] and report["safety_backup"]
    assert {c["path"] for c in report["checks"]} >= {"postgres/kb.dump", "redis/dump.rdb"}
    # The intruder key was in Redis at restore time, not in the backup: replaced, not merged.
    # Only the stack's own database is restored; another one is kept in the backup, said so.
    assert read_postgres(stack, ("kb",)) == {"kb": before_pg["kb"]}
    assert any("postgres/second.dump not restored" in note for note in report["notes"])
    with pg(stack) as conn:
        assert conn.execute(
            "select rolcanlogin, rolconnlimit, pg_has_role('reader', 'pg_read_all_data', "
            "'member') from pg_roles where rolname = 'reader'"
        ).fetchone() == (True, 3, True)
    assert read_redis(stack) == before_r
    after_q = read_qdrant(stack)
    assert after_q["aliases"] == before_q["aliases"] == [("docs", "kb_docs")]
    assert_vectors_equal(after_q, sent)
    # Every backed-up file is back as it was; a file added since is kept, and said so.
    after_files = volume_files(image, uploads).splitlines()
    assert set(before_files.splitlines()) <= set(after_files)
    assert [line.split()[-1] for line in after_files] == ["./a.txt", "./c.txt", "./docs/b.bin"]
    volume_check = next(c for c in report["checks"] if c["path"] == f"volumes/{uploads}.tar")
    assert volume_check["ok"] and volume_check["warnings"]

    # The safety backup holds the destroyed state; the containers were never recreated.
    safety = json.loads((Path(report["safety_backup"]) / "manifest.json").read_text())
    assert safety["reason"] == "safety"
    assert stack.run("plan").code == 0

    # Redis rebuilt its AOF from the restored data: it survives a restart.
    import docker  # noqa: PLC0415

    docker.from_env().containers.get(stack.container("redis")).restart()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if read_redis(stack) == before_r:
                break
        except redis.RedisError:
            pass
        time.sleep(1)
    assert read_redis(stack) == before_r

    # The drill restores into throwaway containers and finds everything.
    drill = stack.run("backup", "verify", str(backup), "--output", "json")
    assert drill.code == 0, drill.err
    assert drill.json()["ok"]
    # Listed by name on the engine's side: another engineer's container removed between the
    # listing and its inspect would fail a listing of every container on the shared engine.
    drills = docker.from_env().containers.list(all=True, filters={"name": f"{stack.name}-drill-"})
    assert not [c for c in drills if c.name.startswith(stack.name)]


def test_the_drill_fails_loudly_when_the_data_differs_from_the_manifest(
    stack: Deployment,
) -> None:
    if stack.kind == "ssh":
        pytest.skip("the drill over SSH is exercised by the round trip; this checks the verdict")
    reset(stack)
    with pg(stack) as conn:
        conn.execute("create table few (id int primary key)")
        conn.execute("insert into few select generate_series(1, 10)")
    made = stack.run("backup", "--include-secrets", "--output", "json")
    assert made.code == 0, made.err
    assert "contains secrets" in made.err
    backup = Path(made.json()["path"])
    assert (backup / "CONTAINS-SECRETS.txt").exists()
    assert (backup / "stack" / "secrets.yaml").stat().st_mode & 0o777 == 0o600
    assert "SCRAM-SHA-256$" in (backup / "postgres" / "roles.json").read_text()
    assert SECRET_MARK not in (backup / "manifest.json").read_text()

    # A manifest that claims one row more (and a matching checksum file): the drill's count
    # of what the dump really restores must disagree.
    def claim_eleven(manifest: dict[str, Any]) -> None:
        for artifact in manifest["artifacts"]:
            if artifact["path"] == "postgres/kb.dump":
                artifact["counts"]["public.few"] = 11

    rewrite_manifest(backup, claim_eleven)
    drill = stack.run("backup", "verify", str(backup))
    assert drill.code == 1, drill.out + drill.err
    assert "postgres/kb.dump: public.few expected 11, found 10" in drill.out
    assert "restore drill: 1 difference(s)" in drill.err

    # Snapshots of another Qdrant minor version: refused before anything changes.
    with qdrant(stack) as client:
        client.put("/collections/c", json={"vectors": {"size": 2, "distance": "Dot"}})
        client.put(
            "/collections/c/points?wait=true", json={"points": [{"id": 1, "vector": [1, 0]}]}
        )
    made = stack.run("backup", "--output", "json")
    assert made.code == 0, made.err
    backup = Path(made.json()["path"])
    rewrite_manifest(backup, lambda m: m["services"]["qdrant"].update({"version": "1.15.2"}))
    with pg(stack) as conn:
        conn.execute("delete from few where id > 5")
    refused = stack.run("restore", str(backup), "--yes")
    assert refused.code == 2
    assert "qdrant: the snapshots are of Qdrant 1.15.2; this server runs 1.16" in refused.err
    with pg(stack) as conn:
        assert conn.execute("select count(*) from few").fetchone() == (5,)

    # Even a backup signed with the stack's own key never has a script run: the globals.sql
    # of an older backup, with a shell escape, is left out and said so; nothing runs.
    made = stack.run("backup", "--output", "json")
    assert made.code == 0, made.err
    backup = Path(made.json()["path"])
    script = b"CREATE ROLE evil SUPERUSER LOGIN;\n\\! touch /tmp/pwned-by-backup\n"
    (backup / "postgres" / "globals.sql").write_bytes(script)

    def add_script(manifest: dict[str, Any]) -> None:
        kept = [a for a in manifest["artifacts"] if a["path"] != "postgres/globals.sql"]
        manifest["artifacts"] = [
            *kept,
            {
                "path": "postgres/globals.sql",
                "service": "postgres",
                "kind": "pg_globals",
                "size": len(script),
                "sha256": hashlib.sha256(script).hexdigest(),
            },
        ]

    rewrite_manifest(backup, add_script)
    restored = stack.run(
        "restore", str(backup), "--yes", "--only", "postgres", "--no-safety-backup",
        "--output", "json",
    )  # fmt: skip
    ran = subprocess.run(
        ["docker", "exec", stack.container("postgres"), "test", "-e", "/tmp/pwned-by-backup"],
        check=False,
    )
    assert ran.returncode == 1, "a shell command from the backup ran in the container"
    assert restored.code == 0, restored.err
    assert any("postgres/globals.sql not run" in n for n in restored.json()["notes"])
    with pg(stack) as conn:
        assert conn.execute("select count(*) from pg_roles where rolname = 'evil'").fetchone() == (
            0,
        )


def test_a_killed_backup_leaves_only_a_partial_that_restore_and_retention_ignore(
    stack: Deployment,
) -> None:
    reset(stack)
    seed(stack)
    proc = stack.popen("backup")
    assert proc.stderr is not None
    for line in proc.stderr:
        if "qdrant: backing up" in line:  # postgres is written, qdrant is next
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    [partial] = backups_of(stack)
    assert partial.name.endswith(".partial")
    assert not (partial / "manifest.json").exists()

    refused = stack.run("restore", str(partial), "--yes")
    assert refused.code == 2 and "unfinished (.partial)" in refused.err
    refused = stack.run("backup", "verify", str(partial))
    assert refused.code == 2 and "unfinished (.partial)" in refused.err

    stack.edit(lambda d: d["backup"].update({"keep_last": 1, "keep_days": None}))
    try:
        for _ in range(2):
            again = stack.run("backup", "--output", "json")
            assert again.code == 0, again.err
        retention = again.json()["retention"]
        assert retention["ignored"] == [partial.name]
        assert len(retention["kept"]) == 1 and len(retention["deleted"]) == 1
        names = [p.name for p in backups_of(stack)]
        assert names == sorted([partial.name, retention["kept"][0]])
    finally:
        stack.edit(lambda d: d["backup"].update({"keep_last": 7, "keep_days": 30}))


class Writers:
    """Keeps writing to all three stores, each write keeping an invariant that an
    inconsistent snapshot would break."""

    def __init__(self, stack: Deployment) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.writes = {"postgres": 0, "redis": 0, "qdrant": 0}
        self.threads = [
            threading.Thread(target=self._guard, args=(w,), daemon=True)
            for w in (self._postgres, self._redis, self._qdrant)
        ]

    def _guard(self, writer: Any) -> None:
        try:
            writer()
        except BaseException as error:
            self.errors.append(error)

    def _postgres(self) -> None:
        rnd = random.Random(1)
        with pg(self.stack) as conn:
            while not self.stop.is_set():
                a, b, amount = rnd.randrange(50), rnd.randrange(50), rnd.randrange(1, 10)
                with conn.transaction():
                    conn.execute(
                        "update accounts set balance = balance - %s where id = %s", (amount, a)
                    )
                    conn.execute(
                        "update accounts set balance = balance + %s where id = %s", (amount, b)
                    )
                    conn.execute(
                        "insert into ledger (src, dst, amount) values (%s, %s, %s)", (a, b, amount)
                    )
                self.writes["postgres"] += 1

    def _redis(self) -> None:
        client = rdb(self.stack, 2)
        while not self.stop.is_set():
            pipe = client.pipeline(transaction=True)
            pipe.incr("counter")
            pipe.rpush("log", "x")
            pipe.execute()
            self.writes["redis"] += 1

    def _qdrant(self) -> None:
        rnd = random.Random(2)
        with qdrant(self.stack) as client:
            point = 0
            while not self.stop.is_set():
                points = []
                for _ in range(20):
                    vector = [rnd.uniform(-1, 1) for _ in range(4)]
                    points.append({"id": point, "vector": vector, "payload": {"sum": sum(vector)}})
                    point += 1
                client.put(
                    "/collections/live/points?wait=true", json={"points": points}
                ).raise_for_status()
                self.writes["qdrant"] += 1

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_a_backup_taken_during_writes_is_consistent_in_every_store(stack: Deployment) -> None:
    reset(stack)
    with pg(stack) as conn:
        conn.execute("create table accounts (id int primary key, balance int)")
        conn.execute("create table ledger (n serial primary key, src int, dst int, amount int)")
        conn.execute("insert into accounts select g, 100 from generate_series(0, 49) g")
    with qdrant(stack) as client:
        client.put(
            "/collections/live", json={"vectors": {"size": 4, "distance": "Dot"}}
        ).raise_for_status()

    with Writers(stack) as writers:
        time.sleep(1.0)
        made = stack.run("backup", "--output", "json")
        time.sleep(0.5)
    assert not writers.errors, writers.errors
    assert made.code == 0, made.err
    assert min(writers.writes.values()) > 0, writers.writes
    backup = Path(made.json()["path"])

    # The drill finds exactly what the manifest counted (Qdrant: within its bracket).
    drill = stack.run("backup", "verify", str(backup))
    assert drill.code == 0, drill.out + drill.err

    restored = stack.run("restore", str(backup), "--yes", "--no-safety-backup")
    assert restored.code == 0, restored.out + restored.err
    with pg(stack) as conn:
        total = conn.execute("select sum(balance) from accounts").fetchone()
        assert total == (5000,)
        mismatched = conn.execute(
            "select count(*) from accounts a where a.balance <> 100 "
            "- coalesce((select sum(amount) from ledger where src = a.id), 0) "
            "+ coalesce((select sum(amount) from ledger where dst = a.id), 0)"
        ).fetchone()
        assert mismatched == (0,)
    counter = rdb(stack, 2).get("counter")
    assert int(counter or 0) == rdb(stack, 2).llen("log") > 0
    for vector, payload in read_qdrant(stack)["live"].values():
        assert math.isclose(sum(vector), payload["sum"], rel_tol=1e-5, abs_tol=1e-5)
