"""When a refresh schedule fires: a pure decision.

`due()`: given a schedule's cron, the last slot it fired (or skipped) and the time now, which
slot fires now, if any, and how many were missed. Missed slots (the controller was down, or
the clock jumped) follow the schedule's policy:
- `catch-up`: fire once for the newest missed slot (never once per missed slot);
- `skip`: fire nothing for them; the next slot on time fires as usual.
Either way the missed slots are recorded (store.schedules.ScheduleStore.fire() carries the
decision out).
"""

from __future__ import annotations

from orchestrator.cron import parse_cron
from orchestrator.store.schedules import Due

GRACE_S = 120.0
"""A slot noticed within this long of its time counts as on time, not missed."""


def due(cron: str, last_slot: float, now: float, missed_policy: str, grace_s: float = GRACE_S) -> Due:
    """What a schedule does at `now`, having fired (or skipped) up to `last_slot`."""
    schedule = parse_cron(cron)
    newest = schedule.previous_at_or_before(now)
    if newest is None or newest <= last_slot:
        return Due(None, "scheduled", 0, None)
    count = schedule.count_between(last_slot, now)
    on_time = now - newest <= grace_s
    missed = count - 1 if on_time else count
    if on_time:
        return Due(newest, "scheduled", missed, newest)
    if missed_policy == "catch-up":
        return Due(newest, "catch-up", missed, newest)
    return Due(None, "skipped", missed, newest)
