"""Target helpers that need no host: fingerprints, known_hosts lines, the local file store."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import paramiko
import pytest

from kbinfra.commands.deploy import _host_port
from kbinfra.targets.base import FileStore
from kbinfra.targets.local import LocalFileStore
from kbinfra.targets.ssh import (
    REMOTE_SCRIPTS,
    RemoteFileStore,
    SSHAddress,
    SSHOptions,
    SSHTarget,
    append_known_host,
    fingerprint,
    home_relative,
    known_hosts_name,
    known_keys,
    parse_sha256sum,
    remote_command,
    trust_hint,
)


def test_fingerprint_is_openssh_sha256() -> None:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + bytes(range(36))
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(blob) == f"SHA256:{digest}"


def test_known_hosts_names_and_hints() -> None:
    assert known_hosts_name("h", 22) == "h"
    assert known_hosts_name("10.0.0.5", 2222) == "[10.0.0.5]:2222"
    assert trust_hint("h", 22) == "kbinfra ssh trust h"
    assert trust_hint("h", 2222) == "kbinfra ssh trust h:2222"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("h", ("h", 22)),
        ("h:2200", ("h", 2200)),
        ("[::1]:2200", ("::1", 2200)),
        ("[::1]", ("::1", 22)),
    ],
)
def test_host_port(address: str, expected: tuple[str, int]) -> None:
    assert _host_port(address) == expected


def test_append_known_host_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ssh" / "known_hosts"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "k"))
    path.parent.mkdir()
    other = key.get_base64()
    path.write_text(f"other ssh-ed25519 {other}")  # no final newline
    append_known_host(path, "127.0.0.1", 2222, key)
    assert known_keys(path, "127.0.0.1", 2222) == {"ssh-ed25519": key.get_base64()}
    assert known_keys(path, "127.0.0.1", 22) == {}
    assert path.read_text().splitlines()[1].startswith("[127.0.0.1]:2222 ssh-ed25519 ")


def test_local_file_store_is_atomic_private_and_prunes(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path / "deployed")
    assert store.hashes() == {}
    store.put("a/b.conf", b"x", 0o644)
    store.put(".env", b"SECRET=1\n", 0o600)
    assert stat.S_IMODE((tmp_path / "deployed" / ".env").stat().st_mode) == 0o600
    assert store.hashes() == {
        ".env": hashlib.sha256(b"SECRET=1\n").hexdigest(),
        "a/b.conf": hashlib.sha256(b"x").hexdigest(),
    }
    assert store.hashes(["a/b.conf", "missing"]) == {"a/b.conf": hashlib.sha256(b"x").hexdigest()}
    assert store.read("a/b.conf") == b"x" and store.read("nope") is None
    assert not [p for p in (tmp_path / "deployed").rglob("*") if ".kbinfra-tmp-" in p.name]
    store.remove("a/b.conf")
    assert not (tmp_path / "deployed" / "a").exists()
    with pytest.raises(ValueError, match="outside"):
        store.put("../escape", b"", 0o644)


def test_help_and_render_do_not_import_docker_or_paramiko() -> None:
    code = (
        "import sys\n"
        "from kbinfra.cli import app\n"
        "import kbinfra.commands.deploy, kbinfra.targets\n"
        "heavy = sorted(m for m in ('docker', 'paramiko') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == ""


class _ShellTarget(SSHTarget):
    """An SSH target whose remote shell is this machine's ``sh``, started in ``home``: the
    fixed scripts run exactly as ssh would hand them to the host's login shell."""

    def __init__(self, home: Path) -> None:
        super().__init__(SSHAddress("u", "h"), SSHOptions(known_hosts=home / "known_hosts"))
        self.home = home

    def run_script(
        self, script: str, stdin: bytes = b"", *, ok: Sequence[int] = (0,)
    ) -> tuple[int, bytes]:
        done = subprocess.run(
            remote_command(script),
            shell=True,
            cwd=self.home,
            input=stdin,
            capture_output=True,
            check=False,
        )
        assert done.returncode in ok, done.stderr
        return done.returncode, done.stdout


HOSTILE_NAMES = [
    "plain.conf",
    "two  spaces",
    "new\nline",
    "back\\slash",
    "back\\nslash-n",  # a backslash then n: not a newline
    "file\x1cseparator",
    "carriage\rreturn",
    "$(touch pwned)",
    "'quoted'",
    "-dash",
    "sub/dir/x.conf",
]


def test_remote_hashes_survive_hostile_file_names(tmp_path: Path) -> None:
    folder = tmp_path / "deployed"
    expected = {}
    for index, name in enumerate(HOSTILE_NAMES):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"content {index}".encode())
        expected[name] = hashlib.sha256(f"content {index}".encode()).hexdigest()
    (folder / ".kbinfra-tmp-partial").write_bytes(b"an interrupted upload")
    (folder / ".kbinfra").mkdir()
    (folder / ".kbinfra" / "releases.json").write_bytes(b"kbinfra's records, not deployed")
    store = RemoteFileStore(_ShellTarget(tmp_path), str(folder))
    assert store.hashes() == expected
    assert store.hashes(["$(touch pwned)", "missing"]) == {
        "$(touch pwned)": expected["$(touch pwned)"]
    }
    assert not (tmp_path / "pwned").exists()
    assert not (folder / "pwned").exists()


@pytest.mark.parametrize("store_kind", ["local", "remote"])
def test_an_emptied_store_removes_its_folder_and_a_kept_file_keeps_it(
    tmp_path: Path, store_kind: str
) -> None:
    folder = tmp_path / "deployed"
    store: FileStore = (
        LocalFileStore(folder)
        if store_kind == "local"
        else RemoteFileStore(_ShellTarget(tmp_path), str(folder))
    )
    store.put("conf/a.conf", b"a", 0o644)
    store.put(".kbinfra/releases.json", b"[]", 0o600)
    store.remove("conf/a.conf")
    store.remove_folder_if_empty()
    assert (folder / ".kbinfra" / "releases.json").exists()  # history kept: folder kept
    store.remove(".kbinfra/releases.json")
    store.remove_folder_if_empty()
    assert not folder.exists()
    store.remove_folder_if_empty()  # already gone: nothing to do


def test_sha256sum_lines_are_unescaped_once() -> None:
    digest = "a" * 64
    output = f"\\{digest}  ./x\\\\n\\ny\n{digest}  ./two  spaces\n{digest}  ./f\x1cg\n"
    assert parse_sha256sum(output) == {"x\\n\ny": digest, "two  spaces": digest, "f\x1cg": digest}


def test_home_folder_store_stays_relative_to_home(tmp_path: Path) -> None:
    target = _ShellTarget(tmp_path)
    deployed = tmp_path / ".kbinfra" / "kb"
    deployed.mkdir(parents=True)
    (deployed / "a.conf").write_bytes(b"x")
    store = target.file_store("kb")
    assert store.location == "u@h:~/.kbinfra/kb"
    assert store.hashes() == {"a.conf": hashlib.sha256(b"x").hexdigest()}
    assert isinstance(store, RemoteFileStore)
    assert store.root == ".kbinfra/kb"  # every script starts in the home folder
    assert RemoteFileStore(target, "~").location == "u@h:~"
    assert home_relative("/srv/kb") is None
    assert home_relative("~") == home_relative("~/") == "."
    assert home_relative("stacks/kb") == "stacks/kb"


def test_the_local_engine_does_not_import_paramiko(tmp_path: Path) -> None:
    # docker-py imports paramiko for its SSH transport (~0.2 s) though a socket never uses it
    probe = (
        "import sys\n"
        "from kbinfra.errors import KbinfraError\n"
        "from kbinfra.targets.local import local_engine\n"
        "try:\n"
        "    local_engine()\n"
        "except KbinfraError as error:\n"
        "    print(error)\n"
        "print('paramiko' in sys.modules)\n"
        "from docker.transport.sshconn import SSHHTTPAdapter\n"  # the SSH target still can
        "print('paramiko' in sys.modules)\n"
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.splitlines()[1:] == ["False", "True"]
    assert "cannot reach the Docker Engine: no socket there" in done.stdout


def test_taking_the_lock_first_does_not_import_paramiko() -> None:
    # A changing apply's first docker-py call is the lock: the client must be made (through
    # import_docker, as both targets make it) before anything imports docker.errors.
    probe = (
        "import sys\n"
        "from kbinfra.targets.engine import Engine\n"
        "from kbinfra.targets.local import import_docker\n"
        "class Api:\n"
        "    def create_container(self, *a, **k): return {'Id': 'lock'}\n"
        "    def create_host_config(self, **k): return k\n"
        "    def remove_container(self, *a, **k): pass\n"
        "class Client:\n"
        "    api = Api()\n"
        "def connect():\n"
        "    import_docker('unix:///nonexistent.sock')\n"
        "    return Client()\n"
        "with Engine(None, 'kbx', connect=connect).locked():\n"
        "    pass\n"
        "print('docker' in sys.modules, 'paramiko' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "DOCKER_HOST")}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["True", "False"]


@pytest.mark.parametrize(
    ("ssh_config", "imports_invoke"),
    [
        (None, False),
        ("Host kb\n  Port 2222\n", False),
        ('Host *\nMatch host kb exec "test -e /tmp"\n  Port 2222\n', True),
    ],
)
def test_paramiko_loads_invoke_only_for_match_exec(
    tmp_path: Path, ssh_config: str | None, imports_invoke: bool
) -> None:
    # paramiko imports invoke (a third of its import time) only for `Match exec` lines
    if ssh_config is not None:
        (tmp_path / ".ssh").mkdir()
        (tmp_path / ".ssh" / "config").write_text(ssh_config)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kbinfra.targets.ssh import read_known_hosts\n"
        "read_known_hosts(Path('/nonexistent/known_hosts'))\n"
        "print('paramiko' in sys.modules, 'invoke' in sys.modules)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["True", str(imports_invoke)]


def test_every_remote_script_is_fixed_and_quotable() -> None:
    for script in REMOTE_SCRIPTS:
        assert remote_command(script).startswith("sh -c '")
    with pytest.raises(ValueError, match="quote"):
        remote_command("echo 'x'")


def test_remote_store_round_trips_through_the_fixed_scripts(tmp_path: Path) -> None:
    target = _ShellTarget(tmp_path)
    store = target.file_store("kb")
    store.put("conf/a.conf", b"plain", 0o644)
    store.put("secret.env", b"PASSWORD=x\n", 0o600)
    store.put("$(touch pwned)", b"hostile name", 0o644)
    deployed = tmp_path / ".kbinfra" / "kb"
    assert stat.S_IMODE((deployed / "secret.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((deployed / "conf").stat().st_mode) == 0o700
    assert store.read("conf/a.conf") == b"plain" and store.read("missing") is None
    assert store.modes(["conf/a.conf", "secret.env", "missing"]) == {
        "conf/a.conf": 0o644,
        "secret.env": 0o600,
    }
    assert set(store.hashes()) == {"conf/a.conf", "secret.env", "$(touch pwned)"}
    store.remove("conf/a.conf")
    assert not (deployed / "conf").exists() and deployed.is_dir()
    assert not list(tmp_path.rglob("pwned")) and not list(tmp_path.rglob(".kbinfra-tmp-*"))
    for outside in ("../escape", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError, match="outside"):
            store.put(outside, b"", 0o644)
    with pytest.raises(ValueError, match="newline"):
        store.put("new\nline", b"", 0o644)
