"""Qdrant: thread and segment tuning from the profile, api keys by env, a schema-checked config.

Qdrant reads its two keys (read-write and read-only) at start. When the stack's nginx runs
beside it on one host, nginx is its key gate (:class:`kbinfra.service.KeyGate`), for REST and
gRPC alike: clients send ``qdrant_api_key`` or ``qdrant_read_only_api_key`` to nginx
(``nginx:6333`` and ``nginx:6334`` on the stack network, Qdrant's host ports on 127.0.0.1), in
``api-key`` or as a Bearer token, and nginx sends Qdrant its own key for the same access,
``qdrant_upstream_api_key`` or ``qdrant_upstream_read_only_api_key``, which only nginx, Qdrant
and kbinfra hold (kbinfra's backups and Prometheus reach Qdrant itself with them). Rotating
the clients' keys is then a reload of nginx, never a restart of Qdrant. Otherwise (no nginx,
or a Swarm) Qdrant checks the clients' keys itself.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import Field

from kbinfra.service import (
    ContainerSpec,
    FileMount,
    GrpcGate,
    HealthCheck,
    KeyGate,
    KeyGrant,
    Panel,
    PortBinding,
    Route,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.key_gate import client_address as gated_client_address
from kbinfra.service_kit.key_gate import gated
from kbinfra.spec.profile import DiskKind

KIB_PER_GIB = 1024 * 1024
#: One segment never grows past this (KiB): bigger segments make each HNSW build long.
MAX_SEGMENT_CAP_KB = 4 * KIB_PER_GIB
#: Index-building threads one optimization job should get: Qdrant's guidance is 8-16.
THREADS_PER_OPTIMIZATION_JOB = 8
CONFIG_FILE = "qdrant/config.yaml"
#: The official image runs from /qdrant with RUN_MODE=production, so it merges
#: config/config.yaml, then config/production.yaml (this file), then QDRANT__* env vars.
CONFIG_TARGET = "/qdrant/config/production.yaml"
HTTP_PORT = 6333
METRICS_JOB = "qdrant"
GRPC_PORT = 6334
#: Raft and shard transfers between peers: on the overlay network only, it accepts writes.
P2P_PORT = 6335
#: The keys clients send, and Qdrant's own behind nginx's key gate.
API_KEY = "qdrant_api_key"
READ_ONLY_KEY = "qdrant_read_only_api_key"
UPSTREAM_API_KEY = "qdrant_upstream_api_key"
UPSTREAM_READ_ONLY_KEY = "qdrant_upstream_read_only_api_key"
API_KEY_HEADER = "api-key"
#: nginx's listeners for Qdrant's clients on the stack network: Qdrant's own port numbers.
GATE_PORT = HTTP_PORT
GRPC_GATE_PORT = GRPC_PORT
#: Qdrant's own answer to a key it does not know, which nginx gives a refused key (REST: 401
#: with this text; gRPC: UNAUTHENTICATED with it as the message).
REFUSAL = ("text/plain", "Invalid API key or JWT")
#: What Qdrant answers with no key (src/actix/auth.rs, src/tonic/auth.rs).
OPEN_PATHS = ("/", "/healthz", "/livez", "/readyz")
OPEN_METHODS = ("/qdrant.Qdrant/HealthCheck", "/grpc.health.v1.Health/Check")


def readyz_probe(port: int = HTTP_PORT) -> str:
    """A bash script that succeeds only when Qdrant's /readyz answers 200.

    The official image (debian slim) has bash but neither curl nor wget, so bash's /dev/tcp
    speaks HTTP/1.1; /readyz needs no api key and answers 503 until every shard is loaded.
    """
    request = "GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n"
    return (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && "
        'read -r status <&3 && [[ "$status" == *" 200 "* ]]'
    )


class QdrantSettings(ServiceSettings):
    grpc_port: int | None = Field(
        GRPC_PORT, ge=1, le=65535, description="Host port for gRPC on 127.0.0.1; empty: none"
    )
    collection_dimension: int = Field(
        384, ge=1, le=65536, description="Vector size of the knowledge-base collection"
    )

    def host_ports(self) -> list[int]:
        return [p for p in (self.port, self.grpc_port) if p is not None]


class QdrantTune(NamedTuple):
    """The settings derived from the CPUs, memory and disk the profile gives Qdrant."""

    max_search_threads: int
    optimizer_cpu_budget: int
    default_segment_number: int
    max_segment_size_kb: int
    indexing_threshold_kb: int
    flush_interval_sec: int
    max_optimization_threads: int
    wal_capacity_mb: int
    wal_segments_ahead: int


def qdrant_tuning(*, cpus: float, memory_mb: int, disk: DiskKind) -> QdrantTune:
    """Qdrant's threads, segments and WAL for ``cpus`` cores and ``memory_mb`` of RAM.

    docs/services/qdrant.md explains each formula; the tests work them by hand.
    """
    cores = max(1, math.floor(cpus))
    # A quarter of the cores (at least one) stays free for searches while indexing runs.
    budget = max(1, cores - math.ceil(cores / 4))
    jobs = max(1, math.ceil(budget / THREADS_PER_OPTIMIZATION_JOB))
    # A rebuild holds the old and the new segment: all jobs together within a quarter of RAM.
    segment_kb = min(MAX_SEGMENT_CAP_KB, memory_mb * 1024 // 4 // jobs)
    return QdrantTune(
        max_search_threads=cores,
        optimizer_cpu_budget=budget,
        # Qdrant: a multiple of the search threads, so each thread searches one segment.
        default_segment_number=max(2, cores),
        max_segment_size_kb=segment_kb,
        # Small CPUs index less often: a plain scan of 20 MB of vectors is still fast.
        indexing_threshold_kb=20_000 if cores < 4 else 10_000,
        flush_interval_sec=10 if disk == "hdd" else 5,
        max_optimization_threads=jobs,
        wal_capacity_mb=min(128, max(32, memory_mb // 256)),
        wal_segments_ahead=0 if cores < 4 else 1,
    )


class Qdrant(Service):
    name = "qdrant"
    allocation = "qdrant"
    settings_model = QdrantSettings
    default_image = "qdrant/qdrant:v1.19.0"
    container_port = HTTP_PORT
    default_host_port = HTTP_PORT
    secrets = (API_KEY, READ_ONLY_KEY, UPSTREAM_API_KEY, UPSTREAM_READ_ONLY_KEY)
    stage = "data"
    # Upstream's entrypoint passes its arguments to ./qdrant; Qdrant reads its API keys from
    # QDRANT__SERVICE__* variables or a config file, not from a *_FILE variable.
    image_start = ("./entrypoint.sh",)

    def tuning(self, ctx: ServiceContext) -> QdrantTune:
        return qdrant_tuning(
            cpus=ctx.resources.cpus, memory_mb=ctx.resources.memory_mb, disk=ctx.profile.host.disk
        )

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "tune": self.tuning(ctx),
            "image": ctx.image,
            "http_port": HTTP_PORT,
            "grpc_port": GRPC_PORT,
            "cluster": self.cluster(ctx),
        }

    def cluster(self, ctx: ServiceContext) -> dict[str, int] | None:
        """Distributed mode on a Swarm with ``peers:`` (two or more), else None (off).

        New collections get a replication factor of 2 (each shard on two peers: one node
        may be lost) and a write consistency factor of 1; the app chooses ``shard_number``
        when it creates a collection (docs/swarm.md)."""
        peers = ctx.stack.placement(self.name).peers
        if not peers:
            return None
        return {
            "p2p_port": P2P_PORT,
            "peers": len(peers),
            "replication_factor": min(2, len(peers)),
            "write_consistency_factor": 1,
        }

    def peer_arguments(self, hostnames: Sequence[str], index: int) -> list[str] | None:
        """The first peer starts a new cluster at its own URI; the others join it
        (``--bootstrap``) and announce their own: stable names, since Raft keeps them."""
        own = ["--uri", f"http://{hostnames[index]}:{P2P_PORT}"]
        if index == 0:
            return own
        return ["--bootstrap", f"http://{hostnames[0]}:{P2P_PORT}", *own]

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: QdrantSettings = ctx.settings
        # behind its key gate, nginx publishes the host ports: Qdrant's clients there send
        # the keys nginx accepts
        ports = [] if gated(ctx) else ctx.loopback_port(HTTP_PORT)
        if settings.grpc_port is not None and not gated(ctx):
            ports.append(
                PortBinding(
                    host_ip="127.0.0.1", host_port=settings.grpc_port, container_port=GRPC_PORT
                )
            )
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            # The image's default; set explicitly so a changed default cannot skip our file.
            env={"RUN_MODE": "production"},
            secret_env={
                "QDRANT__SERVICE__API_KEY": own_key(ctx, API_KEY),
                "QDRANT__SERVICE__READ_ONLY_API_KEY": own_key(ctx, READ_ONLY_KEY),
            },
            ports=ports,
            volumes=[
                VolumeMount(volume=ctx.volume("storage"), target="/qdrant/storage"),
                VolumeMount(volume=ctx.volume("snapshots"), target="/qdrant/snapshots"),
            ],
            files=[FileMount(source=CONFIG_FILE, target=CONFIG_TARGET)],
            healthcheck=HealthCheck(
                test=["CMD", "bash", "-c", readyz_probe()],
                interval_s=10,
                timeout_s=5,
                retries=12,
                start_period_s=60,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            stop_timeout_s=60,
            tmpfs=(TmpfsMount("/tmp"),),
            root_user_reason=(
                "the image runs as root (upstream's default); its -unprivileged variant runs as "
                "uid 1000 and would not open volumes an earlier stack left owned by root"
            ),
        )

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        # /metrics needs a key once one is set; the read-only key has the global read access
        # it asks for, and Qdrant accepts it as ``Authorization: Bearer``. Prometheus is
        # kbinfra's own, not a client: it scrapes Qdrant itself, with Qdrant's own key.
        return [
            ScrapeTarget(
                job=METRICS_JOB,
                address=self.address(),
                path="/metrics",
                bearer_secret=own_key(ctx, READ_ONLY_KEY),
            )
        ]

    def dashboard_panels(self, ctx: ServiceContext) -> list[Panel]:
        # Qdrant publishes collections_total and collections_vector_total (no qdrant_ prefix;
        # the guide's qdrant_collections_total and qdrant_points_total do not exist).
        return [
            Panel(
                "Vector database",
                "stat",
                (0, 8, 8, 6),
                [
                    (f'sum(collections_total{{job="{METRICS_JOB}"}})', "Collections"),
                    (f'sum(collections_vector_total{{job="{METRICS_JOB}"}})', "Total vectors"),
                ],
            )
        ]

    def app_env(self, ctx: ServiceContext) -> Mapping[str, str]:
        return {
            "QDRANT_URL": f"http://{client_address(ctx)}",
            "QDRANT_API_KEY": ctx.secrets[API_KEY],
        }

    def routes(self, ctx: ServiceContext) -> list[Route]:
        """Qdrant's key gate, when nginx is it: never on the public site."""
        if not gated(ctx):
            return []
        settings: QdrantSettings = ctx.settings
        gate = KeyGate(
            header=API_KEY_HEADER,
            grants=(
                KeyGrant(ctx.accepted(API_KEY), ctx.secrets[UPSTREAM_API_KEY]),
                KeyGrant(ctx.accepted(READ_ONLY_KEY), ctx.secrets[UPSTREAM_READ_ONLY_KEY]),
            ),
            port=GATE_PORT,
            host_port=settings.port,
            secrets=self.secrets,
            bearer=True,
            streamed=True,
            refusal=REFUSAL,
            open_paths=OPEN_PATHS,
            grpc=GrpcGate(
                port=GRPC_GATE_PORT,
                address=self.address(GRPC_PORT),
                host_port=settings.grpc_port,
                open_methods=OPEN_METHODS,
                refusal=REFUSAL[1],
            ),
        )
        # snapshots of a large collection take minutes to make, download and upload
        return [
            Route(prefix="/", address=self.address(), long_running=True, gate=gate, public=False)
        ]


def own_key(ctx: ServiceContext, secret: str) -> str:
    """The secret Qdrant itself checks for the access ``secret`` gives: its own behind the
    key gate, the clients' otherwise."""
    if not gated(ctx):
        return secret
    return {API_KEY: UPSTREAM_API_KEY, READ_ONLY_KEY: UPSTREAM_READ_ONLY_KEY}[secret]


def client_address(ctx: ServiceContext) -> str:
    """Where Qdrant's clients on the stack network send their requests."""
    return gated_client_address(ctx, SERVICE, GATE_PORT)


SERVICE = Qdrant()
SERVICES = (SERVICE,)
