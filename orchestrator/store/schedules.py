"""Refresh schedules and their firings, kept so that every slot fires once.

`ScheduleStore.fire()` queues the refresh job and advances the schedule's last slot in one
SQLite transaction, guarded by a compare-and-swap on the last slot it read and a unique
(schedule, slot) row: two controllers, or one restarted halfway, can never fire a slot twice.
Which slot fires when is decided elsewhere (refresh.schedules.due(), a pure function).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.cron import parse_cron
from orchestrator.spec.models import NAME_PATTERN

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    spec TEXT NOT NULL,
    missed TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    team TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    last_slot REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS firings (
    schedule TEXT NOT NULL,
    slot REAL NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    job_id TEXT,
    parent INTEGER,
    missed INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS firings_once ON firings(schedule, slot) WHERE kind != 'manual';
"""

MISSED_POLICIES = ("catch-up", "skip")
NAME = re.compile(NAME_PATTERN)  # a schedule names its jobs and its adapter


class ScheduleError(Exception):
    """A schedule request that cannot be carried out; the message says why."""


def check_name(name: str) -> None:
    """A schedule (and adapter) name is also a job name and a file name: refuse anything else."""
    if not NAME.match(name):
        raise ScheduleError(f"schedule name {name!r} is not usable as a job and adapter name: use lowercase "
                            "letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)")


@dataclass(frozen=True)
class Due:
    """One slot's outcome, as `ScheduleStore.fire()` records it (refresh.schedules.due() decides it)."""

    fire: float | None
    """The slot to fire now (None: nothing fires)."""

    kind: str
    """`scheduled` (on time), `catch-up` (late, fired once for the missed slots) or `skipped`."""

    missed: int
    """Slots since the last one that were not fired on time (counted up to 10000)."""

    newest: float | None
    """The newest slot up to now: the schedule's new last slot (None: no slot has come)."""


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    spec: dict[str, Any]
    missed: str
    paused: bool
    priority: int
    team: str
    created_at: float
    last_slot: float

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "spec"}
        out["job"] = self.spec.get("name")
        if now is not None:
            out["next_slot"] = None if self.paused else parse_cron(self.cron).next_after(max(now, self.last_slot))
        return out


class ScheduleStore:
    """Schedules and their firings, in `store`'s SQLite file (a SQLiteJobStore)."""

    def __init__(self, store):
        self.store = store
        store.add_schema(SCHEMA)

    def add(self, name: str, cron: str, spec: dict[str, Any], missed: str = "catch-up", priority: int = 0,
            team: str = "", now: float | None = None) -> Schedule:
        check_name(name)
        parse_cron(cron)  # CronError (a ValueError) names what is wrong
        if missed not in MISSED_POLICIES:
            raise ScheduleError(f"missed-firing policy {missed!r} is not one of {', '.join(MISSED_POLICIES)}")
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone():
                raise ScheduleError(f"a schedule named {name} exists; remove it first or pick another name")
            # Slots before the schedule existed were never due: start counting from now.
            db.execute("INSERT INTO schedules VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
                       (name, cron, json.dumps(spec), missed, priority, team, now, now))
        return self.get(name)

    def remove(self, name: str) -> None:
        with self.store.transaction() as db:
            deleted = db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount
        if deleted != 1:
            raise ScheduleError(self._unknown(name))

    def set_paused(self, name: str, paused: bool, now: float | None = None) -> Schedule:
        """Pause or resume. Slots that pass while paused are not missed: resuming starts from now."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            sets = "paused = ?" + ("" if paused else ", last_slot = MAX(last_slot, ?)")
            args = [int(paused)] + ([] if paused else [now])
            updated = db.execute(f"UPDATE schedules SET {sets} WHERE name = ?", [*args, name]).rowcount
        if updated != 1:
            raise ScheduleError(self._unknown(name))
        return self.get(name)

    def get(self, name: str) -> Schedule:
        rows = self.store.read("SELECT * FROM schedules WHERE name = ?", (name,))
        if not rows:
            raise ScheduleError(self._unknown(name))
        return _schedule(rows[0])

    def clocks(self) -> list[tuple[str, str, bool, float]]:
        """(name, cron, paused, last_slot) of every schedule: what deciding "is one due?" needs."""
        return [(r["name"], r["cron"], bool(r["paused"]), r["last_slot"])
                for r in self.store.read("SELECT name, cron, paused, last_slot FROM schedules ORDER BY name")]

    def list(self) -> list[Schedule]:
        return [_schedule(r) for r in self.store.read("SELECT * FROM schedules ORDER BY name")]

    def firings(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.read("SELECT * FROM firings WHERE schedule = ? ORDER BY rowid", (name,))]

    def fire(self, schedule: Schedule, decision: Due, now: float,
             make_job: Callable[[Any], tuple[str | None, int | None, str]]) -> str | None:
        """Carry out `decision` for `schedule` (as read: its last_slot is the expected one).
        `make_job(db)` queues the refresh job inside this transaction and returns (job id or
        None, parent version, note). Returns the job id; None when nothing was queued, or
        when another controller already handled this slot."""
        with self.store.transaction() as db:
            moved = db.execute("UPDATE schedules SET last_slot = ? WHERE name = ? AND last_slot = ? AND paused = 0",
                               (decision.newest, schedule.name, schedule.last_slot)).rowcount
            if moved != 1:
                return None  # fired, paused or removed meanwhile
            job_id, parent, note = (None, None, f"{decision.missed} slot(s) missed, skipped by policy")
            if decision.fire is not None:
                job_id, parent, note = make_job(db)
                if decision.missed:
                    note = f"{note}; {decision.missed} missed slot(s) folded into this firing".lstrip("; ")
            db.execute("INSERT INTO firings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (schedule.name, decision.newest, decision.kind, now, job_id, parent, decision.missed, note))
        return job_id

    def run_now(self, name: str, now: float,
                make_job: Callable[[Any], tuple[str | None, int | None, str]]) -> str | None:
        """Fire outside the cron (does not touch the schedule's slots)."""
        self.get(name)
        with self.store.transaction() as db:
            job_id, parent, note = make_job(db)
            db.execute("INSERT INTO firings VALUES (?, ?, 'manual', ?, ?, ?, 0, ?)",
                       (name, now, now, job_id, parent, note))
        return job_id

    def _unknown(self, name: str) -> str:
        known = [r["name"] for r in self.store.read("SELECT name FROM schedules ORDER BY name")]
        return f"no schedule named {name!r}" + (f"; known: {', '.join(known)}" if known else "")


def _schedule(row) -> Schedule:
    return Schedule(name=row["name"], cron=row["cron"], spec=json.loads(row["spec"]), missed=row["missed"],
                    paused=bool(row["paused"]), priority=row["priority"], team=row["team"],
                    created_at=row["created_at"], last_slot=row["last_slot"])
