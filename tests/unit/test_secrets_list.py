"""`kbinfra secrets list` and the max-age check: names, dates, ages and uses, never a value."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kbinfra.errors import SpecError
from kbinfra.private_file import write_private_file
from kbinfra.probing.probe import CheckFailedError
from kbinfra.probing.stack_checks import check_secret_ages
from kbinfra.secret_report import secret_report
from kbinfra.secrets import (
    SECRET_DATES_FILE,
    dump_secrets,
    ensure_secrets,
    load_secret_dates,
    load_secrets,
    record_secret_dates,
    secret_ages,
)
from kbinfra.stack import Stack, open_stack
from tests.conftest import fixed_secret, run_kbinfra, write_stack_dir

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_init_records_when_each_secret_was_generated_and_later_ones_keep_theirs(
    tmp_path: Path,
) -> None:
    ensure_secrets(tmp_path, ["alpha", "beta"])
    first = load_secret_dates(tmp_path)
    assert set(first) == {"alpha", "beta"}
    assert (tmp_path / SECRET_DATES_FILE).stat().st_mode & 0o777 == 0o600
    record_secret_dates(tmp_path, ["alpha"], NOW - timedelta(days=400))
    ensure_secrets(tmp_path, ["alpha", "beta", "gamma"])
    dates = load_secret_dates(tmp_path)
    assert dates["alpha"] == NOW - timedelta(days=400)  # an existing secret keeps its date
    assert dates["beta"] == first["beta"]
    assert "gamma" in dates and dates["gamma"] >= first["beta"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Bad-Name: '2026-01-01T00:00:00+00:00'\n", "is not a secret name"),
        ("alpha: yesterday\n", "is not an ISO 8601 time"),
        ("alpha: '2026-01-01T00:00:00'\n", "has no time zone"),
    ],
)
def test_a_dates_file_someone_edited_is_checked_by_type(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / SECRET_DATES_FILE).write_text("# dates\n" + text)
    with pytest.raises(SpecError) as raised:
        load_secret_dates(tmp_path)
    assert problem in str(raised.value)
    assert f"{SECRET_DATES_FILE}:2" in str(raised.value.where)


def test_a_secret_without_a_date_is_at_least_as_old_as_the_secrets_file(tmp_path: Path) -> None:
    ensure_secrets(tmp_path, ["alpha"])
    (tmp_path / SECRET_DATES_FILE).unlink()
    old = (NOW - timedelta(days=90)).timestamp()
    os.utime(tmp_path / "secrets.yaml", (old, old))
    age = secret_ages(tmp_path, ["alpha"])["alpha"]
    assert not age.exact
    assert round(age.days(NOW)) == 90


def stack_with_ages(tmp_path: Path, days: dict[str, int], max_age_days: int | None = None) -> Stack:
    overrides = {"secrets": {"max_age_days": max_age_days}} if max_age_days else None
    folder = write_stack_dir(tmp_path / "stack", overrides=overrides)
    for name, age in days.items():
        record_secret_dates(folder, [name], NOW - timedelta(days=age))
    return open_stack(folder)


def test_the_report_says_what_uses_each_secret_and_which_are_too_old(tmp_path: Path) -> None:
    stack = stack_with_ages(
        tmp_path, {"postgres_password": 200, "qdrant_api_key": 10}, max_age_days=180
    )
    report = {entry.name: entry for entry in secret_report(stack, NOW)}
    assert report["postgres_password"].too_old
    assert round(report["postgres_password"].age_days or 0) == 200
    assert not report["qdrant_api_key"].too_old
    assert report["postgres_monitor_password"].used_by == ("postgres", "postgres-exporter")
    assert report["backup_hmac_key"].used_by == ("backup signing",)
    with pytest.raises(CheckFailedError) as failed:
        check_secret_ages(stack, 180, NOW)
    assert "postgres_password (200 d)" in str(failed.value)
    assert "qdrant_api_key" not in str(failed.value)


def test_the_max_age_check_passes_when_every_secret_is_younger(tmp_path: Path) -> None:
    stack = stack_with_ages(tmp_path, {"postgres_password": 20}, max_age_days=180)
    assert check_secret_ages(stack, 180, NOW).endswith("of 180 d")


def test_a_secret_nothing_uses_any_more_is_listed_as_a_leftover(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "stack")
    values = load_secrets(folder, required=())
    write_private_file(
        folder / "secrets.yaml", dump_secrets({**values, "removed_service_key": "x" * 43})
    )
    report = {entry.name: entry for entry in secret_report(open_stack(folder), NOW)}
    assert report["removed_service_key"].used_by == ()
    assert report["qdrant_api_key"].used_by == ("nginx (key gate)", "qdrant")


def test_the_keys_a_key_gate_checks_are_listed_as_used_by_it_too(tmp_path: Path) -> None:
    stack = open_stack(write_stack_dir(tmp_path / "stack"))
    report = {entry.name: entry.used_by for entry in secret_report(stack, NOW)}
    for name in ("qdrant_api_key", "qdrant_upstream_read_only_api_key"):
        assert report[name] == ("nginx (key gate)", "qdrant"), name
    assert report["unstructured_api_key"] == ("nginx (key gate)", "unstructured")
    assert report["embeddings_api_key"] == ("embeddings",)  # it checks its keys itself


def test_secrets_list_prints_names_and_ages_and_never_a_value(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "stack", overrides={"secrets": {"max_age_days": 30}})
    record_secret_dates(folder, ["redis_admin_password"], datetime.now(UTC) - timedelta(days=45))
    text = run_kbinfra("secrets", "list", "--dir", str(folder))
    as_json = run_kbinfra("secrets", "list", "--dir", str(folder), "-o", "json")
    assert text.returncode == 0, text.stderr
    assert as_json.returncode == 0, as_json.stderr
    for output in (text.stdout + text.stderr, as_json.stdout + as_json.stderr):
        assert "TESTSECRET" not in output
    assert "redis_admin_password" in text.stdout
    assert "older than max_age_days (30): redis_admin_password" in text.stderr
    document = json.loads(as_json.stdout)
    entries = {entry["name"]: entry for entry in document["secrets"]}
    assert entries["redis_admin_password"]["too_old"] is True
    assert entries["embeddings_api_key"]["used_by"] == ["embeddings"]
    assert document["max_age_days"] == 30
    assert fixed_secret("redis_admin_password") not in as_json.stdout
