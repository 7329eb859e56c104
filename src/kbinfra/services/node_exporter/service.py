"""node-exporter: host metrics (CPU, memory, disks, network) for Prometheus' ``node`` job.

The module is ``node_exporter`` (a Python name); the service is ``node-exporter`` (the registry
and the stack file key services by ``Service.name``).
"""

from pydantic import Field

from kbinfra.service import (
    AlertRule,
    BindMount,
    ContainerSpec,
    HealthCheck,
    Panel,
    ServiceContext,
    ServiceSettings,
)
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import Exporter

#: Where the host's root file system appears inside the container (upstream's layout).
HOST_ROOT = "/host"
#: Upstream's default exclusions, plus the files Docker mounts into every container: without
#: the host's PID namespace node-exporter reads the container's mount table, where they show
#: up as file systems of their own (the host disk again, under /etc/hosts and friends).
MOUNT_POINTS_EXCLUDE = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+"
    r"|etc/hostname|etc/hosts|etc/resolv\.conf)($|/)"
)


class NodeExporterSettings(ServiceSettings):
    host_root: bool = Field(
        True,
        description="Mount the host's / read-only at /host, so disk figures are the host's",
    )


class NodeExporter(Exporter):
    name = "node-exporter"
    share = 0.05
    settings_model = NodeExporterSettings
    default_image = "prom/node-exporter:v1.12.1"
    container_port = 9100
    job = "node"

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        settings: NodeExporterSettings = ctx.settings
        # Read-only and without upstream's rslave: rslave needs / to be a shared mount, which
        # hosts without systemd (many VMs and containers) do not have; Docker would refuse.
        binds: list[BindMount] = []
        rootfs: list[str] = []
        if settings.host_root:
            binds = [BindMount("/", HOST_ROOT)]
            rootfs = [
                f"--path.rootfs={HOST_ROOT}",
                f"--collector.filesystem.mount-points-exclude={MOUNT_POINTS_EXCLUDE}",
            ]
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            command=[*rootfs, f"--web.listen-address=:{self.container_port}"],
            ports=ctx.loopback_port(self.container_port),
            binds=binds,
            healthcheck=HealthCheck(
                # The image is busybox-based: wget is there, curl is not.
                test=wget_http_probe(self.container_port, "/"),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
        )

    def alert_rules(self, ctx: ServiceContext) -> list[AlertRule]:
        return [
            AlertRule(
                alert="HighMemoryUsage",
                expr=(
                    "(node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes)"
                    " / node_memory_MemTotal_bytes > 0.9"
                ),
                for_="5m",
                severity="warning",
                summary="High memory usage detected",
                description=(
                    "{{ $labels.instance }} uses {{ $value | humanizePercentage }} of memory"
                ),
            )
        ]

    def dashboard_panels(self, ctx: ServiceContext) -> list[Panel]:
        return [
            Panel(
                "Host memory used",
                "timeseries",
                (12, 22, 12, 8),
                [
                    (
                        "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
                        "{{instance}}",
                    )
                ],
                "percentunit",
            )
        ]


SERVICE = NodeExporter()
SERVICES = (SERVICE,)
