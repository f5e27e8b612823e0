"""Standard 5-field cron expressions, evaluated in UTC on epoch seconds.

Fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 (or JAN-DEC), day-of-week 0-7
(SUN-SAT; 0 and 7 are both Sunday). Each field is a comma list of `*`, `N`, `A-B`, `*/S`, `A-B/S`
or `N/S` (meaning N-max/S); names are case-insensitive. Nicknames: @yearly (@annually), @monthly,
@weekly, @daily (@midnight), @hourly.

Day rule (Vixie cron): when day-of-month and day-of-week are both restricted (neither field starts
with `*`), a day matches if EITHER matches; otherwise both must match. So `0 0 13 * 5` fires on the
13th and on every Friday, while `0 0 */2 * 5` fires on odd-numbered Fridays only.

A slot is a whole UTC minute; searches skip whole months, days and hours that cannot match.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache

# How far next_after / previous_at_or_before look. 28 years covers the Gregorian weekday cycle, so any
# day/weekday combination that can occur at all occurs within it (Feb 29 alone can be 8 years apart).
HORIZON_YEARS = 28
_HORIZON = timedelta(days=366 * HORIZON_YEARS)
_MINUTE = timedelta(minutes=1)

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {n: i for i, n in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_DAY_NAMES = {n: i for i, n in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
# The most days each month can have (February in a leap year).
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class CronError(ValueError):
    """A cron expression that is malformed or can never fire."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 7, _DAY_NAMES),
)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression. Weekdays are 0=Sunday..6=Saturday."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    @cached_property
    def _minute_list(self) -> list[int]:
        return sorted(self.minutes)

    @cached_property
    def _hour_list(self) -> list[int]:
        return sorted(self.hours)

    def _day_matches(self, dt: datetime) -> bool:
        day_ok = dt.day in self.days
        weekday_ok = (dt.weekday() + 1) % 7 in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def matches(self, t: float) -> bool:
        """Whether the UTC minute holding `t` (seconds ignored) is a slot."""
        dt = _minute_of(t)
        return (dt.month in self.months and self._day_matches(dt)
                and dt.hour in self.hours and dt.minute in self.minutes)

    def _first_from(self, dt: datetime, end: datetime) -> datetime | None:
        """The first slot at or after the whole minute `dt`, or None if none is at or before `end`."""
        while dt <= end:
            if dt.month not in self.months:
                dt = (dt.replace(day=28, hour=0, minute=0) + timedelta(days=4)).replace(day=1)
            elif not self._day_matches(dt):
                dt = dt.replace(hour=0, minute=0) + timedelta(days=1)
            elif dt.hour not in self.hours:
                i = bisect_left(self._hour_list, dt.hour)
                if i == len(self._hour_list):
                    dt = dt.replace(hour=0, minute=0) + timedelta(days=1)
                else:
                    dt = dt.replace(hour=self._hour_list[i], minute=0)
            else:
                i = bisect_left(self._minute_list, dt.minute)
                if i < len(self._minute_list):
                    found = dt.replace(minute=self._minute_list[i])
                    return found if found <= end else None
                dt = dt.replace(minute=0) + timedelta(hours=1)
        return None

    def _last_from(self, dt: datetime, start: datetime) -> datetime | None:
        """The latest slot at or before the whole minute `dt`, or None if none is at or after `start`."""
        while dt >= start:
            if dt.month not in self.months:
                dt = dt.replace(day=1, hour=0, minute=0) - _MINUTE
            elif not self._day_matches(dt):
                dt = dt.replace(hour=0, minute=0) - _MINUTE
            elif dt.hour not in self.hours:
                i = bisect_right(self._hour_list, dt.hour)
                if i == 0:
                    dt = dt.replace(hour=0, minute=0) - _MINUTE
                else:
                    dt = dt.replace(hour=self._hour_list[i - 1], minute=59)
            else:
                i = bisect_right(self._minute_list, dt.minute)
                if i > 0:
                    found = dt.replace(minute=self._minute_list[i - 1])
                    return found if found >= start else None
                dt = dt.replace(minute=0) - _MINUTE
        return None

    def next_after(self, t: float) -> float:
        """The first slot strictly after `t`, as epoch seconds.

        Raises CronError if none falls within HORIZON_YEARS (parse_cron rejects schedules that never fire).
        """
        start = _minute_of(t) + _MINUTE
        found = self._first_from(start, start + _HORIZON)
        if found is None:
            raise CronError(f"cron {self.expr!r}: no slot within {HORIZON_YEARS} years "
                            f"after {start.isoformat()}")
        return found.timestamp()

    def previous_at_or_before(self, t: float) -> float | None:
        """The latest slot at or before `t` (the minute holding `t` counts), or None within HORIZON_YEARS."""
        end = _minute_of(t)
        found = self._last_from(end, end - _HORIZON)
        return None if found is None else found.timestamp()

    def slots_between(self, after: float, until: float, cap: int = 10000) -> list[float]:
        """The earliest (at most `cap`) slots s with after < s <= until, as epoch seconds."""
        end = _minute_of(until)
        dt = _minute_of(after) + _MINUTE
        out: list[float] = []
        while len(out) < cap:
            found = self._first_from(dt, end)
            if found is None:
                break
            out.append(found.timestamp())
            dt = found + _MINUTE
        return out

    def count_between(self, after: float, until: float, cap: int = 10000) -> int:
        """How many slots s have after < s <= until, counting at most `cap`."""
        return len(self.slots_between(after, until, cap))


def _minute_of(t: float) -> datetime:
    """The whole UTC minute holding epoch second `t`."""
    return datetime.fromtimestamp(math.floor(t / 60) * 60, tz=timezone.utc)


def _value(expr: str, field: _Field, text: str) -> int:
    upper = text.upper()
    if upper in field.names:
        return field.names[upper]
    if not re.fullmatch(r"[0-9]+", text):
        expected = f"a number or a name ({', '.join(field.names)})" if field.names else "a number"
        raise CronError(f"cron {expr!r}: {field.name} {text!r} is not {expected}")
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronError(f"cron {expr!r}: {field.name} {value} is outside {field.low}-{field.high}")
    return value


def _item(expr: str, field: _Field, item: str) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not re.fullmatch(r"[0-9]+", step_text):
            raise CronError(f"cron {expr!r}: {field.name} step {step_text!r} in {item!r} is not a number")
        step = int(step_text)
        if step == 0:
            raise CronError(f"cron {expr!r}: {field.name} step 0 in {item!r} must be at least 1")
    if base == "*":
        return range(field.low, field.high + 1, step)
    first, dash, last = base.partition("-")
    low = _value(expr, field, first)
    if dash:
        high = _value(expr, field, last)
        if low > high:
            raise CronError(f"cron {expr!r}: {field.name} range {base!r} has its start after its end")
    else:
        high = field.high if slash else low
    return range(low, high + 1, step)


def _field(expr: str, field: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"cron {expr!r}: {field.name} {text!r} has an empty item")
        values.update(_item(expr, field, item))
    return frozenset(values)


@lru_cache(maxsize=4096)  # a controller asks for the same few expressions every tick
def parse_cron(expr: str) -> Cron:
    """Parse a 5-field cron expression or @nickname; raise CronError naming the bad field."""
    expr = expr.strip()
    text = expr
    if expr.startswith("@"):
        if expr.lower() not in _NICKNAMES:
            raise CronError(f"cron {expr!r}: unknown nickname (use one of {', '.join(_NICKNAMES)})")
        text = _NICKNAMES[expr.lower()]
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise CronError(f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                        f"got {len(parts)}")
    minutes, hours, days, months, weekdays = (_field(expr, f, p) for f, p in zip(_FIELDS, parts))
    cron = Cron(
        expr=expr,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=frozenset(d % 7 for d in weekdays),
        day_restricted=not parts[2].startswith("*"),
        weekday_restricted=not parts[4].startswith("*"),
    )
    both_restricted = cron.day_restricted and cron.weekday_restricted
    if not both_restricted and not any(min(days) <= _MONTH_DAYS[m] for m in months):
        raise CronError(f"cron {expr!r}: day-of-month {parts[2]} never occurs in month {parts[3]}")
    return cron
