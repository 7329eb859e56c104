"""Retention: newest N and/or younger than D days, by manifest date; never the newest."""

from __future__ import annotations

import datetime as dt

import pytest

from kbinfra.backup.retention import Found, retention_plan

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def backup(name: str, days_ago: float, stack: str = "kb") -> Found:
    return Found(name, stack, NOW - dt.timedelta(days=days_ago))


def plan(found: list[Found], keep_last: int, keep_days: int | None):  # type: ignore[no-untyped-def]
    return retention_plan(found, stack="kb", keep_last=keep_last, keep_days=keep_days, now=NOW)


def test_keeps_the_newest_n_when_there_is_no_age_limit() -> None:
    found = [backup(f"b{i}", i) for i in range(5)]
    result = plan(found, keep_last=2, keep_days=None)
    assert result.keep == ("b0", "b1")
    assert result.delete == ("b2", "b3", "b4")


def test_keeps_every_backup_younger_than_the_age_limit_too() -> None:
    found = [backup(f"b{i}", i * 10) for i in range(5)]  # 0, 10, 20, 30, 40 days old
    result = plan(found, keep_last=1, keep_days=25)
    assert result.keep == ("b0", "b1", "b2")
    assert result.delete == ("b3", "b4")


def test_the_newest_backup_stays_even_when_every_one_is_old() -> None:
    found = [backup("old", 400), backup("older", 500)]
    result = plan(found, keep_last=1, keep_days=30)
    assert result.keep == ("old",)
    assert result.delete == ("older",)


def test_order_is_by_manifest_date_not_by_name() -> None:
    # A name from a wrong clock sorts last, but its manifest says it is the newest.
    found = [backup("kb-2020", 0), backup("kb-2030", 5)]
    assert plan(found, keep_last=1, keep_days=None).keep == ("kb-2020",)


def test_partials_unreadable_and_other_stacks_are_never_touched() -> None:
    found = [
        backup("a", 100),
        backup("b", 200),
        Found("c.partial", None, None, partial=True),
        Found("junk", None, None),
        backup("other", 300, stack="another"),
    ]
    result = plan(found, keep_last=1, keep_days=None)
    assert result.keep == ("a",)
    assert result.delete == ("b",)
    assert result.ignored == ("c.partial", "junk", "other")
    assert result.as_json() == {
        "kept": ["a"],
        "deleted": ["b"],
        "ignored": ["c.partial", "junk", "other"],
    }


def test_keep_last_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="newest backup always stays"):
        plan([backup("a", 1)], keep_last=0, keep_days=None)


def test_nothing_to_do_on_an_empty_root() -> None:
    result = plan([], keep_last=3, keep_days=7)
    assert result.keep == () and result.delete == ()
