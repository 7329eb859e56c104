"""The command line as a user meets it: exit codes, one-line errors, JSON, files on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.conftest import edit_stack_file, fixed_secret, run_kbinfra, write_stack_dir

kbinfra = run_kbinfra


def test_help_lists_the_commands() -> None:
    done = kbinfra("--help")
    assert done.returncode == 0
    for command in ("init", "render", "profiles"):
        assert command in done.stdout


def test_profiles_show_json_shape() -> None:
    done = kbinfra("profiles", "show", "minimum", "--output", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"name", "host", "services"}
    assert set(data["host"]) == {"cpus", "memory_mb", "storage_gb", "disk", "network_gbps"}
    assert data["services"]["qdrant"] == {"cpus": 2, "memory_mb": 8192, "storage_gb": 150}
    assert all(isinstance(v["memory_mb"], int) for v in data["services"].values())


def test_profiles_list_names_all_three() -> None:
    done = kbinfra("profiles", "list", "--output", "json")
    assert [p["name"] for p in json.loads(done.stdout)] == ["large", "minimum", "recommended"]


def test_init_writes_private_secrets_and_key_and_never_overwrites(tmp_path: Path) -> None:
    stack = tmp_path / "kb"
    done = kbinfra("init", "--profile", "minimum", "--dir", str(stack), "--output", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "kbinfra.yaml" in result["created"]
    for private in ("secrets.yaml", "tls/key.pem"):
        assert stat.S_IMODE((stack / private).stat().st_mode) == 0o600
    secrets_before = (stack / "secrets.yaml").read_text()
    (stack / "kbinfra.yaml").write_text((stack / "kbinfra.yaml").read_text() + "# my edit\n")

    again = kbinfra("init", "--profile", "large", "--dir", str(stack), "--output", "json")
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)["kept"]) >= {"kbinfra.yaml", "secrets.yaml"}
    assert (stack / "kbinfra.yaml").read_text().endswith("# my edit\n")
    assert (stack / "secrets.yaml").read_text() == secrets_before

    forced = kbinfra("init", "--profile", "large", "--dir", str(stack), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "profile: large" in (stack / "kbinfra.yaml").read_text()
    assert (stack / "secrets.yaml").read_text() == secrets_before  # secrets survive --force


def test_init_with_image_map_pins_those_images(tmp_path: Path) -> None:
    images = tmp_path / "images.yaml"
    images.write_text("images:\n  postgres: mirror.local:5000/postgres:16.4\n")
    done = kbinfra("init", "--dir", str(tmp_path / "kb"), "--images", str(images))
    assert done.returncode == 0, done.stderr
    assert (
        "image: mirror.local:5000/postgres:16.4" in (tmp_path / "kb" / "kbinfra.yaml").read_text()
    )


def test_init_with_unknown_service_in_image_map_is_one_line(tmp_path: Path) -> None:
    images = tmp_path / "images.yaml"
    images.write_text("images:\n  postgress: x/postgres:16\n")
    done = kbinfra("init", "--dir", str(tmp_path / "kb"), "--images", str(images))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"{images}:2" in done.stderr
    assert "did you mean 'postgres'?" in done.stderr
    assert not (tmp_path / "kb" / "kbinfra.yaml").exists()


def test_render_writes_every_file_with_its_mode_and_no_secret_in_json(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb", "large")
    done = kbinfra("render", "--dir", str(stack), "--output", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    out = Path(report["out"])
    assert out == stack / "rendered"
    for entry in report["files"]:
        path = out / entry["path"]
        assert path.is_file()
        assert f"{stat.S_IMODE(path.stat().st_mode):04o}" == entry["mode"]
    assert "TESTSECRET" not in done.stdout + done.stderr
    env_file = out / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert fixed_secret("unstructured_upstream_key") in env_file.read_text()
    keys = out / "nginx/keys.conf"  # the clients' key: only nginx's key gate holds it
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert fixed_secret("unstructured_api_key") in keys.read_text()


def test_render_is_byte_identical_across_runs(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb", "recommended")
    first, second = tmp_path / "one", tmp_path / "two"
    assert kbinfra("render", "--dir", str(stack), "--out", str(first)).returncode == 0
    assert kbinfra("render", "--dir", str(stack), "--out", str(second)).returncode == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()


def test_render_failure_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    assert kbinfra("render", "--dir", str(stack)).returncode == 0
    before = {p: p.read_bytes() for p in (stack / "rendered").rglob("*") if p.is_file()}
    edit_stack_file(stack, {"services": {"postgres": {"image": "mirror.local/postgres:latest"}}})
    done = kbinfra("render", "--dir", str(stack))
    assert done.returncode != 0
    assert "services.postgres.version" in done.stderr
    assert "Traceback" not in done.stderr
    after = {p: p.read_bytes() for p in (stack / "rendered").rglob("*") if p.is_file()}
    assert after == before
    leftovers = [p.name for p in stack.iterdir() if p.name.startswith(".rendered")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("no-stack", "stack file not found"),
        ("no-secrets", "secrets file not found"),
        ("open-secrets", "secrets file is readable by others"),
        ("missing-secret", "secrets file lacks postgres_password"),
        ("bad-yaml", "stack file is not valid YAML"),
        ("unknown-profile", "unknown profile 'huge'"),
        ("over-allocated", "of memory but the host has"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(
    tmp_path: Path, setup: str, expected: str
) -> None:
    stack = tmp_path / "kb"
    if setup != "no-stack":
        write_stack_dir(stack)
    secrets = stack / "secrets.yaml"
    if setup == "no-secrets":
        secrets.unlink()
    elif setup == "open-secrets":
        secrets.chmod(0o644)
    elif setup == "missing-secret":
        secrets.write_text(
            "\n".join(
                line
                for line in secrets.read_text().splitlines()
                if not line.startswith("postgres_password")
            )
        )
        secrets.chmod(0o600)
    elif setup == "bad-yaml":
        (stack / "kbinfra.yaml").write_text("name: kb\nservices: [\n")
    elif setup == "unknown-profile":
        edit_stack_file(stack, {"profile": "huge"})
    elif setup == "over-allocated":
        profile = tmp_path / "tiny.yaml"
        profile.write_text("extends: minimum\nhost:\n  memory: 8GB\n")
        edit_stack_file(stack, {"profile": str(profile)})
    done = kbinfra("render", "--dir", str(stack))
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = kbinfra("--debug", "render", "--dir", str(tmp_path / "missing"))
    assert done.returncode != 0
    assert "Traceback" in done.stderr
