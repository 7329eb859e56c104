"""Prometheus: scrape jobs collected from every enabled service, the guide's alerts fixed.

The scrape list is not written by hand: each enabled service offers its endpoints through
``Service.scrape_targets`` and Prometheus collects them, so a service that is switched off
disappears from the scrape list and from the ``up == 0`` alerts at the same time.

The rendered files are accepted by the pinned Prometheus 3 and by Debian 12's promtool 2.42,
which ``kbinfra render --check`` runs: no option newer than 2.42 is used.
"""

from typing import Any, NamedTuple, cast

from pydantic import Field

from kbinfra.registry import enabled_services
from kbinfra.service import (
    AlertRule,
    ContainerSpec,
    FileMount,
    HealthCheck,
    RenderedFile,
    ScrapeTarget,
    Service,
    ServiceContext,
    ServiceSettings,
    TmpfsMount,
    VolumeMount,
    WorkQueue,
)
from kbinfra.service_kit.healthchecks import wget_http_probe
from kbinfra.service_kit.monitoring import MONITORING, camel, p95

CONFIG_DIR = "/etc/prometheus"
DATA_DIR = "/prometheus"
CONFIG_FILE = "prometheus/prometheus.yml"
RULES_FILE = "prometheus/rules/kb_alerts.yml"
SECRETS_DIR = "prometheus/secrets"
#: The image runs Prometheus as ``nobody``; files it reads must be readable by this uid.
CONTAINER_UID = 65534
SELF_JOB = "prometheus"
APP_JOB = "app"
#: Keep TSDB blocks under this share of the storage Prometheus is given: compaction writes a
#: new block before it deletes the old ones, and the WAL is not counted by retention.size.
RETENTION_FRACTION = 0.8
_DURATION = r"^[1-9][0-9]*(ms|s|m|h|d|w|y)$"


class PrometheusSettings(ServiceSettings):
    retention_time: str = Field(
        "30d", pattern=_DURATION, description="Drop samples older than this (e.g. 30d, 12w)"
    )
    scrape_interval_s: int = Field(
        15, ge=5, le=300, description="Scrape interval of Prometheus itself and of the app"
    )
    evaluation_interval_s: int = Field(15, ge=5, le=300, description="Rule evaluation interval")
    scrape_app: bool = Field(True, description="Scrape the app's /metrics at app.upstream")
    app_metrics_path: str = Field("/metrics", pattern=r"^/\S*$", description="App metrics path")
    queue_backlog_threshold: int = Field(
        100, ge=1, description="Alert when a watched Celery queue holds more tasks than this"
    )


class PrometheusTuning(NamedTuple):
    retention_time: str
    retention_size_mb: int  # MiB: Prometheus' "MB" is 2^20 bytes
    scrape_interval_s: int
    evaluation_interval_s: int


class ScrapeJob(NamedTuple):
    """One ``scrape_configs`` entry: every target that shares a job name and its settings."""

    job: str
    path: str
    interval_s: int
    bearer_secret: str | None
    targets: tuple[str, ...]

    @property
    def timeout_s(self) -> int:
        # Prometheus refuses a scrape_timeout longer than the scrape_interval.
        return min(10, self.interval_s)


def retention_size_mb(storage_gb: int) -> int:
    """``RETENTION_FRACTION`` of ``storage_gb`` (decimal GB, as disks are sold) in MiB.

    25 GB → 25·10⁹·0.8 B = 20·10⁹ B = 19073 MiB (rounded down).
    """
    return int(storage_gb * 1_000_000_000 * RETENTION_FRACTION) // (1024 * 1024)


def collect_scrape_targets(ctx: ServiceContext) -> list[ScrapeTarget]:
    """Every endpoint the enabled services offer, Prometheus' own included."""
    return [t for service, own in enabled_services(ctx) for t in service.scrape_targets(own)]


def scrape_jobs(targets: list[ScrapeTarget]) -> list[ScrapeJob]:
    """Group targets by job name, sorted; a job's targets must agree on path, auth, interval."""
    by_job: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        by_job.setdefault(target.job, []).append(target)
    jobs = []
    for job, members in sorted(by_job.items()):
        shapes = {(t.path, t.bearer_secret, t.interval_s) for t in members}
        if len(shapes) > 1:
            raise ValueError(
                f"scrape job {job!r} is offered with different paths, credentials or intervals; "
                "give each its own job name"
            )
        path, bearer_secret, interval_s = shapes.pop()
        jobs.append(
            ScrapeJob(
                job=job,
                path=path,
                interval_s=interval_s,
                bearer_secret=bearer_secret,
                targets=tuple(sorted({t.address for t in members})),
            )
        )
    return jobs


def guide_rules() -> list[AlertRule]:
    """The guide's ``kb_performance`` alert on the app's own metrics, corrected. Its other
    alerts come from the services that export their metrics (``Service.alert_rules``), and
    QdrantDown is one of ``down_rules``."""
    return [
        AlertRule(
            alert="HighSearchLatency",
            expr=f"{p95('kb_search_duration_seconds_bucket')} > 0.5",
            for_="2m",
            severity="warning",
            summary="KB search latency is high",
            description="95th percentile search latency is {{ $value | humanizeDuration }}",
        ),
    ]


def down_rules(jobs: list[ScrapeJob]) -> list[AlertRule]:
    """``up == 0`` for every scraped job but Prometheus' own (it cannot report its absence)."""
    return [
        AlertRule(
            alert=f"{camel(job.job)}Down",
            expr=f'up{{job="{job.job}"}} == 0',
            for_="1m",
            severity="critical",
            summary=f"{job.job} is down",
            description=f"{{{{ $labels.instance }}}} of job {job.job} has not answered "
            "a scrape for a minute",
        )
        for job in jobs
        if job.job != SELF_JOB
    ]


def backlog_rules(queues: list[WorkQueue], threshold: int) -> list[AlertRule]:
    """The guide's DocumentProcessingBacklog, on each queue's real length."""
    return [
        AlertRule(
            alert=f"{camel(queue.name)}Backlog",
            expr=f"{queue.length} > {threshold}",
            for_="5m",
            severity="warning",
            summary=f"{queue.name} backlog detected",
            description=f"{{{{ $value }}}} tasks are waiting in Celery queue {queue.name}",
        )
        for queue in queues
    ]


def credentials_path(secret: str) -> str:
    """Where a bearer token file is mounted in the container."""
    return f"{CONFIG_DIR}/secrets/{secret}"


class Prometheus(Service):
    name = "prometheus"
    allocation = "monitoring"
    share = 0.5
    settings_model = PrometheusSettings
    default_image = "prom/prometheus:v3.13.3"
    container_port = 9090
    default_host_port = 9090
    stage = MONITORING

    def tuning(self, ctx: ServiceContext) -> PrometheusTuning:
        settings = cast(PrometheusSettings, ctx.settings)
        return PrometheusTuning(
            retention_time=settings.retention_time,
            retention_size_mb=retention_size_mb(ctx.resources.storage_gb),
            scrape_interval_s=settings.scrape_interval_s,
            evaluation_interval_s=settings.evaluation_interval_s,
        )

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        settings = cast(PrometheusSettings, ctx.settings)
        interval = settings.scrape_interval_s
        own = [
            ScrapeTarget(
                job=SELF_JOB, address=f"localhost:{self.container_port}", interval_s=interval
            )
        ]
        if settings.scrape_app and not ctx.stack.app.deployed:
            own.append(
                ScrapeTarget(
                    job=APP_JOB,
                    address=ctx.stack.app.upstream,
                    path=settings.app_metrics_path,
                    interval_s=interval,
                )
            )
        return own

    def jobs(self, ctx: ServiceContext) -> list[ScrapeJob]:
        return scrape_jobs(collect_scrape_targets(ctx))

    def rule_groups(self, ctx: ServiceContext) -> dict[str, list[AlertRule]]:
        """The rule groups of kb_alerts.yml: the guide's (fixed) and one alert per job."""
        settings = cast(PrometheusSettings, ctx.settings)
        others = enabled_services(ctx)
        offered = [rule for service, own in others for rule in service.alert_rules(own)]
        queues = [queue for service, own in others for queue in service.work_queues(own)]
        return {
            "kb_performance": [
                *guide_rules(),
                *offered,
                *backlog_rules(queues, settings.queue_backlog_threshold),
            ],
            "kb_availability": down_rules(self.jobs(ctx)),
        }

    def alertmanagers(self, ctx: ServiceContext) -> list[str]:
        """Where Prometheus sends alerts: every enabled service that receives them."""
        return [
            service.address() for service, _ in enabled_services(ctx) if service.receives_alerts
        ]

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "tune": self.tuning(ctx),
            "jobs": self.jobs(ctx),
            "rule_groups": self.rule_groups(ctx),
            "alertmanagers": self.alertmanagers(ctx),
            "rules_path": f"{CONFIG_DIR}/rules/kb_alerts.yml",
            "credentials_path": credentials_path,
        }

    def bearer_secrets(self, ctx: ServiceContext) -> list[str]:
        return sorted({job.bearer_secret for job in self.jobs(ctx) if job.bearer_secret})

    def files(self, ctx: ServiceContext) -> list[RenderedFile]:
        """One 0600 file per bearer token: prometheus.yml names the file, never the token."""
        files = []
        for secret in self.bearer_secrets(ctx):
            if secret not in ctx.secrets:
                raise ValueError(f"scrape credentials need secret {secret!r}; run `kbinfra init`")
            files.append(
                RenderedFile(
                    path=f"{SECRETS_DIR}/{secret}",
                    text=ctx.secrets[secret],
                    mode=0o600,
                    secret=True,
                )
            )
        return files

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        tune = self.tuning(ctx)
        mounts = [
            FileMount(source=CONFIG_FILE, target=f"{CONFIG_DIR}/prometheus.yml"),
            FileMount(source=RULES_FILE, target=f"{CONFIG_DIR}/rules/kb_alerts.yml"),
        ]
        # These are 0600 and the image runs as nobody: they must belong to that uid inside
        # the container, or Prometheus cannot read them.
        mounts += [
            FileMount(
                source=f"{SECRETS_DIR}/{secret}",
                target=credentials_path(secret),
                uid=CONTAINER_UID,
                gid=CONTAINER_UID,
            )
            for secret in self.bearer_secrets(ctx)
        ]
        upstream_host = ctx.stack.app.upstream.rpartition(":")[0]
        settings = cast(PrometheusSettings, ctx.settings)
        extra_hosts = []
        if (
            settings.scrape_app
            and not ctx.stack.app.deployed
            and upstream_host == "host.docker.internal"
        ):
            # Docker Desktop defines this name; Docker Engine on Linux needs it spelled out.
            extra_hosts.append("host.docker.internal:host-gateway")
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            # The image's entrypoint is /bin/prometheus; replacing its CMD drops its defaults,
            # so config file and storage path are repeated here.
            command=[
                f"--config.file={CONFIG_DIR}/prometheus.yml",
                f"--storage.tsdb.path={DATA_DIR}",
                f"--storage.tsdb.retention.time={tune.retention_time}",
                f"--storage.tsdb.retention.size={tune.retention_size_mb}MB",
                # No --web.enable-lifecycle: it lets any process that reaches the port
                # POST /-/quit. kbinfra loads a changed configuration by recreating.
            ],
            ports=ctx.loopback_port(self.container_port),
            volumes=[VolumeMount(volume=ctx.volume(), target=DATA_DIR)],
            files=mounts,
            healthcheck=HealthCheck(
                # busybox wget is in the image; curl is not.
                test=wget_http_probe(self.container_port, "/-/ready"),
                start_period_s=30,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            extra_hosts=extra_hosts,
            # Prometheus writes its head block on shutdown; a hard kill replays the WAL.
            stop_timeout_s=120,
            tmpfs=(TmpfsMount("/tmp", size_mb=16),),
        )


SERVICE = Prometheus()
SERVICES = (SERVICE,)
