"""postgres-exporter: PostgreSQL metrics for Prometheus' ``postgres`` job.

It logs in as a member of ``kbinfra_monitor``, the least-privilege role (``pg_monitor``): the
login role of ``postgres_monitor_password`` (``kbinfra_monitor_a`` or ``_b``, one of the two
the postgres service alternates: :mod:`kbinfra.services.postgres.roles`); on a Swarm, as
``kbinfra_monitor`` itself, made at initdb. The password is passed by environment, never
written to a file.
"""

from typing import TYPE_CHECKING, cast

from kbinfra.registry import get_service
from kbinfra.service import ContainerSpec, HealthCheck, ServiceContext
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import Exporter
from kbinfra.services.postgres.roles import login_role
from kbinfra.spec.values import SWARM_TARGET

if TYPE_CHECKING:
    from kbinfra.services.postgres.service import PostgresSettings

MONITOR_ROLE = "kbinfra_monitor"
MONITOR_SECRET = "postgres_monitor_password"


class PostgresExporter(Exporter):
    name = "postgres-exporter"
    share = 0.075
    default_image = "prometheuscommunity/postgres-exporter:v0.20.1"
    container_port = 9187
    secrets = (MONITOR_SECRET,)

    def secret_file_env(self, env_var: str) -> str | None:
        """postgres_exporter reads ``DATA_SOURCE_PASS_FILE``."""
        return f"{env_var}_FILE"

    job = "postgres"
    requires = ("postgres",)

    def data_source_uri(self, ctx: ServiceContext) -> str:
        """``postgres:5432/kb?sslmode=disable``: on the stack network, not over TLS."""
        postgres = get_service("postgres")
        settings = cast("PostgresSettings", ctx.stack.services.get(postgres.name))
        return f"{postgres.address()}/{settings.database}?sslmode=disable"

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            env={
                "DATA_SOURCE_URI": self.data_source_uri(ctx),
                "DATA_SOURCE_USER": monitor_user(ctx),
            },
            secret_env={"DATA_SOURCE_PASS": MONITOR_SECRET},
            ports=ctx.loopback_port(self.container_port),
            healthcheck=HealthCheck(
                # The landing page, not /metrics: a health check must not query PostgreSQL.
                test=wget_http_probe(self.container_port, "/"),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            depends_on=["postgres"],
        )


def monitor_user(ctx: ServiceContext) -> str:
    """The role the exporter logs in as with the value of its secret it holds."""
    if ctx.stack.target == SWARM_TARGET:
        return MONITOR_ROLE
    return login_role(MONITOR_ROLE, ctx.secrets[MONITOR_SECRET])


SERVICE = PostgresExporter()
