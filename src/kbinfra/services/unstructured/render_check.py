"""``kbinfra render --check`` for Unstructured: its strategies file against its schema."""

from pathlib import Path

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.service_kit.json_file import check_json_file
from kbinfra.services.unstructured.service import STRATEGIES_FILE, StrategiesDocument


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    return [check_json_file(out, STRATEGIES_FILE, StrategiesDocument, "strategies schema")]
