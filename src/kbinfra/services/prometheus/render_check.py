"""``kbinfra render --check`` for Prometheus: ``promtool check config`` and ``check rules``."""

import re
import shutil
import tempfile
from pathlib import Path

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.service_kit.monitoring import failure_text, first_line_number
from kbinfra.services.prometheus.service import CONFIG_DIR, CONFIG_FILE, RULES_FILE
from kbinfra.validation import ToolRun, find_tool, run_tool, skipped


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    """``promtool check config`` and ``check rules`` on a copy with local paths.

    promtool opens every rule and credentials file prometheus.yml names; those are
    container paths (/etc/prometheus/…), so the check runs on a temporary copy where
    they point into the copy. Line numbers are unchanged by the rewrite.
    """
    promtool = find_tool("promtool")
    if promtool is None:
        return [skipped(CONFIG_FILE, "promtool"), skipped(RULES_FILE, "promtool")]
    with tempfile.TemporaryDirectory(prefix="kbinfra-promtool-") as temp:
        staged = Path(temp) / "prometheus"
        shutil.copytree(out / "prometheus", staged)
        config = staged / "prometheus.yml"
        text = config.read_text(encoding="utf-8")
        config.write_text(
            re.sub(rf"(?<![\w/]){re.escape(CONFIG_DIR)}/", f"{staged}/", text),
            encoding="utf-8",
        )
        config_run = run_tool([promtool, "check", "config", str(config)])
        rules_run = run_tool([promtool, "check", "rules", str(staged / "rules/kb_alerts.yml")])
        return [
            _promtool_result(CONFIG_FILE, "promtool check config", config_run, staged),
            _promtool_result(RULES_FILE, "promtool check rules", rules_run, staged),
        ]


def _promtool_result(relative: str, tool: str, run: "ToolRun", staged: Path) -> CheckResult:
    if run.ok:
        return CheckResult(relative, tool, "ok")
    output = run.output.replace(f"{staged}/", "prometheus/").replace(str(staged), "prometheus")
    # `check config` also parses the rule files: a line number may belong to one of them.
    where = re.search(r"(prometheus/\S+\.ya?ml): \d+:\d+:", output)
    return CheckResult(
        where.group(1) if where else relative,
        tool,
        "failed",
        failure_text(output),
        first_line_number(output),
    )
