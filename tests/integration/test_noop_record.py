"""A no-op ``kbinfra apply`` answered from its record (kbinfra.noop_fast), on the real engine.

The console script (``kbinfra.entry``) is what runs here, as a user runs it: after an apply
that found nothing to do, the next one answers from the record without loading the stack's
models (no pydantic, no Typer, no YAML imported), locally and over SSH, and prints exactly
what the full path printed; any drift of the target or change of an input, and the apply
runs in full and converges as it always did.
"""

from __future__ import annotations

import json
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbinfra import noop_fast
from kbinfra.stack_folder import DEPLOYED_DIR

try:
    from .stack_support import SECRET_MARK, Deployment, Run, new_deployment
    from .testbed_support import Testbed
except ImportError:  # pragma: no cover - run as a plain module
    from stack_support import SECRET_MARK, Deployment, Run, new_deployment  # type: ignore[no-redef]
    from testbed_support import Testbed  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

ENTRY = [sys.executable, "-c", "from kbinfra.entry import main; main()"]
NOTHING = "0 created, 0 recreated, 0 started, 0 removed, 0 files uploaded"
HEAVY = {"pydantic", "pydantic_core", "typer", "click", "yaml", "jinja2", "docker", "paramiko"}
#: where each deployment's files are on its target
DEPLOYED: dict[str, Path] = {}


@pytest.fixture(scope="module", params=["local", "ssh"])
def deployment(
    request: pytest.FixtureRequest, testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("noop-record")
    deployment = new_deployment(request.param, folder, testbed, ["redis", "redis-exporter"], "kbn")
    if request.param == "ssh":
        home = Path(pwd.getpwnam(testbed.ssh.user).pw_dir)
        DEPLOYED[deployment.name] = home / ".kbinfra" / deployment.name
    else:
        DEPLOYED[deployment.name] = folder / DEPLOYED_DIR
    applied = deployment.run("apply", "--yes")
    assert applied.code == 0, applied.err
    yield deployment
    gone = deployment.run("destroy", "--yes", "--delete-data", "--confirm-name", deployment.name)
    assert gone.code == 0, gone.err


def _entry(deployment: Deployment, *args: str) -> tuple[Run, set[str]]:
    """``kbinfra apply --yes ARGS --dir DIR`` through the console script, and the top-level
    packages it imported (``-X importtime``)."""
    proc = subprocess.run(
        [ENTRY[0], "-X", "importtime", *ENTRY[1:], "apply", "--yes", *args,
         "--dir", str(deployment.dir)],
        capture_output=True, text=True, env=deployment.env, check=False, timeout=600,
    )  # fmt: skip
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import"))
    for text in (proc.stdout, err):
        assert SECRET_MARK not in text
    return Run(proc.returncode, proc.stdout, err), imported


def _recorded(deployment: Deployment) -> None:
    """A full no-op apply, which leaves the record the next one answers from."""
    full = deployment.run("apply", "--yes")
    assert full.code == 0, full.err
    assert NOTHING in full.out
    assert (deployment.dir / noop_fast.RECORD_FILE).is_file()


def test_a_recorded_no_op_answers_alike_without_loading_the_stack(
    deployment: Deployment,
) -> None:
    full_text = deployment.run("apply", "--yes")
    full_json = deployment.run("apply", "--yes", "--output", "json")
    assert full_text.code == 0 and full_json.code == 0, full_text.err + full_json.err
    record = deployment.dir / noop_fast.RECORD_FILE
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert SECRET_MARK not in record.read_text()

    fast_text, imported = _entry(deployment)
    assert fast_text.code == 0, fast_text.err
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert (fast_text.out, fast_text.err) == (full_text.out, full_text.err)

    fast_json, imported = _entry(deployment, "--output", "json")
    assert fast_json.code == 0 and not imported & HEAVY
    assert json.loads(fast_json.out) == json.loads(full_json.out)
    assert fast_json.err == full_json.err


def test_a_stopped_container_is_started_again(deployment: Deployment) -> None:
    _recorded(deployment)
    subprocess.run(["docker", "stop", deployment.container("redis-exporter")], check=True,
                   capture_output=True)  # fmt: skip
    run, imported = _entry(deployment, "--output", "json")
    assert run.code == 0, run.err
    assert "pydantic" in imported  # the full path
    outcomes = {r["service"]: r["outcome"] for r in run.json()["services"]}
    assert outcomes["redis-exporter"] == "started"
    assert not (deployment.dir / noop_fast.RECORD_FILE).exists()  # a changing apply drops it
    state = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", deployment.container("redis-exporter")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert state.stdout.strip() == "true"


def test_a_file_edited_on_the_target_is_put_back(deployment: Deployment) -> None:
    _recorded(deployment)
    conf = next((DEPLOYED[deployment.name] / "redis").glob("*.conf"))
    good = conf.read_text()
    conf.write_text(good + "# edited by hand\n")
    run, imported = _entry(deployment, "--output", "json")
    assert run.code == 0, run.err
    assert "pydantic" in imported
    assert any(path.endswith(conf.name) for path in run.json()["files_uploaded"])
    assert conf.read_text() == good


def test_a_changed_stack_file_is_applied(deployment: Deployment) -> None:
    _recorded(deployment)

    def evict(data: dict[str, object]) -> None:
        redis = data["services"]["redis"]  # type: ignore[index]
        redis["maxmemory_policy"] = "allkeys-lru"  # type: ignore[index]
        redis["allow_eviction_of_queues"] = True  # type: ignore[index]

    deployment.edit(evict)
    run, imported = _entry(deployment, "--output", "json")
    assert run.code == 0, run.err
    assert "pydantic" in imported
    changed = {r["service"] for r in run.json()["services"] if r["outcome"] != "unchanged"}
    assert "redis" in changed
    _recorded(deployment)  # and the next no-op is recorded for the new stack file
    again, imported = _entry(deployment)
    assert again.code == 0 and NOTHING in again.out and not imported & HEAVY


def test_a_held_lock_is_left_to_the_full_path(deployment: Deployment) -> None:
    _recorded(deployment)
    lock = f"{deployment.name}-kbinfra-lock"
    subprocess.run(["docker", "create", "--name", lock, "--label", "kbinfra.stack=other",
                    deployment.spec["services"]["redis"]["image"]],
                   check=True, capture_output=True)  # fmt: skip
    try:
        run, imported = _entry(deployment)
        assert "pydantic" in imported, run.out
    finally:
        subprocess.run(["docker", "rm", "-f", lock], check=False, capture_output=True)
