"""The no-op record's two hashes, its command lines and its file (kbinfra.noop_fast)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kbinfra import code_fingerprint as fingerprint_module
from kbinfra import noop_fast
from kbinfra.noop_fast import (
    NoopRecord,
    container_essence,
    fast_apply,
    input_key,
    observed,
    read_record,
    write_record,
)
from kbinfra.rotation_state import STATE_FILE
from kbinfra.stack_folder import DEPLOYED_DIR
from kbinfra.targets.local import LocalTarget
from kbinfra.targets.openssh import SSHAddress, SSHOptions
from kbinfra.targets.ssh import SSHTarget
from kbinfra.ui import Output

NOOP_DOCUMENT: dict[str, Any] = {
    "stack": "kb",
    "target": "local",
    "ok": True,
    "summary": "0 created, 0 recreated, 0 started, 0 removed, 0 files uploaded",
    "services": [
        {"service": "redis", "action": "nothing", "outcome": "unchanged", "seconds": 0.0,
         "error": None, "healthy_after_s": None, "logs": [], "rolled_back": False},
    ],
    "files_uploaded": [],
    "files_removed": [],
    "repaired": [],
    "notes": [],
    "release": None,
}  # fmt: skip


SSH_TARGET: dict[str, Any] = {
    "kind": "ssh", "user": "kb", "host": "10.0.0.5", "port": 22,
    "known_hosts": "/s/known_hosts", "identity": None, "deploy_dir": None,
}  # fmt: skip


# ---------------------------------------------------------------- command lines
@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["apply", "--yes", "--dir", "s"], "text"),
        (["apply", "-y", "-d", "s", "-o", "json"], "json"),
        (["apply", "--dir=s", "--output=json", "--yes"], "json"),
        (["--no-color", "apply", "--yes", "--dir", "s"], "text"),
    ],
)
def test_the_command_lines_it_answers(args: list[str], output: str, tmp_path: Path) -> None:
    fast = fast_apply(args, {}, tmp_path)
    assert fast is not None
    assert fast.stack_dir == Path("s")
    assert fast.output is Output(output)
    assert fast.no_color == (args[0] == "--no-color")


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "--dir", "s"],  # asks first
        ["apply", "--yes", "--dir", "s", "--only", "redis"],
        ["apply", "--yes", "--dir", "s", "--target", "local"],
        ["apply", "--yes", "--dir", "s", "--force-unlock"],
        ["apply", "--yes", "--dir", "s", "--allow-oversized-profile"],
        ["apply", "--yes", "--dir", "s", "--timeout", "5"],
        ["apply", "--yes", "--dir", "s", "plan.json"],
        ["apply", "--yes", "--dir"],
        ["apply", "--yes", "--dir", "s", "-o", "yaml"],
        ["plan", "--dir", "s"],
        ["--debug", "apply", "--yes", "--dir", "s"],
        [],
    ],
)
def test_every_other_command_line_runs_in_full(args: list[str], tmp_path: Path) -> None:
    assert fast_apply(args, {}, tmp_path) is None


def test_the_environment_is_read_as_the_full_path_reads_it(tmp_path: Path) -> None:
    env = {"KBINFRA_DIR": "from-env", "KBINFRA_OUTPUT": "json"}
    fast = fast_apply(["apply", "--yes"], env, tmp_path)
    assert fast is not None and fast.stack_dir == Path("from-env") and fast.output is Output.json
    assert fast_apply(["apply", "--yes", "--dir", "s"], {"KBINFRA_TARGET": "x"}, tmp_path) is None


def test_the_stack_folder_is_found_walking_up(tmp_path: Path) -> None:
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    assert fast_apply(["apply", "--yes"], {}, below) is None  # no stack file anywhere up
    (tmp_path / "kbinfra.yaml").write_text("name: kb\n")
    fast = fast_apply(["apply", "--yes"], {}, below)
    assert fast is not None and fast.stack_dir == tmp_path
    fast = fast_apply(["apply", "--yes"], {}, tmp_path)
    assert fast is not None and fast.stack_dir == Path()


def test_it_looks_where_the_full_path_keeps_things(tmp_path: Path) -> None:
    # one copy of each name now (kbinfra.stack_folder): the fast path reads what they write
    assert noop_fast.ROTATION_FILE is STATE_FILE
    store = LocalTarget(tmp_path).file_store("kb")
    assert Path(store.location) == tmp_path / DEPLOYED_DIR


# ---------------------------------------------------------------- the input key
def test_the_key_moves_with_every_input(tmp_path: Path) -> None:
    stack_file, secrets = tmp_path / "kbinfra.yaml", tmp_path / "secrets.yaml"
    stack_file.write_text("name: kb\n")
    secrets.write_text("a: b\n")
    inputs = [str(stack_file), str(secrets)]
    key = input_key(tmp_path, inputs, {})
    assert key is not None and key == input_key(tmp_path, inputs, {"HOME": "/elsewhere"})
    assert input_key(tmp_path, inputs, {"KBINFRA_DEBUG": "1"}) != key
    assert input_key(tmp_path, inputs, {"DOCKER_HOST": "unix:///x"}) != key
    assert input_key(tmp_path, inputs[:1], {}) != key
    secrets.write_text("a: c\n")  # same size, other content
    assert input_key(tmp_path, inputs, {}) != key
    secrets.unlink()
    assert input_key(tmp_path, inputs, {}) is None


def test_the_code_fingerprint_covers_templates_outside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package, templates = tmp_path / "pkg", tmp_path / "templates"
    package.mkdir()
    templates.mkdir()
    (package / "m.py").write_text("x = 1\n")
    template = templates / "t.j2"
    template.write_text("{{ a }}\n")
    monkeypatch.setattr(fingerprint_module, "data_dir", lambda name: templates)
    before = fingerprint_module.code_fingerprint(package)
    template.write_text("{{ a }} and more\n")
    assert fingerprint_module.code_fingerprint(package) != before


def test_in_this_checkout_the_templates_and_profiles_are_fingerprinted() -> None:
    names = {root.name for root in fingerprint_module.code_roots()}
    assert {"kbinfra"} <= names
    for root in fingerprint_module.code_roots()[1:]:
        assert root.name in ("templates", "profiles")


# ---------------------------------------------------------------- what is observed
def _listed(status: str, **changes: Any) -> dict[str, Any]:
    raw = {
        "Id": "c1", "Names": ["/kb-redis"], "State": "running", "Status": status,
        "Image": "redis:7", "ImageID": "sha256:1", "Labels": {"kbinfra.stack": "kb"},
        "Ports": [{"IP": "127.0.0.1", "PrivatePort": 6379, "PublicPort": 6380, "Type": "tcp"}],
    }  # fmt: skip
    raw.update(changes)
    return raw


def test_a_container_is_seen_by_what_the_planner_reads_not_by_its_uptime() -> None:
    same = container_essence(_listed("Up 5 minutes (healthy)"))
    assert container_essence(_listed("Up 2 hours (healthy)")) == same
    assert container_essence(_listed("Up 5 minutes (unhealthy)")) != same
    assert container_essence(_listed("Up 5 minutes (health: starting)")) != same
    assert container_essence(_listed("Exited (0) 1 minute ago", State="exited")) != same
    exited = container_essence(_listed("Exited (0) 1 minute ago", State="exited"))
    assert container_essence(_listed("Exited (137) 1 minute ago", State="exited")) != exited
    for field, value in [
        ("Id", "c2"), ("Image", "redis:8"), ("ImageID", "sha256:2"), ("Names", ["/kb-x"]),
        ("Labels", {"kbinfra.stack": "kb", "kbinfra.config-hash": "x"}), ("Ports", []),
    ]:  # fmt: skip
        assert container_essence(_listed("Up 5 minutes (healthy)", **{field: value})) != same


class _Reads:
    """The engine's answers, as plain data (the hashing is what is tested here)."""

    def __init__(self) -> None:
        self.listed = [_listed("Up 1 minute (healthy)")]
        self.ids = {"redis:7": "sha256:1"}
        self.lock: dict[str, Any] | None = None
        self.cpus = 2

    def container_or_none(self, name: str) -> dict[str, Any] | None:
        assert name == "kb-kbinfra-lock" or name.endswith("lock"), name
        return self.lock

    def containers(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        assert filters == {"label": "kbinfra.stack=kb"}
        return self.listed

    def image_ids(self, refs: list[str]) -> dict[str, str]:
        return {ref: self.ids[ref] for ref in refs if ref in self.ids}

    def info(self) -> dict[str, Any]:
        return {"NCPU": self.cpus, "MemTotal": 8 << 30, "Containers": 99}


def test_the_observation_moves_with_the_target(tmp_path: Path) -> None:
    deployed = tmp_path / DEPLOYED_DIR / "redis"
    deployed.mkdir(parents=True)
    (deployed / "redis.conf").write_text("maxmemory 1mb\n")
    reads, store = _Reads(), LocalTarget(tmp_path).file_store("kb")

    def look() -> str | None:
        return observed(reads, store, "kb", ["redis:7"])

    first = look()
    assert first is not None and look() == first
    reads.ids["redis:7"] = "sha256:9"  # the tag moved
    assert look() != first
    reads.ids["redis:7"] = "sha256:1"
    (deployed / "redis.conf").write_text("maxmemory 2mb\n")  # edited on the target
    assert look() != first
    (deployed / "redis.conf").write_text("maxmemory 1mb\n")
    assert look() == first
    reads.cpus = 4
    assert look() != first
    reads.cpus = 2
    reads.listed = []
    assert look() != first
    reads.lock = {"Config": {"Labels": {}}}
    assert look() is None


# ---------------------------------------------------------------- the record file
def _record(**changes: Any) -> NoopRecord:
    fields: dict[str, Any] = {
        "key": "k", "observed": "o", "stack": "kb", "refs": ["redis:7"],
        "inputs": ["/s/kbinfra.yaml"], "document": NOOP_DOCUMENT, "warnings": ["w"],
        "target": {"kind": "local"},
    }  # fmt: skip
    fields.update(changes)
    return NoopRecord(**fields)


def test_the_record_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / noop_fast.RECORD_FILE
    write_record(path, _record())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_record(path) == _record()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"key": 1},
        {"refs": "redis:7"},
        {"inputs": [1]},
        {"document": []},
        {"document": {**NOOP_DOCUMENT, "ok": False}},
        {"document": {**NOOP_DOCUMENT, "release": 3}},
        {"document": {**NOOP_DOCUMENT, "files_uploaded": [".env"]}},
        {"document": {**NOOP_DOCUMENT, "notes": ["a stale lock was broken"]}},
        {"document": {**NOOP_DOCUMENT, "services": [{"service": "redis", "action": "create",
                                                     "outcome": "created"}]}},
        {"target": {"kind": "swarm"}},
        {"target": {**SSH_TARGET, "port": "22"}},
        {"target": {**SSH_TARGET, "port": True}},
        {"target": {**SSH_TARGET, "command": "rm -rf /"}},
        {"target": {k: v for k, v in SSH_TARGET.items() if k != "known_hosts"}},
    ],
)  # fmt: skip
def test_a_record_that_is_not_a_no_op_by_type_is_ignored(
    change: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "record.json"
    write_record(path, _record())
    document = json.loads(path.read_text())
    document.update(change)
    path.write_text(json.dumps(document))
    assert read_record(path) is None


def test_an_ssh_target_is_recorded_and_opened_again(tmp_path: Path) -> None:
    target = SSHTarget(
        SSHAddress("kb", "10.0.0.5", 2222),
        SSHOptions(known_hosts=Path("/s/kh"), identity=Path("/s/id"), deploy_dir="/srv/kb"),
    )
    described = noop_fast.describe(target)
    assert described is not None
    path = tmp_path / "record.json"
    write_record(path, _record(target=described))
    record = read_record(path)
    assert record is not None
    again = noop_fast.opened(record.target, tmp_path)
    assert isinstance(again, SSHTarget)
    assert (again.address, again.options) == (target.address, target.options)
    assert noop_fast.describe(LocalTarget(tmp_path)) == {"kind": "local"}
    assert noop_fast.describe(object()) is None


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    assert read_record(path) is None
    path.write_text("{not json")
    assert read_record(path) is None
    path.write_text("[]")
    assert read_record(path) is None


def test_no_record_answers_while_a_rotation_is_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(noop_fast, "input_key", lambda *args: "k")
    monkeypatch.setattr(noop_fast, "observed", lambda *args: "o")
    write_record(tmp_path / noop_fast.RECORD_FILE, _record())
    monkeypatch.setenv("DOCKER_HOST", "unix:///nowhere")
    assert noop_fast.answered(["apply", "--yes", "--dir", str(tmp_path)])
    (tmp_path / noop_fast.ROTATION_FILE).write_text("{}")
    assert not noop_fast.answered(["apply", "--yes", "--dir", str(tmp_path)])
    os.unlink(tmp_path / noop_fast.ROTATION_FILE)
    monkeypatch.setattr(noop_fast, "observed", lambda *args: "moved")
    assert not noop_fast.answered(["apply", "--yes", "--dir", str(tmp_path)])
