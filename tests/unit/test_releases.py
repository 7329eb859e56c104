"""Releases: what an apply records, which release a rollback returns to, and the record on
the target read as untrusted input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kbinfra.apply import ApplyResult, ServiceResult
from kbinfra.containers import ObservedContainer
from kbinfra.errors import KbinfraError
from kbinfra.names import LABEL_SERVICE
from kbinfra.plan import desired_services
from kbinfra.releases import (
    KEEP_RELEASES,
    RELEASES_FILE,
    Release,
    choose_release,
    data_volume_moves,
    history_rows,
    image_moves,
    new_release,
    read_releases,
    refuse_data_volume_moves,
    release_stack,
    restore_stack_file,
    worth_recording,
    write_releases,
)
from kbinfra.stack import Stack
from kbinfra.targets.local import LocalFileStore

IMAGE_A = "sha256:" + "a" * 64
IMAGE_B = "sha256:" + "b" * 64


def release_of(stack: Stack, number: int, *, image_id: str = IMAGE_A, **extra: Any) -> Release:
    desired = desired_services(stack, stack.rendered)
    containers = [
        ObservedContainer(
            id=f"{i:064x}",
            name=d.container,
            state="running",
            status="Up",
            image=d.spec.image,
            image_id=image_id,
            labels={LABEL_SERVICE: name},
        )
        for i, (name, d) in enumerate(desired.items())
    ]
    result = ApplyResult(
        stack.spec.name, "local", [ServiceResult("redis", "recreate", "recreated")]
    )
    return new_release(
        number=number,
        stack_file=(stack.dir / "kbinfra.yaml").read_text(),
        profile=stack.profile,
        rendered=stack.rendered,
        desired=desired,
        containers=containers,
        result=result,
        version="0.1.0",
        **extra,
    )


def test_a_release_holds_no_secret_and_round_trips_through_the_target(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("minimum")
    store = LocalFileStore(tmp_path / "deployed")
    assert read_releases(store) == []
    first, second = release_of(stack, 1), release_of(stack, 2, image_id=IMAGE_B)
    write_releases(store, [first, second])
    assert read_releases(store) == [first, second]
    text = (tmp_path / "deployed" / RELEASES_FILE).read_text()
    assert not any(value in text for value in stack.secrets.values())
    assert (tmp_path / "deployed" / RELEASES_FILE).stat().st_mode & 0o777 == 0o600
    assert second.changed == ["redis"]
    assert set(second.services) == set(stack.services)


def test_the_record_is_not_a_deployed_file(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    store = LocalFileStore(tmp_path / "deployed")
    store.put("nginx/nginx.conf", b"x", 0o644)
    write_releases(store, [release_of(make_stack("minimum"), 1)])
    assert set(store.hashes()) == {"nginx/nginx.conf"}


def test_only_the_newest_releases_are_kept(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("minimum")
    store = LocalFileStore(tmp_path / "deployed")
    one = release_of(stack, 1)
    write_releases(store, [one.model_copy(update={"number": n}) for n in range(1, 60)])
    numbers = [r.number for r in read_releases(store)]
    assert numbers == list(range(60 - KEEP_RELEASES, 60))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid"),
        (b'{"format": 2, "releases": []}', "not valid"),
        (b'{"format": 1, "releases": [], "extra": 1}', "not valid"),
        (b'{"format": 1, "releases": [{"number": 1}]}', "not valid"),
        (b"x" * (9 * 1024 * 1024), "more than"),
    ],
)
def test_a_tampered_record_is_one_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    store = LocalFileStore(tmp_path / "deployed")
    store.put(RELEASES_FILE, content, 0o600)
    with pytest.raises(KbinfraError, match=problem) as raised:
        read_releases(store)
    assert RELEASES_FILE in (raised.value.where or "")


def test_numbers_that_do_not_increase_are_refused(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    one = release_of(make_stack("minimum"), 2)
    store = LocalFileStore(tmp_path / "deployed")
    log = {"format": 1, "releases": [json.loads(one.model_dump_json())] * 2}
    store.put(RELEASES_FILE, json.dumps(log).encode(), 0o600)
    with pytest.raises(KbinfraError, match="not increasing"):
        read_releases(store)


def test_rollback_without_a_number_undoes_the_last_change(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    one, two = release_of(stack, 1), release_of(stack, 2)
    partial = release_of(stack, 3).model_copy(update={"failed": ["redis"]})
    four = release_of(stack, 4)
    assert choose_release([one, two], None).number == 1
    assert choose_release([one, two, partial, four], None).number == 2
    assert choose_release([one, two, partial, four], 3).number == 3
    with pytest.raises(KbinfraError, match="no recorded release"):
        choose_release([], None)
    with pytest.raises(KbinfraError, match="no complete release before"):
        choose_release([one], None)
    with pytest.raises(KbinfraError, match="release 7 is not recorded") as raised:
        choose_release([one, two], 7)
    assert "1, 2" in (raised.value.fix or "")


def test_only_references_that_moved_are_moved_back(make_stack: Callable[..., Stack]) -> None:
    release = release_of(make_stack("minimum"), 1)
    refs = {image.ref for image in release.images.values()}
    assert image_moves(release, dict.fromkeys(refs, IMAGE_A)) == {}
    moved = image_moves(release, {**dict.fromkeys(refs, IMAGE_A), sorted(refs)[0]: IMAGE_B})
    assert moved == {sorted(refs)[0]: IMAGE_A}
    assert set(image_moves(release, {})) == refs


def test_what_is_worth_recording() -> None:
    nothing = ApplyResult("kb", "local", [ServiceResult("redis", "nothing", "unchanged")])
    assert not worth_recording(nothing)
    failed = ApplyResult("kb", "local", [ServiceResult("redis", "recreate", "failed")])
    assert not worth_recording(failed)
    files = ApplyResult("kb", "local", files_uploaded=["nginx/nginx.conf"])
    assert worth_recording(files)


def test_history_marks_the_current_release_rollbacks_and_partial_ones(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    rows = history_rows(
        [
            release_of(stack, 1),
            release_of(stack, 2).model_copy(update={"failed": ["qdrant"], "only": ["qdrant"]}),
            release_of(stack, 3, rollback_of=1),
        ]
    )
    assert [row[0] for row in rows] == ["3", "2", "1"]
    assert rows[0][4] == "current; rollback to 1"
    assert rows[1][4] == "partial: qdrant failed; --only qdrant"


def test_a_release_of_another_stack_is_refused(make_stack: Callable[..., Stack]) -> None:
    stack, other = make_stack("minimum"), make_stack("minimum", {"name": "other"})
    assert release_stack(stack, release_of(stack, 1)).spec == stack.spec
    with pytest.raises(KbinfraError, match="is of stack other"):
        release_stack(stack, release_of(other, 1))


def test_a_release_stack_file_is_validated_like_kbinfra_yaml(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("minimum")
    bad = release_of(stack, 1).model_copy(update={"stack_file": "name: [unclosed\n"})
    with pytest.raises(KbinfraError, match="not valid YAML"):
        release_stack(stack, bad)
    worse = release_of(stack, 1).model_copy(update={"profile": {"name": "x"}})
    with pytest.raises(KbinfraError, match="profile is not valid"):
        release_stack(stack, worse)


def test_the_restored_stack_file_keeps_the_one_it_replaced(tmp_path: Path) -> None:
    (tmp_path / "kbinfra.yaml").write_text("name: now\n")
    (tmp_path / "kbinfra.yaml").chmod(0o640)
    assert restore_stack_file(tmp_path, "name: then\n")
    assert (tmp_path / "kbinfra.yaml").read_text() == "name: then\n"
    assert (tmp_path / "kbinfra.yaml").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kbinfra.yaml.before-rollback").read_text() == "name: now\n"
    assert not restore_stack_file(tmp_path, "name: then\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kbinfra.yaml",
        "kbinfra.yaml.before-rollback",
    ]


def test_a_rollback_never_goes_back_across_a_moved_data_volume(
    make_stack: Callable[..., Stack],
) -> None:
    before = make_stack("minimum")
    after = make_stack(
        "minimum", {"name": before.spec.name, "services": {"postgres": {"volume": "data-18"}}}
    )
    assert data_volume_moves(before, before) == {}
    moves = data_volume_moves(before, after)
    assert moves == {
        "postgres": (f"{before.spec.name}-postgres-data", f"{before.spec.name}-postgres-data-18")
    }
    refuse_data_volume_moves(release_of(before, 1), {})
    with pytest.raises(KbinfraError, match="a rollback never moves data") as refused:
        refuse_data_volume_moves(release_of(before, 3), moves)
    assert "release 3 ran postgres on volume" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert "image and volume back in kbinfra.yaml" in str(refused.value)
