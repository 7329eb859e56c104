"""postgres-exporter: PostgreSQL metrics for Prometheus' ``postgres`` job.

It logs in as ``kbinfra_monitor``, the least-privilege role (``pg_monitor``) that the postgres
service creates at initdb (``templates/postgres/initdb/20-monitor-role.sh``), with the password
from the secret ``postgres_monitor_password``, passed by environment, never written to a file.
"""

from typing import TYPE_CHECKING, cast

from kbinfra.registry import get_service
from kbinfra.service import ContainerSpec, HealthCheck, ServiceContext
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import Exporter

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
                "DATA_SOURCE_USER": MONITOR_ROLE,
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


SERVICE = PostgresExporter()
