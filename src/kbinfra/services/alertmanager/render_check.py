"""``kbinfra render --check`` for Alertmanager: ``amtool check-config`` on the rendered file."""

from pathlib import Path

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.service_kit.monitoring import failure_text, first_line_number
from kbinfra.services.alertmanager.service import CONFIG_FILE
from kbinfra.validation import find_tool, run_tool, skipped


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """``amtool check-config``: unknown receivers, bad matchers, unknown fields."""
    amtool = find_tool("amtool")
    if amtool is None:
        return [skipped(CONFIG_FILE, "amtool")]
    run = run_tool([amtool, "check-config", str(out / CONFIG_FILE)])
    if run.ok:
        return [CheckResult(CONFIG_FILE, "amtool check-config", "ok")]
    output = run.output.replace(str(out / CONFIG_FILE), CONFIG_FILE)
    return [
        CheckResult(
            CONFIG_FILE,
            "amtool check-config",
            "failed",
            failure_text(output),
            first_line_number(output),
        )
    ]
