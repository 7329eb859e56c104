"""Offsite backups: the decisions, without restic (tests/integration/test_offsite.py runs it)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kbinfra.backup.retention import Found
from kbinfra.errors import SpecError
from kbinfra.offsite.bare import password_candidates, stack_file_for_new_folder
from kbinfra.offsite.listing import backup_listing
from kbinfra.offsite.records import LOCAL, record_verified, safe_copy_status, verified_backups
from kbinfra.offsite.repository import (
    SshSettings,
    backup_tags,
    repository_kind,
    restic_environment,
    restic_options,
    retention_options,
    sftp_address,
    sftp_command,
)
from kbinfra.offsite.restic import (
    Snapshot,
    last_error_line,
    parse_backup_output,
    parse_snapshots,
    parse_time,
    removed_snapshots,
)
from kbinfra.offsite.run import (
    RepositoryListing,
    growth_reported,
    parse_offsite_ref,
    pick_snapshot,
)
from kbinfra.offsite.schedule import (
    cron_file,
    jobs,
    parse_day,
    parse_time_of_day,
    systemd_files,
)
from kbinfra.scaffold import init_stack
from kbinfra.spec.stack import BackupSettings, OffsiteRepository, stack_model
from kbinfra.stack import required_secrets
from tests.conftest import write_stack_dir

SSH = SshSettings(Path("/etc/kb/known_hosts"), Path("/etc/kb/id_ed25519"))
T0 = dt.datetime(2026, 6, 1, 2, 15, tzinfo=dt.UTC)


def repo(repository: str, name: str = "off", **keep: int) -> OffsiteRepository:
    return OffsiteRepository(name=name, repository=repository, **keep)


# ---------------------------------------------------------------- stack file
@pytest.mark.parametrize(
    "repository",
    ["/mnt/second-disk/kb", "sftp:kb@backup.example:/srv/restic", "rest:https://h/kb/",
     "s3:https://s3.example/bucket/kb", "relative/dir", "/mnt/odd:name"],
)  # fmt: skip
def test_restic_repository_strings_are_accepted(repository: str) -> None:
    assert repo(repository).repository == repository


@pytest.mark.parametrize(
    ("repository", "message"),
    [("ftp:host/x", "supports local paths and sftp:"), ("/a b", "no spaces"), ("", "no spaces")],
)
def test_unusable_repositories_are_refused(repository: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        repo(repository)


def test_repository_names_are_secret_safe_and_unique() -> None:
    with pytest.raises(ValidationError, match="not a usable repository name"):
        repo("/x", name="Off-Site")
    with pytest.raises(ValidationError, match="'a' is used twice"):
        BackupSettings(offsite=[repo("/x", name="a"), repo("/y", name="a")])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        repo("/x", keep_last=0)


def test_each_repository_password_is_a_required_secret() -> None:
    spec = stack_model().model_validate(
        {"backup": {"offsite": [{"name": "nas", "repository": "/mnt/nas"}]}}
    )
    assert "offsite_nas_password" in required_secrets(spec)
    assert not any(s.startswith("offsite_") for s in required_secrets(stack_model()()))


def test_init_generates_the_repository_password_once(tmp_path: Path) -> None:
    init_stack(tmp_path, profile="minimum", target="local", domain="kb.test", images_file=None,
               force=False)  # fmt: skip
    stack_file = tmp_path / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    data["backup"]["offsite"] = [{"name": "nas", "repository": "/mnt/nas"}]
    stack_file.write_text(yaml.safe_dump(data))
    result = init_stack(tmp_path, profile="minimum", target="local", domain="kb.test",
                        images_file=None, force=False)  # fmt: skip
    assert result.secrets_added == ["offsite_nas_password"]
    password = yaml.safe_load((tmp_path / "secrets.yaml").read_text())["offsite_nas_password"]
    assert len(password) >= 43
    again = init_stack(tmp_path, profile="minimum", target="local", domain="kb.test",
                       images_file=None, force=False)  # fmt: skip
    assert again.secrets_added == []
    assert yaml.safe_load((tmp_path / "secrets.yaml").read_text())["offsite_nas_password"] == (
        password
    )


# ---------------------------------------------------------------- what restic is told
def test_repository_kinds() -> None:
    assert [repository_kind(r) for r in ("/x", "sftp:h:/x", "rest:http://h/", "s3:h/b")] == [
        "local", "sftp", "rest", "s3",
    ]  # fmt: skip


def test_sftp_addresses_in_both_forms() -> None:
    short = sftp_address("sftp:kb@backup.example:/srv/restic")
    assert (short.user, short.host, short.port, short.path) == (
        "kb", "backup.example", 22, "/srv/restic",
    )  # fmt: skip
    assert short.known_hosts_name == "backup.example"
    url = sftp_address("sftp://kb@127.0.0.1:2236//home/kb/repo")
    assert (url.port, url.path, url.known_hosts_name) == (2236, "/home/kb/repo", "[127.0.0.1]:2236")
    with pytest.raises(SpecError, match="not an SFTP repository"):
        sftp_address("sftp:nohostpath")


def test_sftp_uses_kbinfras_known_hosts_strictly() -> None:
    command = sftp_command(sftp_address("sftp://kb@h:2200//r"), SSH)
    assert command.startswith("ssh -p 2200 ")
    assert "-o UserKnownHostsFile=/etc/kb/known_hosts" in command
    assert "-o StrictHostKeyChecking=yes" in command and "-o BatchMode=yes" in command
    assert "-o GlobalKnownHostsFile=/dev/null" in command
    assert "-i /etc/kb/id_ed25519 -o IdentitiesOnly=yes" in command
    assert command.endswith(" kb@h -s sftp")
    options = restic_options(repo("sftp://kb@h:2200//r"), SSH)
    assert options == ["--no-cache", "-o", f"sftp.command={command}"]
    assert restic_options(repo("rest:http://h/"), SSH) == ["--no-cache"]


def test_a_path_restic_would_split_is_refused() -> None:
    with pytest.raises(SpecError, match="without spaces"):
        sftp_command(sftp_address("sftp:h:/r"), SshSettings(Path("/my hosts")))


def test_password_travels_by_environment_and_foreign_restic_settings_are_dropped() -> None:
    base = {"PATH": "/bin", "RESTIC_PASSWORD_FILE": "/elsewhere", "AWS_PROFILE": "x"}
    env = restic_environment(repo("/mnt/nas"), {"offsite_off_password": "pw"}, base)
    assert env == {"PATH": "/bin", "RESTIC_REPOSITORY": "/mnt/nas", "RESTIC_PASSWORD": "pw"}
    with pytest.raises(SpecError, match="lacks offsite_off_password"):
        restic_environment(repo("/mnt/nas"), {}, base)


def test_s3_credentials_come_from_secrets_and_are_never_generated() -> None:
    s3 = repo("s3:https://s3.example/bucket/kb", name="bucket")
    secrets = {
        "offsite_bucket_password": "pw",
        "offsite_bucket_s3_access_key_id": "AKID",
        "offsite_bucket_s3_secret_access_key": "SECRET",
    }
    env = restic_environment(s3, secrets, {})
    assert env["AWS_ACCESS_KEY_ID"] == "AKID" and env["AWS_SECRET_ACCESS_KEY"] == "SECRET"
    assert env["RESTIC_REPOSITORY"] == "s3:https://s3.example/bucket/kb"
    assert restic_options(s3, SSH) == ["--no-cache"]
    with pytest.raises(SpecError, match="lacks offsite_bucket_s3_access_key_id"):
        restic_environment(s3, {"offsite_bucket_password": "pw"}, {})
    spec = stack_model().model_validate({"backup": {"offsite": [s3.model_dump()]}})
    assert not any("_s3_" in name for name in required_secrets(spec))


def test_retention_is_ungrouped_and_keeps_the_newest() -> None:
    options = retention_options(repo("/x", keep_last=2, keep_daily=7, keep_weekly=0))
    assert options == [
        "--group-by", "", "--keep-last", "2", "--keep-daily", "7", "--keep-monthly", "12",
    ]  # fmt: skip


def test_tags_name_the_stack_and_the_backup() -> None:
    assert backup_tags("kb", "kb-20260601T021500Z", 42) == [
        "kbinfra", "stack=kb", "backup=kb-20260601T021500Z", "bytes=42",
    ]  # fmt: skip


# ---------------------------------------------------------------- what restic answers
def test_restic_times_with_nanoseconds() -> None:
    assert parse_time("2026-12-01T11:22:38.514641256Z") == dt.datetime(
        2026, 12, 1, 11, 22, 38, 514641, tzinfo=dt.UTC
    )
    assert parse_time("2026-12-01T12:22:38+01:00").hour == 11


def test_backup_summary_and_snapshots() -> None:
    lines = [
        '{"message_type":"status","percent_done":0.5,"bytes_done":10}',
        '{"message_type":"summary","data_added":703,"total_bytes_processed":3,'
        '"total_duration":0.2,"snapshot_id":"e3c15e72"}',
    ]
    summary = parse_backup_output(lines)
    assert summary is not None
    assert (summary.snapshot_id, summary.data_added, summary.bytes_processed) == (
        "e3c15e72",
        703,
        3,
    )
    assert parse_backup_output(lines[:1]) is None
    [snapshot] = parse_snapshots(
        [{"time": "2026-06-01T02:15:00.1Z", "id": "ab" * 32, "short_id": "abababab",
          "paths": ["/srv/kb/backups/kb-1"], "tags": backup_tags("kb", "kb-1", 9)}]
    )  # fmt: skip
    assert (snapshot.stack, snapshot.backup, snapshot.size) == ("kb", "kb-1", 9)


def test_forget_output_lists_removed_snapshots_before_prune_text() -> None:
    out = (
        '[{"keep":[{"short_id":"bbbbbbbb"}],"remove":[{"short_id":"aaaaaaaa"}]}]\n'
        "loading indexes...\nthis removes 3 blobs\n"
    )
    assert removed_snapshots(out) == ["aaaaaaaa"]
    assert removed_snapshots('[{"keep":[],"remove":null}]') == []


def test_the_fatal_line_is_the_error() -> None:
    stderr = "subprocess ssh: noise\nFatal: wrong password or no key found\n"
    assert last_error_line(stderr) == "wrong password or no key found"


def snapshot(name: str | None, minute: int, stack: str = "kb") -> Snapshot:
    tags = tuple(backup_tags(stack, name, 1)) if name else ("other",)
    return Snapshot(f"{minute:064d}", f"{minute:08d}", T0 + dt.timedelta(minutes=minute),
                    (f"/b/{name}",), tags)  # fmt: skip


def test_latest_is_the_newest_kbinfra_snapshot_and_names_are_exact() -> None:
    snapshots = [snapshot("kb-1", 1), snapshot("kb-3", 3), snapshot(None, 9), snapshot("kb-2", 2)]
    assert pick_snapshot(snapshots, "latest", "here").backup == "kb-3"
    assert pick_snapshot(snapshots, "kb-2", "here").backup == "kb-2"
    with pytest.raises(Exception, match="no backup named kb-9"):
        pick_snapshot(snapshots, "kb-9", "here")


def test_offsite_references() -> None:
    assert parse_offsite_ref("offsite:latest") == "latest"
    assert parse_offsite_ref("offsite:kb-20260601T021500Z") == "kb-20260601T021500Z"
    assert parse_offsite_ref("backups/kb-1") is None
    with pytest.raises(SpecError):
        parse_offsite_ref("offsite:../x")


# ---------------------------------------------------------------- list, records, bare host
def test_list_shows_both_sides_newest_first() -> None:
    local = [
        Found("kb-1", "kb", T0), Found("kb-2", "kb", T0 + dt.timedelta(days=1)),
        Found("kb-9.partial", None, None, partial=True), Found("other-1", "other", T0),
    ]  # fmt: skip
    remote = [
        RepositoryListing("nas", [snapshot("kb-1", 1), snapshot("kb-0", -600)]),
        RepositoryListing("cloud", error="cannot list"),
    ]
    verified = {LOCAL: {"kb-2": "2026-06-02T03:00:00+00:00"}, "nas": {"kb-0": "2026-06-01"}}
    listing = backup_listing("kb", local, {"kb-1": 10, "kb-2": 20}, remote, verified)
    names = [b.name for b in listing.backups]
    assert names[:3] == ["kb-2", "kb-1", "kb-0"] and "other-1" not in names
    by_name = {b.name: b for b in listing.backups}
    assert by_name["kb-1"].offsite == {"nas": "00000001"} and by_name["kb-1"].local == "complete"
    assert by_name["kb-0"].local == "-" and by_name["kb-0"].verified == {"nas": "2026-06-01"}
    assert by_name["kb-2"].verified == {LOCAL: "2026-06-02T03:00:00+00:00"}
    assert by_name["kb-9.partial"].local.startswith("partial")
    assert listing.errors == {"cloud": "cannot list"}
    assert listing.rows()[0][3] == "complete, drill ok 2026-06-02"


def test_verified_records_accumulate(tmp_path: Path) -> None:
    record_verified(tmp_path, LOCAL, "kb-1", T0)
    record_verified(tmp_path, "nas", "kb-1", T0)
    assert verified_backups(tmp_path) == {
        LOCAL: {"kb-1": T0.isoformat()}, "nas": {"kb-1": T0.isoformat()},
    }  # fmt: skip
    assert (tmp_path / ".kbinfra-verified.json").stat().st_mode & 0o777 == 0o600


def test_the_safe_copy_says_when_it_changed(tmp_path: Path) -> None:
    stack, root = tmp_path / "stack", tmp_path / "stack" / "backups"
    (stack / "tls").mkdir(parents=True)
    (stack / "secrets.yaml").write_text("offsite_nas_password: a\n")
    (stack / "tls" / "key.pem").write_text("KEY")
    first = safe_copy_status(stack, "tls/key.pem", ["offsite_nas_password"], root, T0)
    assert first.changed and "new or CHANGED" in first.describe()
    later = T0 + dt.timedelta(days=1)
    same = safe_copy_status(stack, "tls/key.pem", ["offsite_nas_password"], root, later)
    assert not same.changed and same.since == T0.isoformat()
    assert "unchanged since" in same.describe() and "offsite_nas_password" in same.describe()
    (stack / "secrets.yaml").write_text("offsite_nas_password: b\n")
    assert safe_copy_status(stack, "tls/key.pem", [], root, later).changed
    assert "offsite_nas_password: b" not in (root / ".kbinfra-safe-copy.json").read_text()


def test_bare_host_takes_passwords_from_the_safe_copy_and_keeps_custom_profiles() -> None:
    secrets = {"postgres_password": "x", "offsite_nas_password": "p", "offsite_s3_password": "q"}
    assert password_candidates(secrets) == ["nas", "s3"]
    text = "name: kb\nprofile: /home/me/big-box.yaml\ntarget: local\n"
    assert stack_file_for_new_folder(text, "/home/me/big-box.yaml") == (
        "name: kb\nprofile: profile.yaml\ntarget: local\n"
    )
    assert stack_file_for_new_folder("profile: minimum\n", "minimum") == "profile: minimum\n"


# ---------------------------------------------------------------- schedule
def test_schedule_jobs_lock_one_file_and_drill_offsite_when_configured() -> None:
    backup, drill = jobs(["/usr/bin/python3", "-m", "kbinfra"], Path("/srv/my kb"), offsite=True)
    assert backup.command == (
        "cd '/srv/my kb' && flock '/srv/my kb/.backup.lock' /usr/bin/python3 -m kbinfra "
        "backup --dir '/srv/my kb'"
    )
    assert "backup verify --offsite --dir '/srv/my kb'" in drill.command
    _, local_drill = jobs(["kbinfra"], Path("/srv/kb"), offsite=False)
    assert "kbinfra backup verify latest --dir /srv/kb" in local_drill.command


def test_systemd_timer_and_cron_entry() -> None:
    job_list = jobs(["kbinfra"], Path("/srv/kb"), offsite=True)
    files = {f.path.name: f.text for f in systemd_files(
        "kb", job_list, Path("/etc/systemd/system"), parse_time_of_day("03:30"), parse_day("sun")
    )}  # fmt: skip
    assert sorted(files) == [
        "kbinfra-kb-backup.service", "kbinfra-kb-backup.timer",
        "kbinfra-kb-drill.service", "kbinfra-kb-drill.timer",
    ]  # fmt: skip
    assert "OnCalendar=*-*-* 03:30:00" in files["kbinfra-kb-backup.timer"]
    assert "OnCalendar=Sun *-*-* 05:30:00" in files["kbinfra-kb-drill.timer"]
    assert "Persistent=true" in files["kbinfra-kb-drill.timer"]
    assert f"ExecStart=/bin/sh -c '{job_list[0].command}'" in files["kbinfra-kb-backup.service"]
    cron = cron_file("kb", job_list, Path("/etc/cron.d"), (3, 30), "Sun", user="root")
    assert cron.path == Path("/etc/cron.d/kbinfra-kb-backups")
    lines = [line for line in cron.text.splitlines() if line[:1].isdigit()]
    assert lines[0].startswith(f"30 3 * * * root {job_list[0].command} || logger -t kbinfra")
    assert lines[1].startswith("30 5 * * 0 root ")
    with pytest.raises(SpecError, match="not a time of day"):
        parse_time_of_day("3:30")
    with pytest.raises(SpecError, match="not a day of the week"):
        parse_day("Sunday")


def test_init_warns_that_losing_the_repository_password_loses_the_backups(tmp_path: Path) -> None:
    def init() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kbinfra", "init", "--profile", "minimum", "--dir",
             str(tmp_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    assert init().returncode == 0
    data = yaml.safe_load((tmp_path / "kbinfra.yaml").read_text())
    data["backup"]["offsite"] = [{"name": "nas", "repository": "/mnt/nas"}]
    (tmp_path / "kbinfra.yaml").write_text(yaml.safe_dump(data))
    done = init()
    assert done.returncode == 0, done.stderr
    assert "offsite_nas_password encrypts the offsite backups" in done.stderr
    assert "losing it loses those backups" in done.stderr
    password = yaml.safe_load((tmp_path / "secrets.yaml").read_text())["offsite_nas_password"]
    assert password not in done.stdout + done.stderr


# ---------------------------------------------------------------- the command line's refusals
def kbinfra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbinfra", *args], capture_output=True, text=True, check=False
    )


def test_offsite_commands_without_a_repository_are_one_line_errors(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "stack")
    for args in (
        ("restore", "offsite:latest", "--yes"),
        ("backup", "list", "--offsite"),
        ("backup", "verify", "--offsite"),
        ("backup", "--offsite-only"),
    ):
        done = kbinfra(*args, "--dir", str(stack))
        assert done.returncode == 2, (args, done.stderr)
        assert "no offsite repository configured" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_bare_folder_needs_the_repository_and_the_safe_copy(tmp_path: Path) -> None:
    done = kbinfra("restore", "offsite:latest", "--dir", str(tmp_path), "--yes")
    assert done.returncode == 2
    assert "has no kbinfra.yaml: say which repository" in done.stderr
    done = kbinfra("restore", "offsite:latest", "--repo", "/mnt/x", "--dir", str(tmp_path))
    assert done.returncode == 2 and "secrets file not found" in done.stderr, done.stderr
    assert not (tmp_path / "kbinfra.yaml").exists()


def test_backup_list_shows_local_backups_without_restic(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "stack")
    done = kbinfra("backup", "list", "--dir", str(stack), "--output", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"backups": [], "repositories": [], "errors": {}}


def test_a_download_reports_the_bytes_that_land(tmp_path: Path) -> None:
    seen: list[int] = []
    with growth_reported(tmp_path, seen.append, interval_s=0.01):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "one").write_bytes(b"x" * 1000)
        (tmp_path / "two").write_bytes(b"y" * 234)
    assert sum(seen) == 1234 and all(n > 0 for n in seen)
