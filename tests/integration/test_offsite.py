"""Offsite backups with real restic against three real repositories at once: a local path,
SFTP on the test bed's sshd (strict host keys) and restic's REST protocol served by
``rclone serve restic`` on loopback. One seeded stack is shared by the module.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import testbed_support
from .stack_support import SECRET_MARK, Deployment, fixed_secret, free_port, new_deployment
from .test_backup import (
    DATA_SERVICES,
    assert_vectors_equal,
    pg,
    rdb,
    read_postgres,
    read_qdrant,
    read_redis,
    seed,
)

pytestmark = pytest.mark.integration

REPOSITORIES = ("disk", "sftp", "rest")
#: Incompressible rows, in MiB, so that deduplication shows (``sent``).
BLOB_MB = 64


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``rclone serve restic`` on a free loopback port; yields its base URL and its folder."""
    if shutil.which("rclone") is None:
        pytest.fail("rclone is not installed (.ci/apt-packages.txt)", pytrace=False)
    root = tmp_path_factory.mktemp("rest-root")
    port = free_port()
    server = subprocess.Popen(
        ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        testbed_support.wait_for(
            lambda: listening(port), "rclone serve restic to listen", timeout_s=30
        )
        yield f"http://127.0.0.1:{port}", root
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def sftp_dir(ssh_target: testbed_support.SSHTarget) -> Iterator[Path]:
    """A folder the test bed's SSH user owns (sshd runs on this machine)."""
    home = Path(f"/home/{ssh_target.user}")
    folder = home / f"kbt-offsite-{uuid.uuid4().hex[:8]}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(
    testbed: testbed_support.Testbed,
    tmp_path_factory: pytest.TempPathFactory,
    rest_server: tuple[str, Path],
    sftp_dir: Path,
) -> Iterator[Deployment]:
    """The three data services, seeded once, with three offsite repositories."""
    folder = tmp_path_factory.mktemp("offsite") / "stack"
    deployment = new_deployment("local", folder, testbed, DATA_SERVICES, prefix="kbo")
    ssh = testbed.ssh
    deployment.env["KBINFRA_KNOWN_HOSTS"] = str(ssh.known_hosts_path)
    deployment.env["KBINFRA_SSH_IDENTITY"] = str(ssh.key_path)
    repositories = {
        "disk": str(tmp_path_factory.mktemp("second-disk") / "repo"),
        "sftp": f"sftp://{ssh.user}@{ssh.host}:{ssh.port}/{sftp_dir}",
        "rest": f"rest:{rest_server[0]}/kb/",
    }
    deployment.edit(
        lambda d: d["backup"].update(
            {
                "offsite": [
                    {"name": name, "repository": repository}
                    for name, repository in repositories.items()
                ]
            }
        )
    )
    set_retention(deployment, "disk", keep_last=1)
    add_secrets(deployment, {f"offsite_{n}_password": fixed_secret(n) for n in REPOSITORIES})
    applied = deployment.run("apply", "--yes")
    assert applied.code == 0, applied.err
    yield deployment
    deployment.run(
        "destroy", "--yes", "--delete-data", "--confirm-name", deployment.name, "--force-unlock"
    )


@pytest.fixture(scope="module")
def sent(stack: Deployment) -> dict[str, dict[int, list[float]]]:
    """The seeded data (once per module), with 64 MB of incompressible rows: restic cuts
    files into chunks of 0.5 to 8 MiB, so only data of that size can show deduplication,
    and a night's changed header chunk (up to 8 MiB) and small files (about 3 MB) stay well
    under a quarter of it (with 16 MB, one 5 MB header chunk made a run fail). Returns the
    vectors sent to Qdrant."""
    vectors = seed(stack)
    with pg(stack) as conn:
        conn.execute("create table blobs (id int primary key, data bytea)")
        for i in range(BLOB_MB):
            conn.execute("insert into blobs values (%s, %s)", (i, random.randbytes(1 << 20)))
    return vectors


def add_secrets(stack: Deployment, values: dict[str, str]) -> None:
    path = stack.dir / "secrets.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def set_retention(stack: Deployment, name: str, **keep: int) -> None:
    def change(data: dict[str, Any]) -> None:
        for repository in data["backup"]["offsite"]:
            if repository["name"] == name:
                policy = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
                repository.update({**policy, **keep})

    stack.edit(change)


def repository_path(stack: Deployment, name: str, rest_root: Path) -> Path:
    """Where the repository's files are on this machine."""
    for repository in stack.spec["backup"]["offsite"]:
        if repository["name"] == name:
            text: str = repository["repository"]
            if text.startswith("sftp:"):
                return Path("/" + text.split("//", 2)[2])
            if text.startswith("rest:"):
                return rest_root / "kb"
            return Path(text)
    raise AssertionError(name)


def snapshots(stack: Deployment) -> dict[str, list[str]]:
    listed = stack.run("backup", "list", "--offsite", "--output", "json")
    assert listed.code == 0, listed.err
    found: dict[str, list[str]] = {name: [] for name in REPOSITORIES}
    for backup in listed.json()["backups"]:
        for repository in backup["offsite"]:
            found[repository].append(backup["name"])
    return found


def uploads(run_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["repository"]: u for u in run_json["offsite"]}


# ---------------------------------------------------------------- the tests
def test_two_nights_send_to_every_repository_deduplicate_and_prune(
    stack: Deployment, sent: object, rest_server: tuple[str, Path]
) -> None:
    first = stack.run("backup", "--output", "json")
    assert first.code == 0, first.err
    first_json = first.json()
    nightly = uploads(first_json)
    assert set(nightly) == set(REPOSITORIES)
    assert all(u["error"] is None and u["snapshot"] for u in nightly.values()), nightly
    assert first_json["safe_copy"]["changed"] is True
    assert "secrets.yaml" in first_json["safe_copy"]["files"]

    second = stack.run("backup", "--output", "json")
    assert second.code == 0, second.err
    again = uploads(second.json())
    assert second.json()["safe_copy"]["changed"] is False
    for name in REPOSITORIES:
        # Unchanged data: the second night adds a small share of the first's bytes (what
        # changes: each file's header chunk, with its timestamps, and the small files).
        first_added = nightly[name]["bytes_added"]
        assert first_added > BLOB_MB * 1_000_000
        assert again[name]["bytes_added"] < first_added / 4, (name, again, nightly)
    # disk keeps only the newest (keep_last 1): the first night was pruned, not the second.
    assert again["disk"]["retention_removed"] == [nightly["disk"]["snapshot"][:8]]
    held = snapshots(stack)
    newest = second.json()["name"]
    assert held["disk"] == [newest]
    assert held["sftp"] == held["rest"] == [newest, first_json["name"]]

    # Both sides in one list; both local backups are complete.
    listed = stack.run("backup", "list", "--offsite")
    assert listed.code == 0, listed.err
    assert newest in listed.out and "offsite sftp" in listed.out and "complete" in listed.out

    # Encrypted: no seeded row, Redis value, table name or secret in any repository file.
    needles = [b"lives long", b"public.chunks", b"doc 2999", SECRET_MARK.encode()]
    for name in REPOSITORIES:
        root = repository_path(stack, name, rest_server[1])
        files = [p for p in root.rglob("*") if p.is_file()]
        assert len(files) > 5, (name, files)
        for file in files:
            data = file.read_bytes()
            assert not [n for n in needles if n in data], (name, file)


def test_no_offsite_then_offsite_only_sends_the_newest_missing_backup(
    stack: Deployment, sent: object
) -> None:
    skipped = stack.run("backup", "--no-offsite", "--output", "json")
    assert skipped.code == 0, skipped.err
    assert skipped.json()["offsite"] == []
    name = skipped.json()["name"]
    assert all(name not in held for held in snapshots(stack).values())

    sent = stack.run("backup", "--offsite-only", "--output", "json")
    assert sent.code == 0, sent.err
    assert {u["repository"]: u["backup"] for u in sent.json()["offsite"]} == dict.fromkeys(
        REPOSITORIES, name
    )
    assert all(name in held for held in snapshots(stack).values())
    again = stack.run("backup", "--offsite-only", "--output", "json")
    assert again.code == 0, again.err
    assert all(u["skipped"] for u in again.json()["offsite"])


def test_an_unknown_sftp_host_key_is_refused_and_the_local_backup_stays(
    stack: Deployment, sent: object, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    made = stack.run("backup", "--repo", "sftp", "--known-hosts", str(empty), "--output", "json")
    assert made.code == 1, made.out + made.err
    assert "offsite upload to sftp failed" in made.err
    assert "unknown SSH host key" in made.err and "SHA256:" in made.err
    assert "the local backup stays at" in made.err
    document = made.json()
    assert Path(document["path"]).is_dir()
    assert empty.read_text() == ""  # never added


def test_verify_offsite_checks_and_drills_a_fetched_copy(stack: Deployment, sent: object) -> None:
    drill = stack.run(
        "backup", "verify", "--offsite", "--repo", "rest", "--read-data-subset", "100%",
        "--output", "json",
    )  # fmt: skip
    assert drill.code == 0, drill.out + drill.err
    report = drill.json()
    assert report["ok"] and report["fetched_from"] == "rest"
    assert [c["ok"] for c in report["offsite_checks"]] == [True]
    fetched = Path(report["backup"]).name
    assert fetched == snapshots(stack)["rest"][0]  # the newest in that repository
    listed = stack.run("backup", "list", "--offsite", "--output", "json").json()
    [row] = [b for b in listed["backups"] if b["name"] == fetched]
    assert set(row["verified"]) == {"rest"}


def test_the_scheduled_command_lines_work(stack: Deployment, sent: object, tmp_path: Path) -> None:
    """No cron or systemd runs here: the written files hold the command lines; run them."""
    written = stack.run(
        "backup", "schedule", "--kind", "cron", "--into", str(tmp_path), "--output", "json"
    )
    assert written.code == 0, written.err
    document = written.json()
    [cron] = [Path(p) for p in document["written"]]
    jobs = document["jobs"]
    lines = cron.read_text().splitlines()
    assert any(line.startswith("30 3 * * * ") and jobs["backup"] in line for line in lines)
    assert any(line.startswith("30 5 * * 0 ") and jobs["drill"] in line for line in lines)
    units = stack.run("backup", "schedule", "--kind", "systemd", "--into", str(tmp_path))
    assert units.code == 0, units.err
    service = tmp_path / f"kbinfra-{stack.name}-backup.service"
    assert "ExecStart=/bin/sh -c " in service.read_text()

    before = set(snapshots(stack)["rest"])
    env = {**stack.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    nightly = subprocess.run(["sh", "-c", jobs["backup"]], env=env, capture_output=True, text=True,
                             check=False, timeout=600)  # fmt: skip
    assert nightly.returncode == 0, nightly.stderr
    assert len(set(snapshots(stack)["rest"]) - before) == 1

    removed = stack.run("backup", "schedule", "--kind", "systemd", "--into", str(tmp_path),
                        "--remove")  # fmt: skip
    assert removed.code == 0, removed.err
    assert not list(tmp_path.glob("*.service")) and cron.exists()


def test_a_corrupted_pack_is_found_by_verify_and_refused_by_restore(
    stack: Deployment, sent: object, tmp_path: Path, rest_server: tuple[str, Path]
) -> None:
    copy = tmp_path / "damaged-repo"
    shutil.copytree(repository_path(stack, "disk", rest_server[1]), copy)
    packs = sorted((copy / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o600)
    biggest.write_bytes(bytes(data))
    original = stack.spec["backup"]["offsite"]
    stack.edit(
        lambda d: d["backup"]["offsite"].append({"name": "damaged", "repository": str(copy)})
    )
    add_secrets(stack, {"offsite_damaged_password": fixed_secret("disk")})
    try:
        found = stack.run(
            "backup", "verify", "--offsite", "--repo", "damaged", "--read-data-subset", "100%"
        )
        assert found.code == 2, found.out + found.err
        assert "restic check found damaged damaged" in found.err

        rdb(stack).set("marker", "still here")
        before = read_postgres(stack)
        refused = stack.run("restore", "offsite:latest", "--repo", "damaged", "--yes")
        assert refused.code == 2, refused.out + refused.err
        assert "offsite damaged" in refused.err or "sha256 differs" in refused.err
        assert rdb(stack).get("marker") == b"still here"
        assert read_postgres(stack) == before
    finally:
        rdb(stack).delete("marker")
        stack.edit(lambda d: d["backup"].update({"offsite": original}))


def test_disaster_restore_from_offsite_then_onto_a_bare_host(
    stack: Deployment, sent: dict[str, dict[int, list[float]]], tmp_path: Path
) -> None:
    before_pg, before_q, before_r = read_postgres(stack), read_qdrant(stack), read_redis(stack)
    made = stack.run("backup", "--output", "json")
    assert made.code == 0, made.err
    name = made.json()["name"]

    # The host's disk is lost: data volumes and the local backups folder are gone.
    destroyed = stack.run("destroy", "--yes", "--delete-data", "--confirm-name", stack.name)
    assert destroyed.code == 0, destroyed.err
    shutil.rmtree(stack.dir / "backups")
    applied = stack.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert read_redis(stack) == {}
    restored = stack.run("restore", "offsite:latest", "--repo", "rest", "--yes", "--output", "json")
    assert restored.code == 0, restored.out + restored.err
    assert restored.json()["ok"] and Path(restored.json()["backup"]).name == name
    # Restore puts back the stack's own database only; another one stays in the backup.
    assert read_postgres(stack, ("kb",)) == {"kb": before_pg["kb"]}
    assert any("postgres/second.dump not restored" in n for n in restored.json()["notes"])
    assert read_redis(stack) == before_r
    after_q = read_qdrant(stack)
    assert after_q["aliases"] == before_q["aliases"] == [("docs", "kb_docs")]
    assert_vectors_equal(after_q, sent)

    # A bare host: a new folder with nothing but the safe copy (secrets.yaml, TLS key).
    destroyed = stack.run("destroy", "--yes", "--delete-data", "--confirm-name", stack.name)
    assert destroyed.code == 0, destroyed.err
    new = tmp_path / "rebuilt"
    (new / "tls").mkdir(parents=True)
    shutil.copy2(stack.dir / "secrets.yaml", new / "secrets.yaml")
    shutil.copy2(stack.dir / "tls" / "key.pem", new / "tls" / "key.pem")
    bare = Deployment(new, stack.name, "local", stack.env)
    started = time.monotonic()
    sftp = next(r["repository"] for r in stack.spec["backup"]["offsite"] if r["name"] == "sftp")
    rebuilt = bare.run("restore", "offsite:latest", "--repo", sftp, "--yes", "--output", "json")
    seconds = time.monotonic() - started
    assert rebuilt.code == 0, rebuilt.out + rebuilt.err
    print(f"bare-host restore from SFTP: {seconds:.1f}s")
    assert rebuilt.json()["ok"]
    assert (new / "kbinfra.yaml").read_bytes() == (stack.dir / "kbinfra.yaml").read_bytes()
    assert (new / "tls" / "cert.pem").read_bytes() == (stack.dir / "tls" / "cert.pem").read_bytes()
    assert read_postgres(stack, ("kb",)) == {"kb": before_pg["kb"]}
    assert read_redis(stack) == before_r
    rebuilt_q = read_qdrant(stack)
    assert rebuilt_q["aliases"] == before_q["aliases"]
    assert_vectors_equal(rebuilt_q, sent)
    assert bare.run("plan").code == 0
