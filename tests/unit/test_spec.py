"""Profiles and the stack file: validation, one-line errors with lines, sizes, extends."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbinfra.errors import SpecError
from kbinfra.spec.profile import builtin_profile_names, load_profile
from kbinfra.spec.stack import BackupSettings, load_stack
from kbinfra.units import parse_memory_mib, parse_storage_gb
from tests.conftest import edit_stack_file, write_stack_dir


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("16GB", 16384),
        ("16GiB", 16384),
        ("512MB", 512),
        ("1.5G", 1536),
        ("2TB", 2097152),
        (1024, 1024),
    ],
)
def test_memory_sizes_are_binary(text: object, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize(("text", "gb"), [("500GB", 500), ("1TB", 1000), ("2TiB", 2000), (80, 80)])
def test_storage_sizes_are_decimal(text: object, gb: int) -> None:
    assert parse_storage_gb(text) == gb


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", "16 GBs", True, ""])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_memory_mib(bad)


def test_builtin_profiles_load_and_recommended_is_the_guides_table() -> None:
    assert builtin_profile_names() == ["large", "minimum", "recommended"]
    summary = load_profile("recommended").profile.summary()
    guide = {
        "qdrant": (4, 16, 200),
        "postgres": (2, 8, 100),
        "redis": (2, 4, 20),
        "embeddings": (4, 16, 50),
        "unstructured": (2, 8, 20),
        "app": (4, 8, 50),
        "monitoring": (2, 4, 50),
    }
    for name, (cpus, gib, gb) in guide.items():
        assert summary["services"][name] == {
            "cpus": cpus,
            "memory_mb": gib * 1024,
            "storage_gb": gb,
        }
    assert summary["host"] == {
        "cpus": 16,
        "memory_mb": 65536,
        "storage_gb": 1000,
        "disk": "ssd",
        "network_gbps": 1,
    }


def test_recommended_warns_about_headroom_and_overcommit_but_others_do_not() -> None:
    warnings = load_profile("recommended").profile.warnings()
    assert any("OS and page cache" in w for w in warnings)
    assert any("20 CPUs on a 16-CPU host" in w for w in warnings)
    assert load_profile("minimum").profile.warnings() == []
    assert load_profile("large").profile.warnings() == []


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_user_profile_extends_a_builtin_overriding_only_what_it_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.yaml",
        {"extends": "large", "services": {"qdrant": {"memory": "64GB"}}},
    )
    profile = load_profile(str(path)).profile
    large = load_profile("large").profile
    assert profile.name == "mine"
    assert profile.services.qdrant.memory_mb == 65536
    assert profile.services.qdrant.cpus == large.services.qdrant.cpus
    assert profile.services.postgres == large.services.postgres
    assert profile.host == large.host


def test_over_allocated_memory_is_an_error_naming_the_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "tight.yaml",
        {"extends": "minimum", "host": {"memory": "16GB"}},
    )
    with pytest.raises(SpecError, match=r"27648 MiB of memory but the host has 16384 MiB"):
        load_profile(str(path))


def test_unknown_key_gets_line_and_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("extends: minimum\nservices:\n  qdrant:\n    cpus: 2\n    memroy: 8GB\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    message = caught.value.one_line()
    assert f"{path}:5" in message
    assert "did you mean 'memory'?" in message


def test_unknown_profile_lists_the_builtins() -> None:
    with pytest.raises(SpecError, match="use one of large, minimum, recommended"):
        load_profile("medium")


@pytest.mark.parametrize("parent", ["", "missing.yaml", "sub/dir/", ".", "medium"])
def test_a_bad_extends_names_the_extends_line(tmp_path: Path, parent: str) -> None:
    path = tmp_path / "child.yaml"
    path.write_text(f"name: child\nextends: {parent!r}\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    assert caught.value.one_line().startswith(f"{path}:2: ")


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(SpecError, match="loop"):
        load_profile(str(tmp_path / "a.yaml"))


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("host:\n  cpus: 8\n   memory: [\n")
    with pytest.raises(SpecError) as caught:
        load_profile(str(path))
    assert f"{path}:3" in caught.value.one_line()


def test_stack_file_wrong_type_and_unknown_service(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "s")
    stack_file = folder / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    data["services"]["postgress"] = {"enabled": True}
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match="did you mean 'postgres'"):
        load_stack(folder)
    data["services"].pop("postgress")
    data["workload"] = "batch"
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=r"workload: .*'web', 'oltp', 'dw' or 'mixed'"):
        load_stack(folder)


def test_bad_target_is_refused(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "s")
    edit_stack_file(folder, {"target": "ftp://host"})
    with pytest.raises(SpecError, match="use local or ssh://user@host"):
        load_stack(folder)


def test_ssh_target_parts(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "s", overrides={"target": "ssh://deploy@10.0.0.5:2222"})
    spec, _ = load_stack(folder)
    assert spec.ssh_parts() == ("deploy", "10.0.0.5", 2222)


# --- property tests: random and malformed input never escapes as a traceback -------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**7),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=12,
)
_profile_keys = st.sampled_from(["host", "services", "name", "extends", "description", "cpus"])


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(data=st.dictionaries(_profile_keys, _values, max_size=4))
def test_random_profiles_load_or_fail_with_one_line(
    tmp_path: Path, data: dict[str, object]
) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_profile(str(path))
    except SpecError as error:
        assert "\n" not in error.one_line()
        assert str(path) in error.one_line()


_sizes = st.one_of(
    st.integers(-5, 10**6),
    st.builds(
        lambda n, u: f"{n}{u}",
        st.integers(0, 4096),
        st.sampled_from(["GB", "GiB", "MB", "TB", "x", ""]),
    ),
)
_allocation = st.fixed_dictionaries(
    {"cpus": st.one_of(st.floats(-1, 64), st.integers(0, 64)), "memory": _sizes, "storage": _sizes}
)


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    host=st.fixed_dictionaries(
        {"cpus": st.integers(-1, 256), "memory": _sizes, "storage": _sizes},
        optional={"disk": st.sampled_from(["ssd", "nvme", "hdd", "tape"])},
    ),
    services=st.dictionaries(
        st.sampled_from(
            [
                "qdrant",
                "postgres",
                "redis",
                "embeddings",
                "unstructured",
                "app",
                "monitoring",
                "gpu",
            ]
        ),
        _allocation,
        max_size=8,
    ),
)
def test_near_valid_profiles_validate_consistently(
    tmp_path: Path, host: dict[str, object], services: dict[str, object]
) -> None:
    """Whatever hypothesis builds either loads with memory within the host, or is one line."""
    path = tmp_path / "near.yaml"
    path.write_text(yaml.safe_dump({"host": host, "services": services}))
    try:
        profile = load_profile(str(path)).profile
    except SpecError as error:
        assert "\n" not in error.one_line()
        return
    used = sum(a.memory_mb for _, a in profile.services.items())
    assert used <= profile.host.memory_mb


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(text=st.text(alphabet=st.sampled_from(list("ab: -[]{}\n\t'\"#&*!|>%@`0123")), max_size=60))
def test_garbage_yaml_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "garbage.yaml"
    path.write_text(text)
    try:
        load_profile(str(path))
    except SpecError as error:
        assert "\n" not in error.one_line()


@settings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            ["name", "target", "domain", "workload", "profile", "tls", "backup", "app"]
        ),
        _values,
        max_size=3,
    )
)
def test_random_stack_files_load_or_fail_with_one_line(
    tmp_path_factory: pytest.TempPathFactory, overrides: dict[str, object]
) -> None:
    folder = write_stack_dir(tmp_path_factory.mktemp("stack"))
    stack_file = folder / "kbinfra.yaml"
    data = yaml.safe_load(stack_file.read_text())
    data.update(overrides)
    stack_file.write_text(yaml.safe_dump(data))
    try:
        load_stack(folder)
    except SpecError as error:
        assert "\n" not in error.one_line()


def test_every_published_host_port_is_unique_including_extra_ports(tmp_path: Path) -> None:
    folder = write_stack_dir(tmp_path / "s")
    edit_stack_file(folder, {"services": {"qdrant": {"grpc_port": 5432}}})
    with pytest.raises(SpecError, match="services postgres and qdrant both use host port 5432"):
        load_stack(folder)


def test_the_backup_volumes_default_is_not_shared_between_stacks() -> None:
    """It is a plain ``[]`` default (not default_factory=list, slow at start-up)."""
    first, second = BackupSettings(), BackupSettings()
    assert first.volumes == [] and first.volumes is not second.volumes
