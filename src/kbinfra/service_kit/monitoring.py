"""What the monitoring services share: the exporter base, tool output parsing, alert names.

Every monitoring service draws from the profile's ``monitoring`` budget; the shares set on
each class add up to 1.0 (a unit test adds them up).
"""

import re
from typing import Any, ClassVar, NamedTuple

from kbinfra.service import ScrapeTarget, Service, ServiceContext, Stage

MONITORING: Stage = "monitoring"


class NoTuning(NamedTuple):
    """Services whose settings do not depend on their resources."""


def camel(name: str) -> str:
    """``document_processing`` → ``DocumentProcessing``: alert names from job and queue names."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name))


def address_of(name: str, default_port: int) -> str:
    """``name:port`` of another service on the stack network, from the registry when it is
    registered (its ``container_port`` is the truth), else at the upstream default port."""
    from kbinfra.registry import all_services  # noqa: PLC0415 (loaded while it loads services)

    service = all_services().get(name)
    return service.address() if service is not None else f"{name}:{default_port}"


def p95(bucket: str) -> str:
    """The 95th percentile of a histogram across every series of it.

    The guide wrote ``histogram_quantile(0.95, rate(x_bucket[5m]))``: one quantile per series,
    so with two servers (or any extra label) it never computes the service's p95. Buckets
    must be summed by ``le`` first.
    """
    return f"histogram_quantile(0.95, sum by (le) (rate({bucket}[5m])))"


def first_line_number(output: str) -> int | None:
    """The line a promtool/amtool message points at: ``file.yml: 8:15:`` or ``line 3:``."""
    match = re.search(r"\.ya?ml: (\d+):\d+:", output) or re.search(r"\bline (\d+):", output)
    return int(match.group(1)) if match else None


def failure_text(output: str) -> str:
    """promtool/amtool print ``Checking …`` first and the reason after ``FAILED:``."""
    _, marker, rest = output.partition("FAILED:")
    text = rest if marker else output
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("amtool: error:", "Checking "))]
    return " ".join(lines) or output.strip()


class Exporter(Service):
    """A Prometheus exporter: no host port, no files, scraped on the stack network.

    ``requires`` names the service the exporter reads; the exporter is only scraped while that
    service is enabled, and ``render --check`` fails when the exporter is left on without it.
    """

    allocation = "monitoring"
    stage = MONITORING
    default_host_port = None
    job: ClassVar[str]

    def tuning(self, ctx: ServiceContext) -> NoTuning:
        return NoTuning()

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {}

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        if any(needed not in ctx.enabled for needed in self.requires):
            return []
        return [ScrapeTarget(job=self.job, address=self.address())]
