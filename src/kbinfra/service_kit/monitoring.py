"""What the monitoring services share: exporters, tool output parsing and dependency checks.

A private module (its name starts with ``_``), so the registry does not look for a service
here. Every monitoring service draws from the profile's ``monitoring`` budget; the shares
(prometheus 0.5, grafana 0.2, alertmanager 0.1, node-exporter 0.05, postgres-exporter 0.075,
redis-exporter 0.075) add up to 1.0 and are set on each class.
"""

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from kbinfra.service import ScrapeTarget, Service, ServiceContext, Stage

if TYPE_CHECKING:
    from kbinfra.validation import CheckResult

MONITORING: Stage = "monitoring"
STACK_FILE = "kbinfra.yaml"


class NoTuning(NamedTuple):
    """Services whose settings do not depend on their resources."""


def camel(name: str) -> str:
    """``document_processing`` → ``DocumentProcessing``: alert names from job and queue names."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name))


def address_of(name: str, default_port: int) -> str:
    """``name:port`` of another service on the stack network, from the registry when it is
    registered (its ``container_port`` is the truth), else at the upstream default port."""
    from kbinfra.registry import all_services  # noqa: PLC0415 (the registry imports us)

    service = all_services().get(name)
    return service.address() if service is not None else f"{name}:{default_port}"


def missing_dependency(ctx: ServiceContext, needed: str) -> list["CheckResult"]:
    """A failed check when ``ctx.name`` is enabled but the service it watches is not.

    ``kbinfra.stack`` enables services one by one, so an exporter left on after its
    service was switched off would run and report nothing but ``*_up 0``.
    """
    from kbinfra.validation import CheckResult  # noqa: PLC0415 (render --check only)

    if needed in ctx.enabled:
        return []
    return [
        CheckResult(
            STACK_FILE,
            "kbinfra",
            "failed",
            f"services.{ctx.name} is enabled but {needed} is not: set "
            f"services.{ctx.name}.enabled: false, or enable {needed}",
        )
    ]


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

    ``watches`` names the service the exporter reads; the exporter is only scraped while that
    service is enabled, and ``render --check`` fails when the exporter is left on without it.
    """

    allocation = "monitoring"
    stage = MONITORING
    default_host_port = None
    job: ClassVar[str]
    watches: ClassVar[str | None] = None

    def tuning(self, ctx: ServiceContext) -> NoTuning:
        return NoTuning()

    def template_context(self, ctx: ServiceContext) -> dict[str, Any]:
        return {}

    def scrape_targets(self, ctx: ServiceContext) -> list[ScrapeTarget]:
        if self.watches is not None and self.watches not in ctx.enabled:
            return []
        return [ScrapeTarget(job=self.job, address=self.address())]

    def check_rendered(self, ctx: ServiceContext, out: Path) -> list["CheckResult"]:
        return missing_dependency(ctx, self.watches) if self.watches else []
