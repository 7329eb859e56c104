"""``kbinfra init`` writes only inside the stack folder and never overwrites a file it did
not write; a certificate and key of the user's are only read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kbinfra.scaffold import INIT_RECORD
from tests.conftest import FIXTURES, edit_stack_file


def kbinfra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbinfra", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def init(stack: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kbinfra("init", "--profile", "minimum", "--dir", str(stack), "--output", "json", *extra)


def line_of(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    done = init(folder)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A file of the user's outside the stack folder."""
    path = tmp_path / "somefile"
    path.write_text("-----BEGIN CERTIFICATE-----\nthe user's own\n-----END CERTIFICATE-----\n")
    return path


def test_force_keeps_a_stack_file_and_certificate_init_has_no_record_of(
    stack: Path, precious: Path
) -> None:
    """A stack from before the record, or written by hand: --force rewrites none of it."""
    before = precious.read_bytes()
    edit_stack_file(stack, {"tls": {"certificate": "../somefile"}})
    stack_file = (stack / "kbinfra.yaml").read_bytes()
    (stack / INIT_RECORD).unlink()
    done = init(stack, "--force")
    assert done.returncode == 0, done.stderr
    kept = json.loads(done.stdout)["kept_as_yours"]
    assert kept == ["kbinfra.yaml", "../somefile", "tls/key.pem"]
    assert precious.read_bytes() == before
    assert (stack / "kbinfra.yaml").read_bytes() == stack_file


def test_a_missing_key_for_a_certificate_init_did_not_write_is_refused(
    stack: Path, precious: Path
) -> None:
    before = precious.read_bytes()
    edit_stack_file(stack, {"tls": {"certificate": "../somefile", "key": "tls/new-key.pem"}})
    done = init(stack)
    where = f"{stack / 'kbinfra.yaml'}:{line_of(stack / 'kbinfra.yaml', 'new-key.pem')}"
    refused(done, where, "tls.key tls/new-key.pem is missing", "cannot make a matching pair")
    assert precious.read_bytes() == before
    assert not (stack / "tls" / "new-key.pem").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlinked-folder"])
def test_init_does_not_create_a_certificate_outside_the_stack_folder(
    stack: Path, tmp_path: Path, how: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if how == "dotdot":
        tls = {"certificate": "../elsewhere/cert.pem", "key": "../elsewhere/key.pem"}
    elif how == "absolute":
        tls = {"certificate": str(outside / "cert.pem"), "key": str(outside / "key.pem")}
    else:
        (stack / "linked").symlink_to(outside)
        tls = {"certificate": "linked/cert.pem", "key": "linked/key.pem"}
    edit_stack_file(stack, {"tls": tls})
    done = init(stack)
    where = f"{stack / 'kbinfra.yaml'}:{line_of(stack / 'kbinfra.yaml', 'cert.pem')}"
    refused(done, where, "is outside the stack folder")
    assert list(outside.iterdir()) == []


def test_a_certificate_and_key_of_your_own_in_the_stack_survive_force(stack: Path) -> None:
    cert, key = stack / "tls" / "cert.pem", stack / "tls" / "key.pem"
    cert.write_bytes((FIXTURES / "tls" / "cert.pem").read_bytes())
    key.write_bytes((FIXTURES / "tls" / "key.pem").read_bytes())
    done = init(stack, "--force")
    assert done.returncode == 0, done.stderr
    assert {"tls/cert.pem", "tls/key.pem"} <= set(json.loads(done.stdout)["kept_as_yours"])
    assert cert.read_bytes() == (FIXTURES / "tls" / "cert.pem").read_bytes()
    assert key.read_bytes() == (FIXTURES / "tls" / "key.pem").read_bytes()


def test_your_certificate_without_its_key_is_refused_not_replaced(stack: Path) -> None:
    cert = stack / "tls" / "cert.pem"
    cert.write_bytes((FIXTURES / "tls" / "cert.pem").read_bytes())
    (stack / "tls" / "key.pem").unlink()
    refused(init(stack), "tls.key tls/key.pem is missing", "move tls/cert.pem away")
    assert cert.read_bytes() == (FIXTURES / "tls" / "cert.pem").read_bytes()


def test_force_renews_the_certificate_init_wrote(stack: Path) -> None:
    cert = stack / "tls" / "cert.pem"
    before = cert.read_bytes()
    done = init(stack, "--force")
    assert done.returncode == 0, done.stderr
    assert {"tls/cert.pem", "tls/key.pem"} <= set(json.loads(done.stdout)["created"])
    assert cert.read_bytes() != before
    assert (stack / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_a_missing_key_next_to_inits_own_certificate_gives_a_new_pair(stack: Path) -> None:
    (stack / "tls" / "key.pem").unlink()
    done = init(stack)
    assert done.returncode == 0, done.stderr
    assert (stack / "tls" / "key.pem").is_file()


def test_a_stack_file_init_did_not_write_survives_force(tmp_path: Path) -> None:
    stack = tmp_path / "kb"
    stack.mkdir()
    mine = "name: mine\nprofile: minimum\n"
    (stack / "kbinfra.yaml").write_text(mine)
    done = init(stack, "--force")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept_as_yours"] == ["kbinfra.yaml"]
    assert (stack / "kbinfra.yaml").read_text() == mine


def test_force_never_writes_through_a_symlinked_stack_file(stack: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared-kbinfra.yaml"
    elsewhere.write_bytes((stack / "kbinfra.yaml").read_bytes())
    before = elsewhere.read_bytes()
    (stack / "kbinfra.yaml").unlink()
    (stack / "kbinfra.yaml").symlink_to(elsewhere)
    done = init(stack, "--force", "--domain", "other.example.com")
    assert done.returncode == 0, done.stderr
    assert elsewhere.read_bytes() == before
    assert (stack / "kbinfra.yaml").is_symlink()


def test_the_record_lists_what_init_wrote(stack: Path) -> None:
    record = json.loads((stack / INIT_RECORD).read_text())
    assert sorted(record["files"]) == ["kbinfra.yaml", "tls/cert.pem", "tls/key.pem"]
    assert yaml.safe_load((stack / "kbinfra.yaml").read_text())["tls"]["key"] == "tls/key.pem"


def test_a_broken_record_is_one_line(stack: Path) -> None:
    (stack / INIT_RECORD).write_text("[not, a, record")
    refused(init(stack, "--force"), str(stack / INIT_RECORD), "not a record kbinfra init wrote")


def test_init_adds_a_missing_secret_to_the_kept_file_and_says_so(stack: Path) -> None:
    path = stack / "secrets.yaml"
    secrets = yaml.safe_load(path.read_text())
    missing = "unstructured_upstream_key"
    path.write_text(yaml.safe_dump({k: v for k, v in secrets.items() if k != missing}))
    again = init(stack)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert "secrets.yaml" in result["kept"] and "secrets.yaml" not in result["created"]
    assert result["secrets_added"] == [missing]
    kept = yaml.safe_load(path.read_text())
    assert {k: kept[k] for k in secrets if k != missing} == {
        k: v for k, v in secrets.items() if k != missing
    }
    text = kbinfra("init", "--profile", "minimum", "--dir", str(stack))
    assert "created" not in text.stdout, text.stdout
    path.write_text(yaml.safe_dump({k: v for k, v in kept.items() if k != missing}))
    said = kbinfra("init", "--dir", str(stack)).stdout
    assert "created" not in said and "secrets.yaml (its values are never rewritten" in said
    assert "the missing ones added" in said and f"generated secrets: {missing}" in said
