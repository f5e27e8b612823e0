"""Cron expressions for scheduled refreshes: parsing, matching, and slot search (all UTC)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from orchestrator.cron import Cron, CronError, parse_cron

def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0) -> float:
    """Epoch seconds of a UTC wall-clock time."""
    return datetime(year, month, day, hour, minute, tzinfo=timezone.utc).timestamp() + second


def test_daily_next_after_crosses_a_day_boundary():
    cron = parse_cron("0 3 * * *")
    assert cron.next_after(ts(2026, 1, 5, 2, 59)) == ts(2026, 1, 5, 3)
    assert cron.next_after(ts(2026, 1, 5, 3, 1)) == ts(2026, 1, 6, 3)
    assert cron.next_after(ts(2026, 1, 5, 23, 59, 59.9)) == ts(2026, 1, 6, 3)


def test_next_after_is_strictly_after_and_ignores_seconds():
    cron = parse_cron("0 3 * * *")
    assert cron.next_after(ts(2026, 1, 5, 3)) == ts(2026, 1, 6, 3)
    assert cron.next_after(ts(2026, 1, 5, 3, 0, 30)) == ts(2026, 1, 6, 3)
    assert cron.next_after(ts(2026, 1, 5, 2, 59, 59.5)) == ts(2026, 1, 5, 3)
    assert cron.matches(ts(2026, 1, 5, 3, 0, 45.5))
    assert not cron.matches(ts(2026, 1, 5, 3, 1))
    assert not cron.matches(ts(2026, 1, 5, 2, 59, 59.9))


def test_every_fifteen_minutes():
    cron = parse_cron("*/15 * * * *")
    assert cron.minutes == {0, 15, 30, 45}
    t = ts(2026, 1, 5, 10, 7, 30)
    steps = []
    for _ in range(4):
        t = cron.next_after(t)
        steps.append(t)
    assert steps == [
        ts(2026, 1, 5, 10, 15), ts(2026, 1, 5, 10, 30), ts(2026, 1, 5, 10, 45), ts(2026, 1, 5, 11)]
    assert parse_cron("5/15 * * * *").minutes == {5, 20, 35, 50}


def test_ranges_lists_and_stepped_ranges():
    cron = parse_cron("0,30 9-17/4 * * *")
    assert cron.minutes == {0, 30}
    assert cron.hours == {9, 13, 17}
    assert cron.next_after(ts(2026, 1, 5, 9, 30)) == ts(2026, 1, 5, 13)
    assert cron.next_after(ts(2026, 1, 5, 17, 30)) == ts(2026, 1, 6, 9)
    assert parse_cron("0 0 1-3,10,20-22 * *").days == {1, 2, 3, 10, 20, 21, 22}
    assert parse_cron("0 0 * * 5-7").weekdays == {5, 6, 0}


def test_month_and_day_names_are_case_insensitive():
    weekdays = parse_cron("0 9 * * mon-FRI")
    assert weekdays.weekdays == {1, 2, 3, 4, 5}
    # 2026-01-03 is a Saturday: the next weekday morning is Monday the 5th.
    assert weekdays.next_after(ts(2026, 1, 3, 10)) == ts(2026, 1, 5, 9)
    months = parse_cron("0 12 1 jun,Dec *")
    assert months.months == {6, 12}
    assert months.next_after(ts(2026, 1, 15)) == ts(2026, 6, 1, 12)
    assert months.next_after(ts(2026, 6, 1, 12)) == ts(2026, 12, 1, 12)
    assert months.next_after(ts(2026, 12, 1, 12)) == ts(2027, 6, 1, 12)


def test_seven_is_sunday():
    cron = parse_cron("0 0 * * 7")
    assert cron.weekdays == {0}
    assert cron.next_after(ts(2026, 1, 1)) == ts(2026, 1, 4)  # 2026-01-04 is a Sunday


def test_day_and_weekday_both_restricted_match_either():
    # January 2026: Fridays are the 2nd, 9th, 16th, 23rd and 30th; the 13th is a Tuesday.
    cron = parse_cron("0 0 13 * 5")
    assert cron.day_restricted and cron.weekday_restricted
    days = [ts(2026, 1, d) for d in (2, 9, 13, 16, 23, 30)]
    assert cron.slots_between(ts(2025, 12, 31), ts(2026, 1, 31)) == days
    assert cron.matches(ts(2026, 1, 13)) and cron.matches(ts(2026, 1, 16))
    assert not cron.matches(ts(2026, 1, 14))


def test_day_field_starting_with_star_needs_both():
    # Vixie cron: `*/2` counts as unrestricted, so it is odd days AND Fridays.
    cron = parse_cron("0 0 */2 * 5")
    assert not cron.day_restricted and cron.weekday_restricted
    assert cron.slots_between(ts(2025, 12, 31), ts(2026, 1, 31)) == [ts(2026, 1, 9), ts(2026, 1, 23)]


def test_only_weekday_restricted():
    cron = parse_cron("0 0 * * 1")
    assert cron.slots_between(ts(2025, 12, 31), ts(2026, 1, 31)) == [ts(2026, 1, d) for d in (5, 12, 19, 26)]


def test_feb_29_fires_in_leap_years_only():
    cron = parse_cron("0 0 29 2 *")
    assert cron.next_after(ts(2026, 3, 1)) == ts(2028, 2, 29)
    assert cron.next_after(ts(2028, 2, 29)) == ts(2032, 2, 29)
    # 2100 is not a leap year: eight years between Feb 29ths.
    assert cron.next_after(ts(2096, 3, 1)) == ts(2104, 2, 29)
    assert cron.previous_at_or_before(ts(2103, 12, 31)) == ts(2096, 2, 29)


def test_day_31_in_a_month_list_skips_short_months():
    cron = parse_cron("0 0 31 1-4 *")
    assert cron.next_after(ts(2026, 1, 31)) == ts(2026, 3, 31)
    assert cron.next_after(ts(2026, 3, 31)) == ts(2027, 1, 31)


def test_impossible_day_is_fine_when_weekday_can_match():
    # Both restricted: Feb 31 never comes, but Mondays in February do (2026-02-02 is one).
    cron = parse_cron("0 0 31 2 1")
    assert cron.next_after(ts(2026, 1, 1)) == ts(2026, 2, 2)


def test_year_boundary():
    assert parse_cron("0 0 * * *").next_after(ts(2026, 12, 31, 23, 59)) == ts(2027, 1, 1)
    assert parse_cron("* * * * *").next_after(ts(2026, 12, 31, 23, 59, 30)) == ts(2027, 1, 1)
    assert parse_cron("59 23 31 12 *").previous_at_or_before(ts(2027, 1, 1)) == ts(2026, 12, 31, 23, 59)


def test_previous_at_or_before():
    cron = parse_cron("0 3 * * *")
    assert cron.previous_at_or_before(ts(2026, 1, 5, 3)) == ts(2026, 1, 5, 3)
    assert cron.previous_at_or_before(ts(2026, 1, 5, 3, 0, 30)) == ts(2026, 1, 5, 3)
    assert cron.previous_at_or_before(ts(2026, 1, 5, 2, 59, 59)) == ts(2026, 1, 4, 3)
    assert parse_cron("*/15 9 * * *").previous_at_or_before(ts(2026, 1, 5, 8)) == ts(2026, 1, 4, 9, 45)
    assert parse_cron("@yearly").previous_at_or_before(ts(2026, 6, 1)) == ts(2026, 1, 1)


def test_slots_between_is_after_exclusive_until_inclusive():
    cron = parse_cron("*/15 * * * *")
    quarters = [(0, 15), (0, 30), (0, 45), (1, 0), (1, 15), (1, 30), (1, 45), (2, 0)]
    slots = [ts(2026, 1, 5, h, m) for h, m in quarters]
    assert cron.slots_between(ts(2026, 1, 5), ts(2026, 1, 5, 2)) == slots
    assert cron.count_between(ts(2026, 1, 5), ts(2026, 1, 5, 2)) == 8
    assert cron.slots_between(ts(2026, 1, 5, 0, 15, 10), ts(2026, 1, 5, 0, 44, 59)) == [ts(2026, 1, 5, 0, 30)]
    assert cron.slots_between(ts(2026, 1, 5, 2), ts(2026, 1, 5, 1)) == []
    assert cron.count_between(ts(2026, 1, 5, 0, 1), ts(2026, 1, 5, 0, 14)) == 0


def test_slots_between_cap_keeps_the_earliest():
    cron = parse_cron("*/15 * * * *")
    assert cron.slots_between(ts(2026, 1, 5), ts(2026, 1, 5, 2), cap=3) == [
        ts(2026, 1, 5, 0, 15), ts(2026, 1, 5, 0, 30), ts(2026, 1, 5, 0, 45)]
    assert cron.count_between(ts(2026, 1, 5), ts(2026, 1, 6), cap=5) == 5
    assert cron.count_between(ts(2026, 1, 5), ts(2026, 1, 6)) == 96


@pytest.mark.parametrize("nickname,fields", [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@MIDNIGHT", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
])
def test_nicknames(nickname, fields):
    cron, plain = parse_cron(nickname), parse_cron(fields)
    assert cron.expr == nickname
    assert (cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays) == (
        plain.minutes, plain.hours, plain.days, plain.months, plain.weekdays)


def test_weekly_fires_on_sunday_midnight():
    assert parse_cron("@weekly").next_after(ts(2026, 1, 7, 12)) == ts(2026, 1, 11)


@pytest.mark.parametrize("expr,message", [
    ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("0 3 * *", "got 4"),
    ("0 3 * * * *", "got 6"),
    ("0,,5 * * * *", "minute '0,,5' has an empty item"),
    ("0 3, * * *", "hour '3,' has an empty item"),
    ("0 3 * * 8", "cron '0 3 * * 8': day-of-week 8 is outside 0-7"),
    ("60 * * * *", "minute 60 is outside 0-59"),
    ("0 24 * * *", "hour 24 is outside 0-23"),
    ("0 0 0 * *", "day-of-month 0 is outside 1-31"),
    ("0 0 32 * *", "day-of-month 32 is outside 1-31"),
    ("0 0 1 13 *", "month 13 is outside 1-12"),
    ("0 5-3 * * *", "hour range '5-3' has its start after its end"),
    ("0 0 * * SAT-SUN", "day-of-week range 'SAT-SUN' has its start after its end"),
    ("*/0 * * * *", "minute step 0 in '*/0' must be at least 1"),
    ("0 1-5/0 * * *", "hour step 0 in '1-5/0' must be at least 1"),
    ("*/ * * * *", "minute step '' in '*/' is not a number"),
    ("0 x * * *", "hour 'x' is not a number"),
    ("0 0 * FOO *", "month 'FOO' is not a number or a name (JAN, FEB"),
    ("0 0 * * FUNDAY", "day-of-week 'FUNDAY' is not a number or a name (SUN, MON"),
    ("0 0 30 2 *", "day-of-month 30 never occurs in month 2"),
    ("0 0 31 4,6 *", "day-of-month 31 never occurs in month 4,6"),
    ("0 0 30,31 FEB *", "day-of-month 30,31 never occurs in month FEB"),
    ("@fortnightly", "cron '@fortnightly': unknown nickname (use one of @yearly"),
])
def test_rejections_name_the_problem(expr, message):
    with pytest.raises(CronError) as info:
        parse_cron(expr)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_search_is_bounded_when_no_slot_exists():
    # Not reachable through parse_cron (it rejects this), but the search must still stop.
    never = Cron("0 0 30 2 *", frozenset({0}), frozenset({0}), frozenset({30}), frozenset({2}),
                 frozenset(range(7)), day_restricted=True, weekday_restricted=False)
    with pytest.raises(CronError, match="no slot within 28 years after 2026-01-01T00:01:00"):
        never.next_after(ts(2026, 1, 1))
    assert never.previous_at_or_before(ts(2026, 1, 1)) is None
    assert never.slots_between(ts(2026, 1, 1), ts(2030, 1, 1)) == []
