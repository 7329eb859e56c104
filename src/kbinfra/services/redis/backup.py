"""Redis: a BGSAVE taken while writes are paused for an instant, copied out of the container.

Backup: ``CLIENT PAUSE <ms> WRITE`` holds every client's writes (reads go on) while kbinfra
reads ``INFO keyspace`` and a few sample values and starts ``BGSAVE``, whose fork is the
snapshot; then ``CLIENT UNPAUSE``. The pause lasts as long as the fork (milliseconds), and
the key counts in the manifest are exactly those of the RDB. kbinfra then waits until the
save finished (``rdb_saves`` grew, ``LASTSAVE`` moved, ``rdb_last_bgsave_status:ok``) and
streams the file out with ``get_archive``. If another save replaced the file meanwhile, it
starts over.

Restore (the stack runs with ``appendonly yes``): Redis 7 with AOF on and no AOF directory
starts EMPTY and ignores ``dump.rdb`` (checked on the test bed's 7.0), so placing the RDB is
not enough. kbinfra stops the container, and in a helper container from the same image on
the same volume: moves the old ``appendonlydir`` and RDB aside, places the backup's RDB,
starts ``redis-server --appendonly no`` (which loads it), runs ``CONFIG SET appendonly yes``
(Redis rewrites a new AOF whose base is the loaded data), waits for that rewrite, shuts
down, deletes the old files and starts the stack's container again, which loads the new
AOF. ``CONFIG REWRITE`` is never used: the config file is kbinfra's. On any failure the old
files are put back and the container started as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kbinfra.backup.handler import (
    BackupError,
    BackupHandler,
    BackupOutput,
    Instance,
    Observed,
    ServiceBackup,
    artifact_of,
)
from kbinfra.backup.manifest import (
    Artifact,
    ArtifactKind,
    ServiceRecord,
    compare_counts,
    not_older,
)
from kbinfra.backup.streams import archive_file_to, exec_run, put_stream, tar_of_file
from kbinfra.containers import HELPER_PIDS_LIMIT, locked_down
from kbinfra.progress import Progress
from kbinfra.service import TmpfsMount
from kbinfra.services.redis.service import CONF_FILE, PASSWORD_USERS, PORT

if TYPE_CHECKING:
    import redis

RDB_PATH = "redis/dump.rdb"
ADMIN = "admin"
PAUSE_MS = 10_000  # the longest writes can be held if kbinfra dies mid-way
SAMPLES_PER_DB = 8
SAMPLE_MAX_BYTES = 64 * 1024
SAVE_TIMEOUT_S = 3600.0
ATTEMPTS = 4
HELPER_SOCKET = "/tmp/kbinfra-restore.sock"
HELPER_LOG = "/tmp/kbinfra-restore.log"
OLD = ".kbinfra-old"
#: The command that reads a whole value of each type, and its arguments after the key.
_READERS = {
    "string": ("GET",),
    "list": ("LRANGE", "0", "-1"),
    "set": ("SMEMBERS",),
    "zset": ("ZRANGE", "0", "-1", "WITHSCORES"),
    "hash": ("HGETALL",),
    "stream": ("XRANGE", "-", "+"),
}


# ---------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class Persistence:
    """Where the rendered ``redis.conf`` keeps data, and whether AOF is on."""

    dir: str = "/data"
    dbfilename: str = "dump.rdb"
    appendonly: bool = False
    appenddirname: str = "appendonlydir"
    appendfilename: str = "appendonly.aof"
    databases: int = 16


def persistence_settings(conf: str) -> Persistence:
    values: dict[str, str] = {}
    for raw in conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = shlex.split(line, comments=False, posix=True) if '"' in line else line.split()
        if len(parts) >= 2:
            values[parts[0].lower()] = parts[1]
    defaults = Persistence()
    return Persistence(
        dir=values.get("dir", defaults.dir),
        dbfilename=values.get("dbfilename", defaults.dbfilename),
        appendonly=values.get("appendonly", "no").lower() == "yes",
        appenddirname=values.get("appenddirname", defaults.appenddirname),
        appendfilename=values.get("appendfilename", defaults.appendfilename),
        databases=int(values.get("databases", defaults.databases)),
    )


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output as ``field -> value`` (sections and comments dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def keyspace_counts(info: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Keys per db and keys with a TTL per db, from ``INFO keyspace`` (parsed or raw)."""
    keys: dict[str, int] = {}
    volatile: dict[str, int] = {}
    for name, value in info.items():
        if not name.startswith("db"):
            continue
        fields = (
            dict(p.split("=", 1) for p in value.split(",")) if isinstance(value, str) else value
        )
        keys[name] = int(fields["keys"])
        volatile[name] = int(fields.get("expires", 0))
    return keys, volatile


def sample_name(db: int, key: bytes) -> str:
    """A sample is named by its db and a hash of its key: no key names in the manifest."""
    return f"db{db}:{hashlib.sha256(key).hexdigest()[:16]}"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k.hex() if isinstance(k, bytes) else str(k): _plain(v) for k, v in value.items()}
    return value


def canonical_digest(kind: str, value: Any) -> str:
    """A digest of a value that does not depend on Redis' internal order (sets, hashes)."""
    if kind == "set":
        value = sorted(value)
    elif kind == "hash" and isinstance(value, dict):
        value = sorted(value.items())
    elif kind == "hash":  # a flat [field, value, ...] reply
        value = sorted(zip(value[::2], value[1::2], strict=True))
    text = json.dumps([kind, _plain(value)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- the handler
class RedisBackup(BackupHandler):
    service = "redis"
    restarts_container = True
    required_kinds: ClassVar[tuple[ArtifactKind, ...]] = ("redis_rdb",)

    @contextmanager
    def _clients(self, instance: Instance) -> Iterator[Callable[[int], redis.Redis]]:
        """Clients as the admin user, one connection per db (no SELECT juggling)."""
        import redis as redis_lib  # noqa: PLC0415

        made: dict[int, redis_lib.Redis] = {}
        with instance.reach(PORT) as (host, port):

            def client(db: int = 0) -> redis_lib.Redis:
                if db not in made:
                    made[db] = redis_lib.Redis(
                        host=host,
                        port=port,
                        db=db,
                        username=ADMIN,
                        password=instance.secrets[PASSWORD_USERS[ADMIN]],
                        socket_timeout=120,
                        socket_connect_timeout=20,
                    )
                return made[db]

            try:
                client(0).ping()
            except redis_lib.RedisError as error:
                raise BackupError(
                    f"cannot talk to Redis as {ADMIN}: {error}",
                    where=instance.name,
                    fix="check that the service is healthy (`kbinfra status`)",
                ) from None
            try:
                yield client
            finally:
                for made_client in made.values():
                    made_client.close()

    def version(self, instance: Instance) -> str:
        with self._clients(instance) as client:
            return str(client(0).info("server")["redis_version"])

    def incompatibility(self, backup_version: str, current_version: str) -> str | None:
        if not_older(backup_version, current_version, 2):
            return None
        return (
            f"the backup is of Redis {backup_version}; this server runs {current_version}, "
            "which cannot load an RDB file of a newer version"
        )

    # ------------------------------------------------------------ backup
    def backup(self, instance: Instance, out: BackupOutput) -> ServiceBackup:
        with self._clients(instance) as client:
            main = client(0)
            version = str(main.info("server")["redis_version"])
            directory = str(main.config_get("dir")["dir"])
            dbfilename = str(main.config_get("dbfilename")["dbfilename"])
            appendonly = str(main.config_get("appendonly")["appendonly"])
            for attempt in range(1, ATTEMPTS + 1):
                candidates = _sample_candidates(client)
                keys, volatile, samples, saves = _paused_bgsave(client, candidates)
                out.progress.note(self.service, "BGSAVE finished; copying the RDB file")
                with out.file(RDB_PATH) as handle:
                    archive_file_to(
                        instance.api,
                        instance.container_id,
                        f"{directory.rstrip('/')}/{dbfilename}",
                        handle.write,
                    )
                if int(main.info("persistence").get("rdb_saves", saves)) == saves:
                    break
                # Another save replaced the file while it was copied: it is not the one
                # that was counted. Take it again.
                out.progress.note(self.service, f"another save ran meanwhile (try {attempt})")
            else:
                raise BackupError(
                    f"Redis kept saving while its RDB was copied ({ATTEMPTS} tries)",
                    where=instance.name,
                    fix="retry when fewer save points trigger, or lower the save frequency",
                )
        counts_min = {db: keys[db] - volatile.get(db, 0) for db in keys if volatile.get(db)}
        artifact = artifact_of(
            handle,
            RDB_PATH,
            self.service,
            "redis_rdb",
            counts=keys,
            counts_min=counts_min,
            samples=samples,
            meta={"dbfilename": dbfilename},
        )
        notes = []
        if counts_min:
            notes.append(
                "redis: keys with a TTL may have expired by the time of a restore; "
                "their counts are accepted as a range"
            )
        return ServiceBackup(
            record=instance.record(version, {"dir": directory, "appendonly": appendonly}),
            artifacts=[artifact],
            notes=notes,
        )

    # ------------------------------------------------------------ restore
    def restore(
        self,
        instance: Instance,
        record: ServiceRecord,
        artifacts: list[Artifact],
        backup_dir: Path,
        progress: Progress,
    ) -> list[str]:
        rdb = next(a for a in artifacts if a.kind == "redis_rdb")
        conf = persistence_settings(instance.file_text(CONF_FILE) or "")
        # Read before the stop: on a Swarm the stopped task's container goes away.
        helper = _Helper(instance, conf, instance.engine.inspect(instance.container_id))
        progress.note(self.service, "stopping the container to replace its data")
        with instance.stopped():
            try:
                helper.start()
                helper.restore(backup_dir / rdb.path, rdb, progress)
            finally:
                helper.remove()
        return []

    # ------------------------------------------------------------ observe
    def observe(
        self, instance: Instance, record: ServiceRecord, artifacts: list[Artifact]
    ) -> dict[str, Observed]:
        found: dict[str, Observed] = {}
        with self._clients(instance) as client:
            keys, _ = keyspace_counts(client(0).info("keyspace"))
            for artifact in artifacts:
                found[artifact.path] = Observed(
                    counts=keys, samples=_find_samples(client, set(artifact.samples))
                )
        return found


# ---------------------------------------------------------------- backup steps
Clients = Callable[[int], "redis.Redis"]


def read_command(kind: str, key: bytes) -> tuple[Any, ...]:
    name, *rest = _READERS[kind]
    return (name, key, *rest)


def _command(client: Any, *args: Any) -> Any:
    """``execute_command`` (untyped in redis-py) on a client or pipeline."""
    return client.execute_command(*args)


def _kind(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _sample_candidates(client: Clients) -> dict[int, list[bytes]]:
    """Up to a few small keys without TTL per db, chosen before the pause (it stays short)."""
    keys, _ = keyspace_counts(client(0).info("keyspace"))
    chosen: dict[int, list[bytes]] = {}
    for name in sorted(keys, key=lambda n: int(n[2:])):
        db = int(name[2:])
        _, batch = client(db).scan(0, count=200)
        batch = batch[: SAMPLES_PER_DB * 4]
        pipe = client(db).pipeline(transaction=False)
        for key in batch:
            pipe.type(key)
            pipe.pttl(key)
            pipe.memory_usage(key, samples=5)
        replies = pipe.execute(raise_on_error=False)
        picked = [
            key if isinstance(key, bytes) else str(key).encode()
            for index, key in enumerate(batch)
            if _kind(replies[3 * index]) in _READERS
            and replies[3 * index + 1] == -1
            and isinstance(replies[3 * index + 2], int)
            and replies[3 * index + 2] <= SAMPLE_MAX_BYTES
        ][:SAMPLES_PER_DB]
        if picked:
            chosen[db] = picked
    return chosen


def _read_samples(client: Clients, candidates: Mapping[int, list[bytes]]) -> dict[str, str]:
    samples: dict[str, str] = {}
    for db, keys in candidates.items():
        pipe = client(db).pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
            pipe.pttl(key)
        kinds = pipe.execute(raise_on_error=False)
        pipe = client(db).pipeline(transaction=False)
        readable: list[tuple[bytes, str]] = []
        for index, key in enumerate(keys):
            kind, ttl = _kind(kinds[2 * index]), kinds[2 * index + 1]
            if kind in _READERS and ttl == -1:
                _command(pipe, *read_command(kind, key))
                readable.append((key, kind))
        values = pipe.execute(raise_on_error=False) if readable else []
        for (key, kind), value in zip(readable, values, strict=True):
            if not isinstance(value, Exception) and value is not None:
                samples[sample_name(db, key)] = canonical_digest(kind, value)
    return samples


def _wait_no_child(main: redis.Redis, deadline: float) -> dict[str, Any]:
    while True:
        info = main.info("persistence")
        if not int(info["rdb_bgsave_in_progress"]) and not int(info["aof_rewrite_in_progress"]):
            return dict(info)
        if time.monotonic() > deadline:
            raise BackupError("Redis stayed busy with another save or AOF rewrite")
        time.sleep(0.2)


def _saved(info: Mapping[str, Any], saves_before: int, lastsave: int, before: int) -> bool:
    """Our save finished: ``rdb_saves`` grew (Redis >= 7) — LASTSAVE alone has a resolution
    of one second — and LASTSAVE did not go back."""
    if int(info["rdb_bgsave_in_progress"]):
        return False
    if "rdb_saves" in info:
        return int(info["rdb_saves"]) > saves_before and lastsave >= before
    return lastsave > before


def _paused_bgsave(
    client: Clients, candidates: Mapping[int, list[bytes]]
) -> tuple[dict[str, int], dict[str, int], dict[str, str], int]:
    """Counts, samples and a BGSAVE of one instant; returns them with ``rdb_saves`` after."""
    import redis as redis_lib  # noqa: PLC0415

    main = client(0)
    deadline = time.monotonic() + SAVE_TIMEOUT_S
    refused = ""
    for _ in range(ATTEMPTS):
        before = _wait_no_child(main, deadline)
        saves_before = int(before.get("rdb_saves", 0))
        lastsave_before = int(main.lastsave().timestamp())
        if "rdb_saves" not in before:
            time.sleep(1.0)  # LASTSAVE counts seconds: make sure it can move
        _command(main, "CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        try:
            keys, volatile = keyspace_counts(main.info("keyspace"))
            samples = _read_samples(client, candidates)
            try:
                main.bgsave()
            except redis_lib.ResponseError as error:
                refused = str(error)  # a save or rewrite started just now: wait, try again
                continue
        finally:
            _command(main, "CLIENT", "UNPAUSE")
        break
    else:
        raise BackupError(f"Redis refused BGSAVE {ATTEMPTS} times: {refused}")
    while True:
        info = main.info("persistence")
        if _saved(info, saves_before, int(main.lastsave().timestamp()), lastsave_before):
            if info["rdb_last_bgsave_status"] != "ok":
                raise BackupError(
                    "Redis BGSAVE failed (rdb_last_bgsave_status is not ok)",
                    fix="see the Redis log (`docker logs`): often a full disk",
                )
            return keys, volatile, samples, int(info.get("rdb_saves", 0))
        if time.monotonic() > deadline:
            raise BackupError(f"Redis BGSAVE did not finish in {SAVE_TIMEOUT_S:.0f}s")
        time.sleep(0.2)


def _find_samples(client: Clients, wanted: set[str]) -> dict[str, str]:
    """Digests of the sampled keys, found by scanning for their hashed names."""
    found: dict[str, str] = {}
    by_db: dict[int, set[str]] = {}
    for name in wanted:
        by_db.setdefault(int(name.split(":", 1)[0][2:]), set()).add(name)
    for db, names in sorted(by_db.items()):
        db_client = client(db)
        for key in db_client.scan_iter(count=1000):
            name = sample_name(db, key)
            if name not in names:
                continue
            kind = _kind(db_client.type(key))
            if kind in _READERS:
                found[name] = canonical_digest(kind, _command(db_client, *read_command(kind, key)))
            if len(found) == len(wanted):
                return found
    return found


# ---------------------------------------------------------------- restore helper
class _Helper:
    """A container from the service's image on its volumes, running only a shell loop;
    redis-server is started in it by exec, on a unix socket, without any network."""

    def __init__(self, instance: Instance, conf: Persistence, info: Mapping[str, Any]) -> None:
        self.instance = instance
        self.conf = conf
        self.info = info  # the service container's inspect: its image and volumes
        self.api = instance.api
        self.id: str | None = None
        self.moved = False
        self.owner = "0"  # uid:gid of the data folder, once known

    def _sh(self, script: str, *, user: str = "0") -> str:
        assert self.id is not None
        result = exec_run(self.api, self.id, ["sh", "-c", script], user=user)
        if result.exit_code != 0:
            raise BackupError(
                f"restore step failed in the helper container: {result.last_error_line()}",
                where=self.instance.name,
            )
        return result.text

    def _cli(self, *args: str, owner: str) -> tuple[int, str]:
        assert self.id is not None
        result = exec_run(
            self.api, self.id, ["redis-cli", "-s", HELPER_SOCKET, "--no-raw", *args], user=owner
        )
        return result.exit_code, result.text

    def start(self) -> None:
        from docker.types import Mount  # noqa: PLC0415

        info = self.info
        mounts = [
            Mount(target=m["Destination"], source=m["Name"], type="volume")
            for m in info.get("Mounts") or ()
            if m.get("Type") == "volume"
        ]
        # Locked down like the service: no capability (it starts as root, but every step on
        # the volume runs as the volume's owner), a read-only root, the socket and log in a
        # tmpfs /tmp, no network.
        host_config = self.api.create_host_config(
            mounts=mounts,
            network_mode="none",
            **locked_down(pids_limit=HELPER_PIDS_LIMIT, tmpfs=(TmpfsMount("/tmp"),)),
        )
        name = f"{self.instance.name}-kbinfra-restore"
        import docker.errors  # noqa: PLC0415

        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(name, force=True)  # a leftover of an interrupted restore
        created = self.api.create_container(
            info["Image"],
            entrypoint=["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1; done"],
            host_config=host_config,
            labels={"kbinfra.stack": self.instance.engine.stack, "kbinfra.helper": "restore"},
            network_disabled=True,
            name=name,
        )
        self.id = created["Id"]
        self.api.start(self.id)

    def restore(self, rdb_file: Path, rdb: Artifact, progress: Progress) -> None:
        conf = self.conf
        data = conf.dir.rstrip("/") or "/"
        q = shlex.quote
        owner = self._sh(f"stat -c %u:%g {q(data)}").strip()
        uid, gid = (int(part) for part in owner.split(":"))
        self.owner = owner
        names = (conf.appenddirname, conf.dbfilename)
        self._sh(
            f"cd {q(data)} && "
            + " && ".join(
                f"rm -rf {q(n + OLD)} && {{ [ ! -e {q(n)} ] || mv {q(n)} {q(n + OLD)}; }}"
                for n in names
            ),
            user=owner,
        )
        self.moved = True
        try:
            with progress.transfer(f"{rdb.path} → {self.instance.name}", rdb.size) as advance:
                put_stream(
                    self.api,
                    self.id or "",
                    data,
                    tar_of_file(conf.dbfilename, rdb_file, uid=uid, gid=gid, on_bytes=advance),
                )
            self._load_and_rewrite(owner, rdb, progress)
        except BaseException:
            self._put_back()
            raise
        self._sh(
            f"cd {q(data)} && rm -rf {q(conf.appenddirname + OLD)} {q(conf.dbfilename + OLD)}",
            user=owner,
        )
        self.moved = False

    def _load_and_rewrite(self, owner: str, rdb: Artifact, progress: Progress) -> None:
        conf = self.conf
        assert self.id is not None
        progress.note("redis", "loading the RDB in a helper redis-server")
        server = exec_run(
            self.api,
            self.id,
            [
                "redis-server",
                "--port", "0",
                "--unixsocket", HELPER_SOCKET,
                "--unixsocketperm", "700",
                "--dir", conf.dir,
                "--dbfilename", conf.dbfilename,
                "--appendonly", "no",
                "--appenddirname", conf.appenddirname,
                "--appendfilename", conf.appendfilename,
                "--aof-use-rdb-preamble", "yes",
                "--save", "",
                "--databases", str(conf.databases),
                "--daemonize", "yes",
                "--logfile", HELPER_LOG,
            ],
            user=owner,
        )  # fmt: skip
        if server.exit_code != 0:
            raise BackupError(f"the helper redis-server did not start: {server.last_error_line()}")
        self._wait(owner, lambda info: info.get("loading") == "0", "load the RDB", "persistence")
        keys, _ = keyspace_counts(self._info(owner, "keyspace"))
        wrong = [d for d in compare_counts(rdb, keys) if d.kind != "extra"]
        if wrong:
            self._log_tail_error(
                "the RDB did not load what the manifest lists: "
                + "; ".join(d.describe() for d in wrong)
            )
        if conf.appendonly:
            progress.note("redis", "rewriting the AOF from the loaded data")
            code, text = self._cli("CONFIG", "SET", "appendonly", "yes", owner=owner)
            if code != 0 or "OK" not in text:
                raise BackupError(f"CONFIG SET appendonly yes failed: {text.strip()}")
            self._wait(
                owner,
                lambda info: (
                    int(info.get("aof_rewrites", "0")) >= 1
                    and info.get("aof_rewrite_in_progress") == "0"
                    and info.get("aof_rewrite_scheduled") == "0"
                    and info.get("aof_last_bgrewrite_status") == "ok"
                ),
                "rewrite the AOF",
                "persistence",
            )
        self._cli("SHUTDOWN", "NOSAVE", owner=owner)
        deadline = time.monotonic() + 120
        while self._cli("PING", owner=owner)[0] == 0:
            if time.monotonic() > deadline:
                raise BackupError("the helper redis-server did not shut down")
            time.sleep(0.2)

    def _info(self, owner: str, section: str) -> dict[str, str]:
        code, text = self._cli("INFO", section, owner=owner)
        if code != 0:
            self._log_tail_error("the helper redis-server stopped answering")
        return parse_info(text)

    def _wait(self, owner: str, done: Any, what: str, section: str) -> None:
        deadline = time.monotonic() + SAVE_TIMEOUT_S
        while True:
            code, text = self._cli("INFO", section, owner=owner)
            if code == 0 and "LOADING" not in text and done(parse_info(text)):
                return
            if code != 0 and "LOADING" not in text:
                alive = self._cli("PING", owner=owner)[0] == 0
                if not alive:
                    self._log_tail_error(f"the helper redis-server died trying to {what}")
            if time.monotonic() > deadline:
                raise BackupError(f"the helper redis-server did not {what} in time")
            time.sleep(0.2)

    def _log_tail_error(self, message: str) -> None:
        tail = ""
        if self.id is not None:
            log = exec_run(self.api, self.id, ["sh", "-c", f"tail -n 3 {HELPER_LOG}"]).text
            lines = [line for line in log.splitlines() if line.strip()]
            tail = f" (log: {lines[-1].strip()})" if lines else ""
        raise BackupError(message + tail, where=self.instance.name)

    def _put_back(self) -> None:
        if not self.moved or self.id is None:
            return
        q = shlex.quote
        conf = self.conf
        exec_run(
            self.api,
            self.id,
            ["redis-cli", "-s", HELPER_SOCKET, "SHUTDOWN", "NOSAVE"],
            user=self.owner,
        )
        names = (conf.appenddirname, conf.dbfilename)
        script = f"cd {q(conf.dir)} && " + " && ".join(
            f"rm -rf {q(n)} && {{ [ ! -e {q(n + OLD)} ] || mv {q(n + OLD)} {q(n)}; }}"
            for n in names
        )
        exec_run(self.api, self.id, ["sh", "-c", script], user=self.owner)
        self.moved = False

    def remove(self) -> None:
        if self.id is not None:
            self.api.remove_container(self.id, force=True)
            self.id = None


HANDLER = RedisBackup()
