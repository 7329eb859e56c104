"""The conventions operators reach for without thinking: -h, --no-color, KBINFRA_* variables,
the stack folder found like git finds its repository, one --only reading, readable --help,
init's next steps and a kbinfra.yaml that stays editable by hand."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from kbinfra.commands.options import split_names
from kbinfra.errors import KbinfraError
from kbinfra.log_lines import (
    LinePrefixer,
    LogLine,
    LogTime,
    interleave,
    parse_log_time,
    parse_since,
    split_timestamp,
)
from kbinfra.stack_folder import find_stack_dir
from kbinfra.targets.streams import FrameReader
from tests.conftest import edit_stack_file, run_kbinfra, write_stack_dir

NOW = dt.datetime(2026, 12, 1, 14, 0, 0, tzinfo=dt.UTC)


kbinfra = run_kbinfra


# ---------------------------------------------------------------- --since
@pytest.mark.parametrize(
    ("value", "seconds_before"),
    [("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("90s", 90), ("500ms", 0.5)],
)
def test_since_reads_docker_durations(value: str, seconds_before: float) -> None:
    assert parse_since(value, NOW) == pytest.approx(NOW.timestamp() - seconds_before)


def test_since_reads_rfc3339_times_and_unix_timestamps() -> None:
    assert parse_since("2026-12-01T13:00:00Z", NOW) == NOW.timestamp() - 3600
    assert parse_since("2026-12-01T14:00:00+01:00", NOW) == NOW.timestamp() - 3600
    assert parse_since("2026-12-01T13:59:59.5Z", NOW) == NOW.timestamp() - 0.5
    assert parse_since("1764597600", NOW) == 1764597600.0


@pytest.mark.parametrize("value", ["10", "ten minutes", "10x", "m", "2026-13-01", "-5m", ""])
def test_a_bad_since_is_one_error_naming_the_forms(value: str) -> None:
    if value == "10":  # Docker reads a bare number as a Unix time
        assert parse_since(value, NOW) == 10.0
        return
    with pytest.raises(KbinfraError, match="not a duration, an RFC 3339 time") as raised:
        parse_since(value, NOW)
    assert raised.value.where == "--since"
    assert "10m" in (raised.value.fix or "")


def test_a_bad_since_on_the_command_line_is_one_line_exit_2(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra("logs", "--since", "yesterday", "--dir", str(stack))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "--since" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- log lines
def test_log_times_compare_as_numbers_not_text() -> None:
    short = parse_log_time("2026-12-01T14:00:00.1Z")
    longer = parse_log_time("2026-12-01T14:00:00.12Z")
    assert short is not None and longer is not None
    assert short < longer  # as text, ".1Z" sorts after ".12Z"
    assert parse_log_time("2026-12-01T15:00:00.5+01:00") == LogTime(int(NOW.timestamp()), 5 * 10**8)
    assert parse_log_time("not-a-time") is None


def test_lines_interleave_by_time_and_keep_each_containers_order() -> None:
    redis = [
        split_timestamp("redis", "2026-12-01T14:00:01.000000000Z r1"),
        split_timestamp("redis", "no timestamp: stays after r1"),
        split_timestamp("redis", "2026-12-01T14:00:03.000000000Z r3"),
    ]
    postgres = [
        split_timestamp("postgres", "2026-12-01T14:00:00.5Z p0"),
        split_timestamp("postgres", "2026-12-01T14:00:02.000000001Z p2"),
    ]
    order = [line.text for line in interleave([redis, postgres])]
    assert order == ["p0", "r1", "no timestamp: stays after r1", "p2", "r3"]


def test_prefixes_align_and_colour_only_when_asked() -> None:
    line = LogLine("redis", LogTime(int(NOW.timestamp()), 42), "ready")
    plain = LinePrefixer(["postgres", "redis"], colour=False, timestamps=False)
    assert plain(line) == "redis    | ready"
    coloured = LinePrefixer(["postgres", "redis"], colour=True, timestamps=False)
    assert coloured(line) == "\x1b[33mredis    |\x1b[0m ready"
    stamped = LinePrefixer(["redis"], colour=False, timestamps=True)
    assert stamped(line) == "redis | 2026-12-01T14:00:00.000000042Z ready"


def test_docker_frames_split_into_stdout_and_stderr_whatever_the_chunks() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03out" + b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    reader = FrameReader()
    got = [frame for byte in range(len(frames)) for frame in reader.feed(frames[byte : byte + 1])]
    assert got == [(1, b"out"), (2, b"err\n")]


# ---------------------------------------------------------------- --only
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["postgres,redis"], ["postgres", "redis"]),
        (["postgres", "redis"], ["postgres", "redis"]),
        (["postgres, redis", "qdrant"], ["postgres", "redis", "qdrant"]),
        ([",,"], []),
        (None, []),
    ],
)
def test_only_reads_commas_and_repeats_alike(given: list[str] | None, expected: list[str]) -> None:
    assert split_names(given) == expected


@pytest.mark.parametrize("command", [["apply"], ["check"], ["bench"]])
def test_every_only_takes_a_comma_separated_list(tmp_path: Path, command: list[str]) -> None:
    """A misspelt name in a comma list is named: the list was split (not one odd name)."""
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra(
        *command,
        "--only",
        "postgres,rediss",
        "--dir",
        str(stack),
        "--target",
        "ssh://nobody@127.0.0.1:1",
    )
    assert done.returncode == 2, done.stderr
    assert "rediss" in done.stderr and "postgres,rediss" not in done.stderr, done.stderr


# ---------------------------------------------------------------- the stack folder
def test_the_stack_folder_is_found_by_walking_up(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    deeper = stack / "notes" / "today"
    deeper.mkdir(parents=True)
    assert find_stack_dir(deeper) == stack
    assert find_stack_dir(tmp_path) is None
    done = kbinfra("render", "--out", str(tmp_path / "out"), cwd=deeper)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "postgres").is_dir()


def test_no_stack_folder_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    done = kbinfra("status", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"no kbinfra.yaml in {tmp_path} or any folder above it" in done.stderr
    assert "--dir" in done.stderr and "KBINFRA_DIR" in done.stderr


def test_kbinfra_dir_and_output_come_from_the_environment(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra(
        "render",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
        env={"KBINFRA_DIR": str(stack), "KBINFRA_OUTPUT": "json"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["out"] == str(tmp_path / "out")


def test_the_environment_variables_are_shown_in_help() -> None:
    done = kbinfra("apply", "--help")
    for variable in (
        "KBINFRA_DIR",
        "KBINFRA_OUTPUT",
        "KBINFRA_TARGET",
        "KBINFRA_KNOWN_HOSTS",
        "KBINFRA_SSH_IDENTITY",
        "KBINFRA_SSH_PERSIST",
    ):
        assert variable in done.stdout, variable


# ---------------------------------------------------------------- help
def all_commands() -> list[list[str]]:
    from typer.main import get_command  # noqa: PLC0415

    from kbinfra.cli import app  # noqa: PLC0415

    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        children = getattr(command, "commands", {})
        if path:
            found.append(path)
        for name, child in children.items():
            walk(child, [*path, name])

    walk(get_command(app), [])
    return found


COMMANDS = all_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_has_h_readable_metavars_and_an_example(command: list[str]) -> None:
    done = kbinfra(*command, "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout == kbinfra(*command, "--help").stdout
    # Click's type names say nothing a name would not say better.
    typed = re.findall(
        r"<(?:str|path|int|integer|float|list\[[^\]]*\])(?: range)?>"
        r"|\b(?:TEXT|PATH|INTEGER|FLOAT)\b",
        done.stdout,
    )
    assert typed == [], done.stdout
    assert "Example" in done.stdout, done.stdout


def test_the_root_help_offers_completion_and_no_color() -> None:
    done = kbinfra("-h")
    for option in ("--install-completion", "--show-completion", "--no-color", "-h, --help"):
        assert option in done.stdout


# ---------------------------------------------------------------- init
def test_init_prints_the_next_steps_in_order(tmp_path: Path) -> None:
    done = kbinfra("init", "--profile", "minimum", "--dir", str(tmp_path / "kb"))
    assert done.returncode == 0, done.stderr
    steps = done.stdout.split("next steps:\n", 1)[1].splitlines()
    commands = [re.search(r"kbinfra ([a-z]+(?: --check)?)", s) for s in steps]
    named = [m.group(1) for m in commands if m]
    assert named == ["render --check", "plan", "apply", "check", "backup"], steps
    assert all(f"--dir {tmp_path / 'kb'}" in s for s in steps[1:])
    here = kbinfra("init", "--profile", "minimum", cwd=tmp_path / "kb")
    assert "--dir" not in here.stdout.split("next steps:", 1)[1]


def test_init_over_ssh_starts_the_steps_with_trusting_the_host(tmp_path: Path) -> None:
    done = kbinfra(
        "init", "--target", "ssh://deploy@10.0.0.5", "--dir", str(tmp_path / "kb"), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["next_steps"][1].startswith("kbinfra ssh trust")


def test_init_writes_lists_and_maps_as_yaml_blocks(tmp_path: Path) -> None:
    assert kbinfra("init", "--dir", str(tmp_path / "kb")).returncode == 0
    text = (tmp_path / "kb" / "kbinfra.yaml").read_text()
    assert not re.search(r":\s*[\[{]\s*[\"{]", text), "a list or map written as one-line JSON"
    assert "    models:\n      - name: all-MiniLM-L6-v2\n        dimension: 384\n" in text
    assert "    celery_queues:\n      - document_processing\n" in text
    assert not any(line.endswith(" ") for line in text.splitlines())
    data = yaml.safe_load(text)
    assert data["services"]["unstructured"]["strategies"]["pdf"]["strategy"] == "hi_res"


def test_init_force_keeps_the_users_edits_and_adds_new_defaults(tmp_path: Path) -> None:
    stack = tmp_path / "kb"
    assert kbinfra("init", "--profile", "minimum", "--dir", str(stack)).returncode == 0
    path = stack / "kbinfra.yaml"
    text = path.read_text()
    text = text.replace("max_upload_mb: 50", "max_upload_mb: 75  # our scanners send big PDFs")
    text = text.replace("    # Pages per split in parallel mode\n    parallel_split_pages: 1\n", "")
    text = text.replace(
        "      - document_processing\n", "      - document_processing\n      - ocr\n"
    )
    path.write_text(text)

    done = kbinfra(
        "init", "--force", "--domain", "kb.corp.example", "--dir", str(stack), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["merged"] == ["kbinfra.yaml"]
    merged = path.read_text()
    assert "max_upload_mb: 75  # our scanners send big PDFs" in merged
    data = yaml.safe_load(merged)
    assert data["domain"] == "kb.corp.example"  # given now: set
    assert data["profile"] == "minimum"  # not given now: the user's stays
    assert data["services"]["unstructured"]["parallel_split_pages"] == 1  # a default, back
    assert data["services"]["redis-exporter"]["celery_queues"] == ["document_processing", "ocr"]
    again = kbinfra("init", "--force", "--dir", str(stack), "-o", "json")
    assert json.loads(again.stdout)["merged"] == ["kbinfra.yaml"]  # still the user's file
    assert "# our scanners send big PDFs" in path.read_text()


def test_init_force_keeps_a_deployed_app_without_adding_the_upstream_form(
    tmp_path: Path,
) -> None:
    stack = tmp_path / "kb"
    assert kbinfra("init", "--profile", "minimum", "--dir", str(stack)).returncode == 0
    path = stack / "kbinfra.yaml"
    text = path.read_text()
    assert "app:\n  upstream: host.docker.internal:8000\n" in text
    path.write_text(
        text.replace(
            "app:\n  upstream: host.docker.internal:8000\n",
            "app:\n  image: registry.example/kb-api:1.4.2\n  replicas: 2\n",
        )
    )
    done = kbinfra("init", "--force", "--dir", str(stack))
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(path.read_text())
    assert data["app"] == {"image": "registry.example/kb-api:1.4.2", "replicas": 2}
    assert kbinfra("render", "--dir", str(stack)).returncode == 0


def test_the_default_profile_warns_at_init_and_plan_not_every_command(tmp_path: Path) -> None:
    stack = tmp_path / "kb"
    init = kbinfra("init", "--dir", str(stack))  # the default profile: recommended
    assert "warning: profile recommended" in init.stderr
    for command in (["render"], ["backup", "list"], ["profiles", "list"]):
        done = (
            kbinfra(*command, "--dir", str(stack))
            if command[0] != "profiles"
            else kbinfra(*command)
        )
        assert "warning: profile" not in done.stderr, (command, done.stderr)
    shown = kbinfra("profiles", "show", "--dir", str(stack), "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "recommended"
    assert "warning: profile recommended" in shown.stderr


def test_ssh_trust_without_an_address_names_the_stacks_target_or_says_why(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra("ssh", "trust", "--dir", str(stack), "--yes")
    assert done.returncode == 2
    assert "runs on the local engine: there is no SSH host to trust" in done.stderr
    edit_stack_file(stack, {"target": "ssh://u@127.0.0.1:1"})
    refused = kbinfra("ssh", "trust", "--dir", str(stack), "--yes")
    assert refused.returncode == 2
    assert "127.0.0.1:1" in refused.stderr, refused.stderr


# ---------------------------------------------------------------- logs and exec, before any engine
def test_logs_of_an_unknown_service_name_the_enabled_ones(tmp_path: Path) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra("logs", "rediss", "--dir", str(stack), "--target", "ssh://nobody@127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "logs rediss: service is unknown" in done.stderr
    assert "did you mean 'redis'?" in done.stderr and "postgres, qdrant, redis" in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-t", "postgres", "--", "sh"], "exec -t needs a terminal on stdin"),
        (["-e", "NOEQUALS", "postgres", "--", "env"], "--env 'NOEQUALS' is not NAME=VALUE"),
        (["postgres", "--"], "exec needs a command to run"),
    ],
)
def test_exec_refuses_what_cannot_run_in_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    stack = write_stack_dir(tmp_path / "kb")
    done = kbinfra("exec", "--dir", str(stack), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr


def test_a_table_off_a_terminal_is_plain_aligned_text() -> None:
    from kbinfra.ui import plain_table  # noqa: PLC0415

    text = plain_table(
        "stack kb",
        ["service", "result", "detail"],
        [["postgres", "pass", "a\nb"], ["qdrant", "FAIL", ""]],
    )
    assert text.splitlines() == [
        "stack kb",
        "service   result  detail",
        "postgres  pass    a",
        "                  b",
        "qdrant    FAIL",
    ]
    done = kbinfra("profiles", "list")
    assert done.returncode == 0, done.stderr
    assert not set("│━┃─╇") & set(done.stdout)
