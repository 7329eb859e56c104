"""Grafana: Prometheus provisioned as a datasource and the guide's dashboard, made valid.

The guide's dashboard was an API payload (``{"dashboard": {...}}``) with ``graph`` panels,
no layout, no datasource and Qdrant metrics that do not exist (``qdrant_collections_total``,
``qdrant_points_total``). kbinfra renders a file-provisioned dashboard instead: ``timeseries``
and ``stat`` panels with ``gridPos``, every panel and query bound to the provisioned
datasource by uid, and the metric names the exporters really publish.
"""

from typing import TYPE_CHECKING, Any, NamedTuple

from kbinfra.registry import all_services
from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    ScrapeTarget,
    Service,
    ServiceContext,
    VolumeMount,
)
from kbinfra.service_kit.monitoring import MONITORING, NoTuning
from kbinfra.services.redis.exporter import SERVICE as REDIS_EXPORTER
from kbinfra.services.redis.exporter import watched_queues

if TYPE_CHECKING:
    pass

DATA_DIR = "/var/lib/grafana"
PROVISIONING_DIR = "/etc/grafana/provisioning"
DASHBOARDS_DIR = "/etc/grafana/dashboards"
DATASOURCE_UID = "kbinfra-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
#: The classic (v1) dashboard JSON model. Grafana migrates older schema versions on load;
#: file provisioning does not accept the v2 resource format Grafana 13 exports.
SCHEMA_VERSION = 41
DASHBOARD_FILE = "grafana/dashboards/kb-system.json"
DATASOURCE_FILE = "grafana/provisioning/datasources/prometheus.yml"
PROVIDER_FILE = "grafana/provisioning/dashboards/kbinfra.yml"
ADMIN_SECRET = "grafana_admin_password"


class PanelSpec(NamedTuple):
    """One panel: its title, kind, place (x, y, w, h on Grafana's 24-column grid), unit and
    PromQL queries as (expression, legend) pairs."""

    title: str
    kind: str
    grid: tuple[int, int, int, int]
    queries: list[tuple[str, str]]
    unit: str = "short"


_STAT_OPTIONS = {
    "colorMode": "value",
    "graphMode": "area",
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "textMode": "value_and_name",
}
_TIMESERIES_OPTIONS = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "none"},
}


def panel_json(panel_id: int, spec: PanelSpec) -> dict[str, Any]:
    """A panel of the classic dashboard model, bound to the provisioned datasource."""
    x, y, w, h = spec.grid
    return {
        "id": panel_id,
        "title": spec.title,
        "type": spec.kind,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
        "options": _STAT_OPTIONS if spec.kind == "stat" else _TIMESERIES_OPTIONS,
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}
            for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False)
        ],
    }


def _p95(bucket: str) -> str:
    # The guide took the quantile of each series; buckets must be summed by `le` first.
    return f"histogram_quantile(0.95, sum by (le) (rate({bucket}[5m])))"


def panel_specs(queues: list[str]) -> list[PanelSpec]:
    """The guide's three panels (search, vector database, document processing), split so each
    has one unit, with real metric names, and a few the alerts refer to."""
    if queues:
        keys = "|".join(queues)
        queue = (
            f'sum by (key) (redis_key_size{{job="{REDIS_EXPORTER.job}", key=~"{keys}"}})',
            "{{key}}",
        )
    else:
        queue = ("sum by (key) (redis_key_size)", "{{key}}")
    return [
        PanelSpec(
            "Searches per second",
            "timeseries",
            (0, 0, 12, 8),
            [("sum(rate(kb_search_total[5m]))", "Searches/s")],
            "reqps",
        ),
        PanelSpec(
            "Search latency (p95)",
            "timeseries",
            (12, 0, 12, 8),
            [(_p95("kb_search_duration_seconds_bucket"), "p95")],
            "s",
        ),
        # Qdrant publishes collections_total and collections_vector_total (no qdrant_ prefix).
        PanelSpec(
            "Vector database",
            "stat",
            (0, 8, 8, 6),
            [
                ('sum(collections_total{job="qdrant"})', "Collections"),
                ('sum(collections_vector_total{job="qdrant"})', "Total vectors"),
            ],
        ),
        PanelSpec("Services up", "stat", (8, 8, 16, 6), [("min by (job) (up)", "{{job}}")]),
        PanelSpec(
            "Documents processed",
            "timeseries",
            (0, 14, 12, 8),
            [("sum(rate(documents_processed_total[5m]))", "Documents/s")],
            "ops",
        ),
        # The guide's celery_tasks_total{state="PENDING"} is exported by nothing here.
        PanelSpec("Celery queue length", "timeseries", (12, 14, 12, 8), [queue]),
        PanelSpec(
            "Embedding latency (p95)",
            "timeseries",
            (0, 22, 12, 8),
            [(_p95("embedding_generation_duration_seconds_bucket"), "p95")],
            "s",
        ),
        PanelSpec(
            "Host memory used",
            "timeseries",
            (12, 22, 12, 8),
            [("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}")],
            "percentunit",
        ),
    ]


def dashboard(stack_name: str, queues: list[str]) -> dict[str, Any]:
    """The guide's "PrivexBot KB System" dashboard, named for the stack and made loadable."""
    return {
        "uid": f"kbinfra-{stack_name}",
        "title": f"{stack_name} knowledge base",
        "tags": ["kbinfra", stack_name],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": [panel_json(i, spec) for i, spec in enumerate(panel_specs(queues), start=1)],
    }


class Grafana(Service):
    name = "grafana"
    allocation = "monitoring"
    share = 0.2
    default_image = "grafana/grafana:13.2.1"
    container_port = 3000
    default_host_port = 3000
    secrets = (ADMIN_SECRET,)
    stage = MONITORING
    requires = ("prometheus",)

    def tuning(self, ctx: ServiceContext) -> NoTuning:
        return NoTuning()

    def prometheus_url(self, ctx: ServiceContext) -> str | None:
        prometheus = all_services().get("prometheus")
        if prometheus is None or prometheus.name not in ctx.enabled:
            return None
        return f"http://{prometheus.address()}"

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "prometheus_url": self.prometheus_url(ctx),
            "datasource_uid": DATASOURCE_UID,
            "dashboards_dir": DASHBOARDS_DIR,
            "dashboard": dashboard(ctx.stack.name, watched_queues(ctx)),
        }

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        return [ScrapeTarget(job=self.name, address=self.address())]

    def container(self, ctx: ServiceContext) -> ContainerSpec:
        return ContainerSpec(
            service=self.name,
            image=ctx.image,
            env={
                "GF_SECURITY_ADMIN_USER": "admin",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
                "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
            },
            # Read when Grafana creates its database (first start only); see docs.
            secret_env={"GF_SECURITY_ADMIN_PASSWORD": ADMIN_SECRET},
            ports=ctx.loopback_port(self.container_port),
            volumes=[VolumeMount(volume=ctx.volume(), target=DATA_DIR)],
            files=[
                FileMount(
                    source=DATASOURCE_FILE,
                    target=f"{PROVISIONING_DIR}/datasources/prometheus.yml",
                ),
                FileMount(
                    source=PROVIDER_FILE, target=f"{PROVISIONING_DIR}/dashboards/kbinfra.yml"
                ),
                FileMount(source=DASHBOARD_FILE, target=f"{DASHBOARDS_DIR}/kb-system.json"),
            ],
            healthcheck=HealthCheck(
                # curl is installed in both the Alpine and the Ubuntu variants of the image.
                test=["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:3000/api/health"],
                start_period_s=30,
            ),
            cpus=ctx.resources.cpus,
            memory_mb=ctx.resources.memory_mb,
            depends_on=["prometheus"],
        )


SERVICE = Grafana()
SERVICES = (SERVICE,)
