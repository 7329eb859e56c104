"""``kbinfra render --check`` for the embedding service: its config against the app's schema."""

from pathlib import Path

from kbinfra.service import CheckResult, ServiceContext
from kbinfra.service_kit.json_file import check_json_file
from kbinfra.services.embeddings.service import CONFIG_FILE, EmbeddingsConfig


def check_rendered(ctx: ServiceContext, out: Path) -> list[CheckResult]:
    return [check_json_file(out, CONFIG_FILE, EmbeddingsConfig, "config schema")]
