"""redis-exporter: Redis metrics for Prometheus' ``redis`` job, and the Celery queue lengths.

It logs in as the ACL user ``exporter`` that the redis service defines with the secret
``redis_exporter_password``. The guide's ``DocumentProcessingBacklog`` alert read
``celery_tasks_total{state="PENDING"}``, which no exporter in this stack produces (and Celery
never reports PENDING as an event): with a Redis broker a queue is a Redis list named after the
queue, so its length is ``redis_key_size{key="<queue>"}``, exported by ``check-single-keys``.
"""

import json
from typing import Annotated, cast

from pydantic import Field

from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    Panel,
    RenderedFile,
    ServiceContext,
    ServiceSettings,
    WorkQueue,
)
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import Exporter, address_of
from kbinfra.spec.values import SWARM_TARGET

EXPORTER_USER = "exporter"
EXPORTER_SECRET = "redis_exporter_password"
REDIS_PORT = 6379
#: The image's own user (upstream's Dockerfile: USER 59000:59000), owner of its password file.
EXPORTER_UID = 59000
PASSWORD_FILE = "redis-exporter/password.json"
PASSWORD_PATH = "/run/kbinfra/redis-exporter/password.json"
# Letters, digits, _ : - only: the names go into PromQL regexes and the exporter's key list.
QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:-]{1,100}$")]


def redis_address() -> str:
    return f"redis://{address_of('redis', REDIS_PORT)}"


class RedisExporterSettings(ServiceSettings):
    celery_queues: list[QueueName] = Field(
        default=["document_processing"],
        description="Celery queues (Redis lists) whose length is exported and alerted on",
    )
    celery_db: int = Field(0, ge=0, le=15, description="Redis database of the Celery broker")


class RedisExporter(Exporter):
    name = "redis-exporter"
    share = 0.075
    settings_model = RedisExporterSettings
    # The -alpine variant has busybox wget for the health check; the plain tag is FROM scratch.
    default_image = "oliver006/redis_exporter:v1.91.1-alpine"
    container_port = 9121
    secrets = (EXPORTER_SECRET,)

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """On a Swarm, where no secret is put in a service's environment: the password as
        redis_exporter's ``--redis.password-file`` reads it, a JSON map of the scraped
        address to its password (it refuses a file holding the bare password), 0600."""
        if ctx.stack.target != SWARM_TARGET:
            return []
        passwords = {redis_address(): ctx.secrets[EXPORTER_SECRET]}
        return [RenderedFile(PASSWORD_FILE, json.dumps(passwords) + "\n", mode=0o600, secret=True)]

    job = "redis"
    requires = ("redis",)

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        database, queues = broker_watch(ctx)
        env = {
            "REDIS_ADDR": redis_address(),
            "REDIS_USER": EXPORTER_USER,
        }
        if queues:
            env["REDIS_EXPORTER_CHECK_SINGLE_KEYS"] = ",".join(
                f"db{database}={queue}" for queue in queues
            )
        secret_env = {"REDIS_PASSWORD": EXPORTER_SECRET}
        files: list[FileMount] = []
        if ctx.stack.target == SWARM_TARGET:
            secret_env = {}
            env["REDIS_PASSWORD_FILE"] = PASSWORD_PATH
            files = [FileMount(PASSWORD_FILE, PASSWORD_PATH, uid=EXPORTER_UID, gid=EXPORTER_UID)]
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            env=env,
            secret_env=secret_env,
            files=files,
            ports=ctx.loopback_port(self.container_port),
            healthcheck=HealthCheck(
                test=wget_http_probe(self.container_port, "/health"),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            depends_on=["redis"],
        )

    def work_queues(self, ctx: ServiceContext) -> list[WorkQueue]:
        return [
            WorkQueue(queue, f'max(redis_key_size{{job="{self.job}", key="{queue}"}})')
            for queue in watched_queues(ctx)
        ]

    def dashboard_panels(self, ctx: ServiceContext) -> list[Panel]:
        # The guide's celery_tasks_total{state="PENDING"} is exported by nothing here.
        queues = watched_queues(ctx)
        if queues:
            keys = "|".join(queues)
            query = f'sum by (key) (redis_key_size{{job="{self.job}", key=~"{keys}"}})'
        else:
            query = "sum by (key) (redis_key_size)"
        return [Panel("Celery queue length", "timeseries", (12, 14, 12, 8), [(query, "{{key}}")])]


def watched_queues(ctx: ServiceContext) -> list[str]:
    """The Celery queues whose length Prometheus will have, for alerts and the dashboard.

    Empty unless both redis-exporter and redis are enabled: without them there is no
    ``redis_key_size`` to alert on.
    """
    if SERVICE.name not in ctx.enabled or any(n not in ctx.enabled for n in SERVICE.requires):
        return []
    return broker_watch(ctx)[1]


def broker_watch(ctx: ServiceContext) -> tuple[int, list[str]]:
    """The broker's database and the queues to export: what the enabled services consume
    (``Service.broker_queues``: the app tier's workers), else ``celery_db`` and
    ``celery_queues`` as set by hand for an app kbinfra does not deploy."""
    from kbinfra.registry import enabled_services  # noqa: PLC0415 (loaded while it loads services)

    offered = [q for s, own in enabled_services(ctx) if (q := s.broker_queues(own)) is not None]
    if offered:
        queues = list(dict.fromkeys(name for broker in offered for name in broker.queues))
        return offered[0].database, queues
    settings = cast(RedisExporterSettings, ctx.stack.services.get(SERVICE.name))
    return settings.celery_db, list(settings.celery_queues)


SERVICE = RedisExporter()
