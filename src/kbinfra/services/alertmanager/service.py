"""Alertmanager: routes Prometheus' alerts by severity to a webhook and/or an email address.

Without a webhook or email in ``kbinfra.yaml`` the receivers are empty: alerts are grouped,
inhibited and shown in the Alertmanager UI (127.0.0.1:9093), but sent nowhere.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, cast

from pydantic import Field, model_validator

from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import MONITORING, NoTuning

if TYPE_CHECKING:
    pass

CONFIG_DIR = "/etc/alertmanager"
DATA_DIR = "/alertmanager"
CONFIG_FILE = "alertmanager/alertmanager.yml"
#: The image runs as nobody: the 0600 configuration must belong to it inside the container.
CONTAINER_UID = 65534
SEVERITIES = ("critical", "warning")


class AlertmanagerSettings(ServiceSettings):
    webhook_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="POST alerts here (Slack/Teams bridges, ntfy…); a credential: written "
        "only into the 0600 alertmanager.yml and redacted everywhere else",
    )
    email_to: str | None = Field(
        None, pattern=r"^[^@\s]+@[^@\s]+$", description="Send alerts to this address"
    )
    smtp_smarthost: str | None = Field(
        None, pattern=r"^[^\s:]+:\d{1,5}$", description="SMTP relay host:port for email"
    )
    smtp_from: str | None = Field(
        None, pattern=r"^[^@\s]+@[^@\s]+$", description="Sender address of alert emails"
    )
    smtp_require_tls: bool = Field(True, description="Require STARTTLS to the SMTP relay")

    @model_validator(mode="after")
    def _email_complete(self) -> Self:
        given = [self.email_to, self.smtp_smarthost, self.smtp_from]
        if any(given) and not all(given):
            raise ValueError("email alerts need email_to, smtp_smarthost and smtp_from together")
        return self


class Alertmanager(Service):
    name = "alertmanager"
    allocation = "monitoring"
    share = 0.1
    settings_model = AlertmanagerSettings
    default_image = "prom/alertmanager:v0.34.1"
    container_port = 9093
    default_host_port = 9093
    stage = MONITORING
    receives_alerts = True

    def tuning(self, ctx: ServiceContext) -> NoTuning:
        return NoTuning()

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        settings = cast(AlertmanagerSettings, ctx.settings)
        return {
            "settings": settings,
            "email": settings.email_to is not None,
            "severities": SEVERITIES,
        }

    def secret_templates(self) -> frozenset[str]:
        # A webhook URL is often a token (Slack's is): the file that holds it is a secret.
        return frozenset({"alertmanager.yml"})

    def secret_settings(self, ctx: ServiceContext) -> Mapping[str, str]:
        settings = cast(AlertmanagerSettings, ctx.settings)
        return {"webhook_url": settings.webhook_url} if settings.webhook_url else {}

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        return [ScrapeTarget(job=self.name, address=self.address())]

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            command=[
                f"--config.file={CONFIG_DIR}/alertmanager.yml",
                f"--storage.path={DATA_DIR}",
                # One instance: no gossip port, no "cluster not ready" wait at start.
                "--cluster.listen-address=",
            ],
            ports=ctx.loopback_port(self.container_port),
            # Silences and the notification log survive restarts.
            volumes=[VolumeMount(volume=ctx.volume(), target=DATA_DIR)],
            files=[
                FileMount(
                    source=CONFIG_FILE,
                    target=f"{CONFIG_DIR}/alertmanager.yml",
                    uid=CONTAINER_UID,
                    gid=CONTAINER_UID,
                )
            ],
            healthcheck=HealthCheck(
                # busybox wget is in the image; curl is not.
                test=wget_http_probe(self.container_port, "/-/ready"),
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            tmpfs=(TmpfsMount("/tmp", size_mb=16),),
        )


SERVICE = Alertmanager()
SERVICES = (SERVICE,)
