"""Grafana: Prometheus provisioned as a datasource and the guide's dashboard, made valid.

The guide's dashboard was an API payload (``{"dashboard": {...}}``) with ``graph`` panels,
no layout, no datasource and Qdrant metrics that do not exist (``qdrant_collections_total``,
``qdrant_points_total``). kbinfra renders a file-provisioned dashboard instead: ``timeseries``
and ``stat`` panels with ``gridPos``, every panel and query bound to the provisioned
datasource by uid, and the metric names the exporters really publish. Each service offers
the panels for the metrics it exports (``Service.dashboard_panels``); Grafana lays them out.
"""

from typing import Any

from kbinfra.registry import all_services, enabled_services
from kbinfra.service import (
    ContainerSpec,
    FileMount,
    HealthCheck,
    Panel,
    ScrapeTarget,
    Service,
    ServiceContext,
    TmpfsMount,
    VolumeMount,
)
from kbinfra.service_kit.monitoring import MONITORING, NoTuning, p95

#: The dependency Grafana declares: the datasource it is provisioned with.
PROMETHEUS = "prometheus"
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


def panel_json(panel_id: int, spec: Panel) -> dict[str, Any]:
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


def own_panels() -> list[Panel]:
    """The guide's panels on the app's own metrics, and the stack's health. The services add
    theirs (``Service.dashboard_panels``): the vector database, queues, embeddings, host."""
    return [
        Panel(
            "Searches per second",
            "timeseries",
            (0, 0, 12, 8),
            [("sum(rate(kb_search_total[5m]))", "Searches/s")],
            "reqps",
        ),
        Panel(
            "Search latency (p95)",
            "timeseries",
            (12, 0, 12, 8),
            [(p95("kb_search_duration_seconds_bucket"), "p95")],
            "s",
        ),
        Panel("Services up", "stat", (8, 8, 16, 6), [("min by (job) (up)", "{{job}}")]),
        Panel(
            "Documents processed",
            "timeseries",
            (0, 14, 12, 8),
            [("sum(rate(documents_processed_total[5m]))", "Documents/s")],
            "ops",
        ),
    ]


def panel_specs(ctx: ServiceContext) -> list[Panel]:
    """Grafana's own panels and those the enabled services offer, top to bottom, left to
    right (the order Grafana numbers them in)."""
    offered = [
        panel for service, own in enabled_services(ctx) for panel in service.dashboard_panels(own)
    ]
    return sorted([*own_panels(), *offered], key=lambda panel: (panel.grid[1], panel.grid[0]))


def dashboard(stack_name: str, panels: list[Panel]) -> dict[str, Any]:
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
        "panels": [panel_json(i, spec) for i, spec in enumerate(panels, start=1)],
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

    def secret_file_env(self, env_var: str) -> str | None:
        """Grafana reads any ``GF_*`` setting from the file ``GF_<NAME>__FILE`` names."""
        return f"{env_var}__FILE"

    requires = (PROMETHEUS,)

    def tuning(self, ctx: ServiceContext) -> NoTuning:
        return NoTuning()

    def prometheus_url(self, ctx: ServiceContext) -> str | None:
        prometheus = all_services().get(PROMETHEUS)
        if prometheus is None or prometheus.name not in ctx.enabled:
            return None
        return f"http://{prometheus.address()}"

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {
            "prometheus_url": self.prometheus_url(ctx),
            "datasource_uid": DATASOURCE_UID,
            "dashboards_dir": DASHBOARDS_DIR,
            "dashboard": dashboard(ctx.stack.name, panel_specs(ctx)),
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
                # Logs to the container's output only: the image's default also writes
                # /var/log/grafana, and the root file system is read-only.
                "GF_LOG_MODE": "console",
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
            # No depends_on: provisioning only records the Prometheus data source, and
            # Grafana queries it when a dashboard is opened, so it starts without Prometheus.
            tmpfs=(TmpfsMount("/tmp"),),
        )


SERVICE = Grafana()
SERVICES = (SERVICE,)
