"""Every string that reaches a template is checked by type when the stack file is loaded.

Each case here rendered into nginx, Redis or Qdrant configuration before: a value that breaks
out of its config context must be refused at load time, with the file and line.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kbinfra.errors import KbinfraError, SpecError
from kbinfra.scaffold import read_image_map, yaml_string
from kbinfra.secrets import load_secrets
from kbinfra.spec.profile import load_profile
from kbinfra.spec.stack import load_stack
from kbinfra.spec.values import (
    check_domain,
    check_image_reference,
    check_target,
    check_upstream,
    parse_host_port,
    parse_ssh_target,
)
from kbinfra.spec.yamlfile import MAX_VALUES, load_yaml, parse_yaml
from kbinfra.targets import open_target
from kbinfra.targets.ssh import SSHAddress, trust_hint
from tests.conftest import edit_stack_file, write_stack_dir
from tests.unit.error_checks import assert_one_line_error, kbinfra

#: Characters that end a value in nginx, Redis, YAML, .env or shell contexts.
BREAKOUT = set("\n\r\t ;{}\"'#`$\\")


@pytest.fixture(scope="module")
def pristine_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stack_dir(tmp_path_factory.mktemp("pristine") / "kb")


@pytest.fixture
def stack_dir(pristine_stack: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    shutil.copytree(pristine_stack, folder)
    return folder


def _load_error(stack_dir: Path, overrides: dict[str, object]) -> str:
    edit_stack_file(stack_dir, overrides)
    with pytest.raises(SpecError) as caught:
        load_stack(stack_dir)
    message = caught.value.one_line()
    assert "\n" not in message
    return message


def _line_of(stack_dir: Path, key: str) -> int:
    lines = (stack_dir / "kbinfra.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.strip().startswith(key))


INJECTED_LOCATION = '"x; location /x { alias /etc/; autoindex on; } #"'


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        ({"domain": INJECTED_LOCATION}, "domain:", "is not a host name"),
        ({"domain": "kb.example.com\n"}, "domain:", "is not a host name"),
        ({"domain": "-kb.example.com"}, "domain:", "is not a host name"),
        ({"domain": "a" * 64 + ".example.com"}, "domain:", "is not a host name"),
        (
            {"app": {"upstream": "h:1; location /tls { alias /etc/nginx/tls/; }"}},
            "upstream:",
            "port",
        ),
        ({"app": {"upstream": "api server:8000"}}, "upstream:", "is not a host name"),
        ({"app": {"upstream": "api:99999"}}, "upstream:", "out of range"),
        ({"app": {"upstream": "::1:8000"}}, "upstream:", "in brackets"),
        ({"target": "ssh://root@203.0.113.9:99999"}, "target:", "out of range"),
        ({"target": "ssh://root@::1"}, "target:", "in brackets"),
        ({"target": "ssh://nohost"}, "target:", "names no user"),
        ({"name": "kb\n"}, "name:", "is not a usable stack name"),
        (
            {"services": {"redis": {"image": "redis:8\nrequirepass x"}}},
            "image:",
            "is not an image reference",
        ),
        (
            {"services": {"qdrant": {"image": "qdrant/qdrant:v1 #"}}},
            "image:",
            "is not an image reference",
        ),
        ({"services": {"redis": {"port": 99999}}}, "port:", "less than or equal to 65535"),
        ({"backup": {"volumes": ["/etc"]}}, "- ", "is not a Docker volume name"),
        ({"backup": {"volumes": ["../up"]}}, "- ", "is not a Docker volume name"),
        ({"backup": {"volumes": ["files\nx"]}}, "- ", "is not a Docker volume name"),
    ],
)
def test_a_value_that_breaks_out_of_its_config_is_refused_with_its_line(
    stack_dir: Path, overrides: dict[str, object], key: str, expected: str
) -> None:
    message = _load_error(stack_dir, overrides)
    assert expected in message
    # The error names the stack file and the line of the offending key.
    path = stack_dir / "kbinfra.yaml"
    lines = path.read_text().splitlines()
    number = int(message.split(":", 2)[1])
    assert message.startswith(f"{path}:{number}: ")
    assert lines[number - 1].strip().startswith(key)


@pytest.mark.parametrize(
    "overrides",
    [
        {"domain": "_"},
        {"domain": "kb-1.internal"},
        {"app": {"upstream": "10.0.0.5:8000"}},
        {"app": {"upstream": "[2001:db8::5]:8000"}},
        {"target": "ssh://deploy@[2001:db8::9]:2222"},
        {"target": "ssh://deploy@203.0.113.9"},
        {"services": {"redis": {"image": "registry.example.com:5000/mirror/redis:8.2.10"}}},
        {"services": {"redis": {"image": "redis@sha256:" + "0" * 64}}},
        {"services": {"redis": {"image": "redis:8.2.10@sha256:" + "a1" * 32}}},
        {"backup": {"volumes": ["kb_uploads", "files.v2"]}},
    ],
)
def test_ordinary_values_still_load(stack_dir: Path, overrides: dict[str, object]) -> None:
    edit_stack_file(stack_dir, overrides)
    load_stack(stack_dir)


def test_an_ipv6_target_is_split_into_host_and_port(stack_dir: Path) -> None:
    edit_stack_file(stack_dir, {"target": "ssh://deploy@[2001:db8::9]:2222"})
    spec, _ = load_stack(stack_dir)
    assert spec.ssh_parts() == ("deploy", "2001:db8::9", 2222)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("203.0.113.9", "203.0.113.9", 22),
        ("node1:2222", "node1", 2222),
        ("[::1]", "::1", 22),
        ("[::1]:2200", "::1", 2200),
    ],
)
def test_host_and_optional_port(text: str, host: str, port: int) -> None:
    assert parse_host_port(text, default_port=22) == (host, port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", "in brackets"),
        ("2001:db8::1:22", "in brackets"),
        ("host:99999", "out of range"),
        ("host:0", "out of range"),
        ("host:\uff12\uff12", "not a number"),
        ("[::1]x", "expected :port"),
        ("[nothost]:22", "bracketed IPv6"),
        ("", "not a host name"),
    ],
)
def test_bad_host_and_port_is_refused(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_host_port(text, default_port=22)


def test_an_upstream_needs_its_port() -> None:
    with pytest.raises(ValueError, match="has no port"):
        check_upstream("api.internal")


def _accepted(check: object, value: str) -> bool:
    try:
        check(value)  # type: ignore[operator]
    except ValueError:
        return False
    return True


@given(st.text(alphabet=st.sampled_from("ab.-_:[]1@/;{}# \n\"'\\$"), max_size=40))
def test_no_accepted_value_can_break_out_of_a_config_context(value: str) -> None:
    for check in (check_domain, check_upstream, check_image_reference, check_target):
        if _accepted(check, value):
            assert not BREAKOUT & set(value), (check, value)


@given(st.text(max_size=30))
def test_no_accepted_target_or_image_holds_a_breakout_character(value: str) -> None:
    for prefix, check in (("ssh://u@", parse_ssh_target), ("", check_image_reference)):
        if _accepted(check, prefix + value):
            assert not BREAKOUT & set(value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("host", "network_gbps", ".inf"),
        ("host", "network_gbps", ".nan"),
        ("host", "network_gbps", "100000"),
        ("host", "memory", ".inf"),
        ("host", "memory", "-.inf"),
        ("host", "memory", "999999999999TB"),
        ("host", "storage", ".inf"),
        ("host", "storage", "1e30"),
    ],
)
def test_sizes_are_finite_and_bounded(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(f"extends: minimum\n{section}:\n  {key}: {value}\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    assert caught.value.one_line().startswith(f"{path}:3: ")


def test_profiles_show_refuses_an_infinite_size_instead_of_printing_bad_json(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text("extends: minimum\nhost:\n  network_gbps: .inf\n")
    done = subprocess.run(
        [sys.executable, "-m", "kbinfra", "profiles", "show", str(path), "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stdout
    assert "Infinity" not in done.stdout
    assert done.stderr.count("\n") == 1 and f"{path}:3" in done.stderr


def _alias_bomb(levels: int, width: int = 10) -> str:
    """``levels`` anchors, each a list of ``width`` aliases to the one before."""
    names = [f"l{level}" for level in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{before}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_duplicate_keys_in_a_profile_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("extends: minimum\nhost:\n  memory: 64GB\n  cpus: 8\n  memory: 8GB\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    assert caught.value.one_line().startswith(
        f"{path}:5: key 'memory' appears twice in profile, on lines 3 and 5"
    )


def test_duplicate_keys_in_the_stack_file_are_refused(stack_dir: Path) -> None:
    path = stack_dir / "kbinfra.yaml"
    text = path.read_text()
    path.write_text(text + "domain: attacker.example\n")
    first = _line_of(stack_dir, "domain:")
    last = len(text.splitlines()) + 1
    with pytest.raises(SpecError, match=f"key 'domain' appears twice .* lines {first} and {last}"):
        load_stack(stack_dir)


def test_duplicate_keys_in_secrets_and_image_map_are_refused(stack_dir: Path) -> None:
    secrets = stack_dir / "secrets.yaml"
    lines = secrets.read_text().splitlines()
    name = next(line.split(":")[0] for line in lines if ":" in line and line[0] != "#")
    secrets.write_text(secrets.read_text() + f"{name}: second-value-kept-silently\n")
    with pytest.raises(SpecError, match=f"key '{name}' appears twice in secrets file"):
        load_secrets(stack_dir, required=())
    images = stack_dir / "images.yaml"
    images.write_text("images:\n  redis: redis:8.2.10\n  redis: redis:7\n")
    with pytest.raises(SpecError, match="key 'redis' appears twice in image map, on lines 2 and 3"):
        read_image_map(images)


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("extends: minimum\ndescription: small\n" + _alias_bomb(7))
    # 10**8 values once expanded; refused from the text's ~90 nodes, without building them.
    with pytest.raises(SpecError, match=f"expands to more than {MAX_VALUES} values"):
        load_profile(str(path))


def test_alias_expansion_is_bounded_just_past_the_limit() -> None:
    small = _alias_bomb(2, width=20)  # 20 + 400 + 8000 values, plus their lists and keys
    parse_yaml(small, Path("small.yaml"), what="profile")
    with pytest.raises(SpecError, match=f"more than {MAX_VALUES} values"):
        parse_yaml(_alias_bomb(2, width=22), Path("big.yaml"), what="profile")


def test_anchors_and_merge_keys_within_the_bound_still_work() -> None:
    text = "base: &base {cpus: 2, memory: 4GB}\nother:\n  <<: *base\n  memory: 8GB\n"
    doc = parse_yaml(text, Path("ok.yaml"), what="profile")
    assert doc.data["other"] == {"cpus": 2, "memory": "8GB"}


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(SpecError, match="alias to a value that contains it"):
        parse_yaml("loop: &loop {again: *loop}\n", Path("loop.yaml"), what="profile")


def test_profiles_show_refuses_the_alias_bomb_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("extends: minimum\n" + _alias_bomb(7))
    done = subprocess.run(
        [sys.executable, "-m", "kbinfra", "profiles", "show", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "through YAML aliases" in done.stderr


def _secrets_file(stack_dir: Path, value: str) -> str:
    path = stack_dir / "secrets.yaml"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("redis_"))
    name = lines[index].split(":")[0]
    lines[index] = f"{name}: {json.dumps(value)}"
    path.write_text("\n".join(lines) + "\n")
    return f"{path}:{index + 1}"


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028"])
def test_a_secret_with_a_control_character_is_refused_without_showing_it(
    stack_dir: Path, bad: str
) -> None:
    where = _secrets_file(stack_dir, f"Zq8Kx{bad}Wv3Jm")
    with pytest.raises(SpecError) as caught:
        load_secrets(stack_dir, required=())
    message = caught.value.one_line()
    assert message.startswith(f"{where}: secret 'redis_")
    assert "non-printable" in message
    assert "Zq8Kx" not in message and "Wv3Jm" not in message


def test_a_secret_with_printable_punctuation_is_kept(stack_dir: Path) -> None:
    _secrets_file(stack_dir, "p@ss w0rd;#{}")
    values = load_secrets(stack_dir, required=())
    assert "p@ss w0rd;#{}" in values.values()


def test_a_secret_name_that_is_not_an_identifier_is_refused(stack_dir: Path) -> None:
    path = stack_dir / "secrets.yaml"
    path.write_text(path.read_text() + '"x\\nINJECTED": value\n')
    with pytest.raises(SpecError, match="is not a secret name"):
        load_secrets(stack_dir, required=())


@pytest.mark.parametrize(
    ("address", "expected"),
    [("h:99999", "out of range"), ("::1", "in brackets"), ("h;x", "not a host name")],
)
def test_ssh_trust_refuses_a_bad_address_before_connecting(
    tmp_path: Path, address: str, expected: str
) -> None:
    known_hosts = tmp_path / "known_hosts"
    command = ["ssh", "trust", address, "--yes", "--known-hosts", str(known_hosts)]
    done = subprocess.run(
        [sys.executable, "-m", "kbinfra", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and done.stderr.count("\n") == 1
    assert not known_hosts.exists()


def test_ipv6_hints_and_urls_use_brackets() -> None:
    assert trust_hint("::1", 2222) == "kbinfra ssh trust [::1]:2222"
    assert trust_hint("::1", 22) == "kbinfra ssh trust [::1]"
    assert SSHAddress("root", "2001:db8::1", 22).url == "ssh://root@[2001:db8::1]:22"
    assert parse_host_port("[::1]:2222", default_port=22) == ("::1", 2222)


def _init(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbinfra", "init", "--dir", str(tmp_path / "new"), *options],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--domain", "kb.example.com\ntarget: ssh://x@203.0.113.9", "is not a host name"),
        ("--domain", "[x", "is not a host name"),
        ("--domain", INJECTED_LOCATION, "is not a host name"),
        ("--target", "ssh://nohost", "names no user"),
        ("--target", "ssh://root@203.0.113.9:99999", "out of range"),
        ("--target", "ssh://root@h\nname: evil", "not a host name"),
    ],
)
def test_init_refuses_a_bad_option_in_one_line_and_writes_nothing(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    done = _init(tmp_path, option, value)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{option}: " in done.stderr and expected in done.stderr
    assert not (tmp_path / "new").exists()


def test_init_refuses_a_bad_image_in_the_image_map(tmp_path: Path) -> None:
    images = tmp_path / "images.yaml"
    images.write_text('images:\n  redis: "redis:8\\nrequirepass x"\n')
    done = _init(tmp_path, "--images", str(images))
    assert done.returncode == 2
    assert f"{images}:2: image for redis" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_init_writes_an_ipv6_target_that_loads_back(tmp_path: Path) -> None:
    done = _init(tmp_path, "--target", "ssh://deploy@[2001:db8::9]:2222", "--domain", "_")
    assert done.returncode == 0, done.stderr
    spec, _ = load_stack(tmp_path / "new")
    assert spec.ssh_parts() == ("deploy", "2001:db8::9", 2222)
    assert spec.domain == "_"


@given(st.text(max_size=40))
def test_a_string_written_into_the_stack_file_reads_back_as_itself(value: str) -> None:
    written = yaml_string(value)
    assert "\n" not in written and "\r" not in written
    assert load_yaml(f"k: {written}\nnext: 1\n") == {"k": value, "next": 1}


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("kb.example.com", "kb.example.com"),
        ("ssh://root@203.0.113.9:22", "ssh://root@203.0.113.9:22"),
        ("qdrant/qdrant:v1.19.0", "qdrant/qdrant:v1.19.0"),
        ("true", '"true"'),
        ("1:20", '"1:20"'),
        ("a\nb: c", '"a\\u000ab: c"'),
        ("-", '"-"'),  # plain, YAML syntax: found by the property test below
        ("[", '"["'),
    ],
)
def test_ordinary_values_stay_plain_and_others_are_quoted(value: str, written: str) -> None:
    assert yaml_string(value) == written


def test_init_escapes_a_profile_path_that_yaml_would_cut_short(tmp_path: Path) -> None:
    folder = tmp_path / "my profiles #1"
    folder.mkdir()
    profile = folder / "mine: v2.yaml"
    profile.write_text("extends: minimum\n")
    done = _init(tmp_path, "--profile", str(profile))
    assert done.returncode == 0, done.stderr
    spec, _ = load_stack(tmp_path / "new")
    assert spec.profile == str(profile)


@pytest.mark.parametrize("bad", ["ssh://root@203.0.113.9:99999", "ssh://root@::1", "ftp://x"])
def test_a_bad_target_option_is_a_one_line_error_naming_the_option(
    stack_dir: Path, bad: str
) -> None:
    spec, _ = load_stack(stack_dir)
    with pytest.raises(KbinfraError) as caught:
        open_target(spec, stack_dir, target=bad)
    assert caught.value.one_line().startswith("--target: ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('name: "x\\nmax_connections = 5"', "U+000A"),
        (f'name: "{"n" * 65}"', "1 to 64 characters"),
        ('description: "clears \\x1b[2J the terminal"', "U+001B"),
        ('description: "two\\nlines"', "U+000A"),
    ],
)
def test_a_profile_name_or_description_that_is_not_one_line_of_text_is_refused(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(f"extends: minimum\n{line}\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    message = caught.value.one_line()
    assert message.startswith(f"{path}:2: ") and expected in message
    assert "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"tls": {"certificate": "tls/cert.pem\nExecStart=/bin/sh"}},
        {"tls": {"key": "tls/\x00key.pem"}},
        {"backup": {"root": "backups\r"}},
        {"deploy": {"dir": "/srv/kb\n"}},
        {"profile": "minimum\x1b]0;owned\x07"},
    ],
)
def test_paths_in_the_stack_file_are_one_line_of_printable_text(
    stack_dir: Path, overrides: dict[str, object]
) -> None:
    message = _load_error(stack_dir, overrides)
    assert "control character" in message and "kbinfra.yaml:" in message


def test_a_postgres_image_without_a_version_in_its_tag_is_one_line(stack_dir: Path) -> None:
    """A mirror's tag (`latest`, a digest-like name) says no major version: kbinfra asks for
    it in one line, exit 2, instead of a ValueError and "run with --debug"."""
    edit_stack_file(stack_dir, {"services": {"postgres": {"image": "mirror.local/pg:latest"}}})
    done = kbinfra("render", "--dir", str(stack_dir))
    assert_one_line_error(done, "cannot tell the PostgreSQL major version")
    assert "services.postgres" in done.stderr
