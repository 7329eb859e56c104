"""Redis: cache and Celery broker with noeviction, ACL users instead of rename-command."""

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self
from urllib.parse import quote

from pydantic import Field, model_validator

from kbinfra.errors import SpecError
from kbinfra.registry import enabled_services
from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    Reload,
    RenderedFile,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.replication import derived_password
from kbinfra.services.redis.exporter import SERVICE as EXPORTER
from kbinfra.spec.app import BROKER_DATABASE, REDIS_DATABASES, RESULTS_DATABASE

if TYPE_CHECKING:
    pass

MaxmemoryPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]

PORT = 6379
MIB = 1024 * 1024
#: maxmemory as a share of the container limit: the rest absorbs fork copy-on-write during
#: BGSAVE/AOF rewrites, allocator fragmentation and client buffers (docs/services/redis.md).
MAXMEMORY_PERCENT = 70
TCP_BACKLOG = 511
CONF_FILE = "redis/redis.conf"
ACL_FILE = "redis/users.acl"
CONF_PATH = "/usr/local/etc/redis/redis.conf"
#: In a folder of its own: the compose export fills that folder with files owned by redis.
ACL_PATH = "/usr/local/etc/redis/acl/users.acl"
#: The official image's ``redis`` user. The server drops root before it reads the 0600 ACL
#: file, so the file is placed into the container owned by that user.
REDIS_UID = 999
HEALTHCHECK_USER = "healthcheck"
#: The ACL user apply's reload logs in as to re-read the ACL file (``ACL LOAD``), and may run
#: nothing else: like the healthcheck user it needs no password, so no secret is in the
#: command. Whoever reaches Redis can make it re-read the file kbinfra delivered, no more.
ACL_RELOAD_USER = "kbinfra-acl-reload"
#: The users that log in with no password, and the one command each may run.
PASSWORDLESS_USERS = {HEALTHCHECK_USER: "ping", ACL_RELOAD_USER: "acl|load"}
#: The ACL user the app tier logs in as: no dangerous command (FLUSHALL, CONFIG, KEYS …).
APP_USER = "app"
#: A replica (Swarm, ``swarm.services.redis.replica``) logs in as this ACL user, which may
#: run what replication needs (PSYNC, REPLCONF, PING) and nothing else; its configuration
#: holds that user's password (``masterauth``), so it is a 0600 file.
REPLICATION_USER = "kbinfra-replicator"
REPLICATION_COMMANDS = "+psync +replconf +ping"
REPLICA_CONF_FILE = "redis/replica/redis.conf"
REPLICA_CONF_PATH = "/usr/local/etc/redis/replica/redis.conf"
#: Stable names on the stack network: the primary the replica follows, and its own, which
#: it announces (a task IP would change on every restart).
PRIMARY_HOST = "redis"
REPLICA_HOST = "redis-replica"
ANONYMOUS = "(no login)"
#: The ACL users with a password, and the secret that holds it.
PASSWORD_USERS = {
    "admin": "redis_admin_password",
    "app": "redis_app_password",
    "exporter": "redis_exporter_password",
}
#: What redis_exporter runs in a default scrape (CLIENT SETNAME, CONFIG GET *, INFO ALL,
#: SLOWLOG, LATENCY) plus the length-only commands of --check-keys for queue depths; never
#: a command that returns a value, never SCAN (key names can be session ids).
EXPORTER_COMMANDS = (
    "+client|setname +ping +info +config|get +cluster|info +slowlog|get +slowlog|len "
    "+latency|latest +latency|histogram +select +type +llen +scard +zcard +hlen +xlen "
    "+strlen +pfcount +memory|usage"
)
#: Commands kombu's Redis transport and Celery's result backend send (kombu/transport/redis.py);
#: the app user must be allowed every one. Checked against the real server by ``--check``.
CELERY_COMMANDS = (
    ("SELECT", "3"),
    ("CLIENT", "SETNAME", "worker"),
    ("LPUSH", "celery", "m"),
    ("RPUSH", "celery", "m"),
    ("BRPOP", "celery", "1"),
    ("RPOP", "celery"),
    ("LLEN", "celery"),
    ("SADD", "_kombu.binding.celery", "b"),
    ("SMEMBERS", "_kombu.binding.celery"),
    ("SREM", "_kombu.binding.celery", "b"),
    ("ZADD", "unacked_index", "1", "t"),
    ("ZREVRANGEBYSCORE", "unacked_index", "1", "0"),
    ("ZREM", "unacked_index", "t"),
    ("HSET", "unacked", "t", "m"),
    ("HGET", "unacked", "t"),
    ("HDEL", "unacked", "t"),
    ("SET", "unacked_mutex", "1", "NX", "PX", "300000"),
    ("GET", "celery-task-meta-1"),
    ("PEXPIRE", "celery-task-meta-1", "1000"),
    ("DEL", "unacked_mutex"),
    ("WATCH", "unacked"),
    ("MULTI",),
    ("EXEC",),
    ("EVALSHA", "0" * 40, "1", "unacked_mutex"),
    ("SCRIPT", "LOAD", "return 1"),
    ("PUBLISH", "celeryev", "m"),
    ("SUBSCRIBE", "celeryev"),
    ("PSUBSCRIBE", "celery-task-meta-*"),
)
#: What the app user must never run (the guide's rename-command list, and KEYS).
APP_FORBIDDEN = (
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN",),
    ("KEYS", "*"),
)


class RedisSettings(ServiceSettings):
    maxmemory_policy: MaxmemoryPolicy = Field(
        "noeviction",
        description="What Redis does when maxmemory is reached; noeviction keeps Celery's queues",
    )
    allow_eviction_of_queues: bool = Field(
        False, description="Allow an evicting maxmemory_policy (only if no queues live here)"
    )

    @model_validator(mode="after")
    def _keep_the_queues(self) -> Self:
        if self.maxmemory_policy != "noeviction" and not self.allow_eviction_of_queues:
            raise ValueError(
                f"maxmemory_policy {self.maxmemory_policy} lets Redis delete keys when memory "
                "is full, and this Redis is the Celery broker: queued jobs and "
                "_kombu.binding.* keys would vanish. Keep noeviction (writes then fail "
                "loudly), or set allow_eviction_of_queues: true if no queues live here"
            )
        return self


class RedisTune(NamedTuple):
    """The settings derived from the memory and CPUs the profile gives Redis."""

    maxmemory_mb: int
    io_threads: int
    tcp_backlog: int


def redis_tuning(*, cpus: float, memory_mb: int) -> RedisTune:
    """maxmemory, I/O threads and backlog for a container of ``memory_mb`` and ``cpus``."""
    cores = math.floor(cpus)
    # redis.conf: I/O threads only pay off from 4 cores; use about three quarters of them
    # (4 cores: 3, 8 cores: 6) and never more than 8.
    io_threads = min(8, cores * 3 // 4) if cores >= 4 else 1
    return RedisTune(
        maxmemory_mb=memory_mb * MAXMEMORY_PERCENT // 100,
        io_threads=io_threads,
        tcp_backlog=TCP_BACKLOG,
    )


def acl_password_hash(password: str) -> str:
    """The ACL file's non-reversible form of a password: ``#`` + sha256 hex."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


class Redis(Service):
    name = "redis"
    allocation = "redis"
    settings_model = RedisSettings
    default_image = "redis:8.2.10"
    container_port = PORT
    default_host_port = PORT
    secrets = tuple(PASSWORD_USERS.values())
    stage = "data"

    def tuning(self, ctx: ServiceContext) -> RedisTune:
        return redis_tuning(cpus=ctx.resources.cpus, memory_mb=ctx.resources.memory_mb)

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "tune": self.tuning(ctx),
            "settings": ctx.settings,
            "image": ctx.image,
            "port": PORT,
            "acl_path": ACL_PATH,
            # During a rotation a user has two passwords (the ACL file's several ``#hash``
            # rules): the old one and the new one, until every client holds the new one.
            "password_hashes": {
                user: " ".join(acl_password_hash(value) for value in ctx.accepted(secret))
                for user, secret in PASSWORD_USERS.items()
            },
            "acl_reload_user": ACL_RELOAD_USER,
            "exporter_commands": EXPORTER_COMMANDS,
            "healthcheck_user": HEALTHCHECK_USER,
            "replication": (
                {
                    "user": REPLICATION_USER,
                    "hash": acl_password_hash(self.replication_password(ctx)),
                    "commands": REPLICATION_COMMANDS,
                }
                if self.has_replica(ctx)
                else None
            ),
        }

    def has_replica(self, ctx: ServiceContext) -> bool:
        return ctx.stack.placement(self.name).replica is not None

    def replication_password(self, ctx: ServiceContext) -> str:
        return derived_password(ctx.secrets["redis_admin_password"], "kbinfra redis replication")

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """With a replica: its configuration, the primary's with what makes it a replica."""
        if not self.has_replica(ctx):
            return []
        text = (
            f"# Replica of Redis in stack {ctx.stack.name!r}: the primary's configuration,\n"
            "# then what makes it follow the primary (read-only). No automatic failover:\n"
            "# docs/swarm.md.\n"
            f"include {CONF_PATH}\n"
            f"replicaof {PRIMARY_HOST} {PORT}\n"
            f"masteruser {REPLICATION_USER}\n"
            f"masterauth {self.replication_password(ctx)}\n"
            f"replica-announce-ip {REPLICA_HOST}\n"
            "replica-read-only yes\n"
            "replica-serve-stale-data yes\n"
        )
        return [RenderedFile(REPLICA_CONF_FILE, text, mode=0o600, secret=True)]

    def replica_container(self, ctx: ServiceContext) -> ContainerSpec | None:
        """The primary's container reading the replica's configuration, on a volume of its
        own."""
        if not self.has_replica(ctx):
            return None
        primary = self.container(ctx)
        return primary._replace(
            service=f"{self.name}-replica",
            command=["redis-server", REPLICA_CONF_PATH],
            ports=[],
            volumes=[VolumeMount(volume=ctx.volume("replica"), target="/data")],
            files=[
                *primary.files,
                FileMount(
                    source=REPLICA_CONF_FILE,
                    target=REPLICA_CONF_PATH,
                    uid=REDIS_UID,
                    gid=REDIS_UID,
                ),
            ],
        )

    def secret_templates(self) -> frozenset[str]:
        return frozenset({"users.acl"})

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            command=["redis-server", CONF_PATH],
            ports=ctx.loopback_port(PORT),
            volumes=[VolumeMount(volume=ctx.volume(), target="/data")],
            files=[
                FileMount(source=CONF_FILE, target=CONF_PATH),
                FileMount(source=ACL_FILE, target=ACL_PATH, uid=REDIS_UID, gid=REDIS_UID),
            ],
            # The healthcheck user may run PING and nothing else, so it needs no password:
            # no secret in the container's env or in `docker inspect`. redis-cli exits 0 on
            # error replies, hence the grep.
            healthcheck=HealthCheck(
                test=[
                    "CMD-SHELL",
                    f"redis-cli --no-auth-warning --user {HEALTHCHECK_USER} --pass '' ping"
                    " | grep -qx PONG",
                ],
                interval_s=5,
                retries=12,
                start_period_s=30,
            ),
            # A change of the ACL file alone (a password added or revoked by `kbinfra secrets
            # rotate`) is delivered into the running Redis and loaded, all or nothing: no
            # restart, no client of an unchanged user disconnected.
            reload=Reload(
                files=(ACL_FILE,),
                test=("test", "-s", ACL_PATH),
                command=(
                    "sh",
                    "-c",
                    f"redis-cli --no-auth-warning --user {ACL_RELOAD_USER} --pass '' acl load"
                    " | grep -qx OK",
                ),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            # Redis writes its final RDB snapshot on SIGTERM.
            stop_timeout_s=60,
            tmpfs=(TmpfsMount("/tmp"),),
            # It starts as redis: the entrypoint chowns /data and drops to redis (gosu) only
            # when started as root. A kept /data that redis does not own is handed to it first
            # by a one-shot container (``data_owner``), so Redis needs no capability at all.
            user=f"{REDIS_UID}:{REDIS_UID}",
            data_owner=f"{REDIS_UID}:{REDIS_UID}",
        )

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        """One URL per purpose of the guide's database map, as the ``app`` ACL user (never
        the admin), and Celery's broker and results. The broker's queues need this
        instance under ``noeviction``: the policy is per instance, not per database."""
        settings: RedisSettings = ctx.settings
        consumers = [s.name for s, own in enabled_services(ctx) if s.broker_queues(own)]
        if consumers and settings.maxmemory_policy != "noeviction":
            raise SpecError(
                f"services.redis.maxmemory_policy is {settings.maxmemory_policy}, and this "
                f"Redis holds the Celery broker of {consumers[0]}: evicted queue keys lose jobs",
                where="kbinfra.yaml: services.redis.maxmemory_policy",
                fix="set it to noeviction (the policy is per instance, not per database)",
            )
        password = quote(ctx.secrets[PASSWORD_USERS[APP_USER]], safe="")
        base = f"redis://{APP_USER}:{password}@{self.address()}"
        env = {f"REDIS_{purpose}_URL": f"{base}/{db}" for purpose, db in REDIS_DATABASES}
        env["CELERY_BROKER_URL"] = f"{base}/{BROKER_DATABASE}"
        env["CELERY_RESULT_BACKEND"] = f"{base}/{RESULTS_DATABASE}"
        return env


SERVICE = Redis()
SERVICES = (SERVICE, EXPORTER)
