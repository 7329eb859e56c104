"""node-exporter: host metrics (CPU, memory, disks, network) for Prometheus' ``node`` job.

The module is ``node_exporter`` (a Python name); the service is ``node-exporter`` (the registry
and the stack file key services by ``Service.name``).
"""

from kbinfra.services._monitoring import Exporter
from kbinfra.services._probes import wget_http_probe
from kbinfra.services.base import ContainerSpec, HealthCheck, ServiceContext

#: Where the host's root file system is expected inside the container. kbinfra cannot mount it
#: yet (``ContainerSpec`` has named volumes only), so until it can, the filesystem collector
#: sees the container's own view; memory, CPU and network come from /proc and /sys, which
#: show the host's counters for those anyway.
HOST_ROOT = "/host"


class NodeExporter(Exporter):
    name = "node-exporter"
    share = 0.05
    default_image = "prom/node-exporter:v1.12.1"
    container_port = 9100
    job = "node"

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            command=[
                f"--path.rootfs={HOST_ROOT}",
                f"--web.listen-address=:{self.container_port}",
            ],
            ports=ctx.loopback_port(self.container_port),
            healthcheck=HealthCheck(
                # The image is busybox-based: wget is there, curl is not.
                test=wget_http_probe(self.container_port, "/"),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
        )


SERVICE = NodeExporter()
