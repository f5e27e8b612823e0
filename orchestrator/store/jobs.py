"""JobStore: every submitted job's record, in SQLite (WAL) under FTCTL_HOME.

Every state change is a compare-and-swap on the current state (and, for a running job, on
its fencing token), made in one transaction with an event row, so two controllers, or a
controller and a stale runner, can never both move one job, and the history says who did
what. Records hold the resolved job without secrets: secrets are read by the runner from a
file or the node's environment, never passed through here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from orchestrator.store.resources import Resources
from orchestrator.store.states import JobState, check_transition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL,
    team TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    cpus REAL NOT NULL,
    gpus REAL NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, seq);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job);
"""


def store_file(home: Path) -> Path:
    """The JobStore file of the controller whose FTCTL_HOME is `home` (the adapter registry
    and the refresh schedules live in it too)."""
    return Path(home) / "controller" / "jobs.db"


@dataclass(frozen=True)
class Candidate:
    """A queued job as the scheduler sees it."""
    id: str
    priority: int
    seq: int                 # submission order
    need: Resources
    team: str = ""


class StaleUpdate(Exception):
    """The job is no longer in the state (or under the token) the caller believed."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int
    name: str
    team: str
    priority: int
    state: JobState
    spec: dict[str, Any]
    run_dir: str
    need: Resources
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    token: int
    pid: int | None
    exit_code: int | None
    reason: str
    cancel_requested: bool

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("need", "spec")}
        out.update(state=self.state.value, cpus=self.need.cpus, gpus=self.need.gpus)
        return out

    def candidate(self) -> Candidate:
        return Candidate(self.id, self.priority, self.seq, self.need, self.team)


class JobStore(Protocol):
    def add(self, name: str, spec: dict[str, Any], run_dir: str, need: Resources, priority: int = 0,
            team: str = "", job_id: str | None = None) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord: ...
    def list(self, states: Iterable[JobState] | None = None, limit: int | None = None) -> list[JobRecord]: ...
    def move(self, job_id: str, expected: JobState, target: JobState, reason: str = "",
             token: int | None = None, **fields: Any) -> JobRecord: ...
    def claim(self, job_id: str) -> JobRecord: ...
    def request_cancel(self, job_id: str) -> JobRecord: ...
    def events(self, job_id: str) -> list[dict[str, Any]]: ...


class SQLiteJobStore:
    """JobStore on one SQLite file (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add_schema(self, schema: str) -> None:
        """Tables of the other records kept in this file (the adapter registry, schedules)."""
        with self._lock:
            self._db.executescript(schema)

    def close(self) -> None:
        self._db.close()

    # ----------------------------------------------------------------------- writes

    def add(self, name: str, spec: dict[str, Any], run_dir: str, need: Resources, priority: int = 0,
            team: str = "", job_id: str | None = None) -> JobRecord:
        job_id = job_id or f"{name}-{uuid.uuid4().hex[:8]}"
        with self.transaction() as db:
            self.insert_job(db, job_id, name, spec, run_dir, need, priority, team)
        return self.get(job_id)

    @staticmethod
    def insert_job(db: sqlite3.Connection, job_id: str, name: str, spec: dict[str, Any], run_dir: str,
                   need: Resources, priority: int = 0, team: str = "", reason: str = "submitted") -> None:
        """Queue a job inside the caller's transaction (a schedule firing queues its job and
        records the fired slot in one transaction)."""
        now = time.time()
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        db.execute("INSERT INTO jobs (id, seq, name, team, priority, state, spec, run_dir, cpus, gpus, submitted_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (job_id, seq, name, team, priority, JobState.QUEUED.value, json.dumps(spec), run_dir,
                    need.cpus, need.gpus, now))
        db.execute("INSERT INTO events VALUES (?, ?, NULL, ?, ?)", (job_id, now, JobState.QUEUED.value, reason))

    def move(self, job_id: str, expected: JobState, target: JobState, reason: str = "",
             token: int | None = None, **fields: Any) -> JobRecord:
        """expected -> target, only if the job is still `expected` (and still under `token`)."""
        check_transition(expected, target)
        now = time.time()
        sets = {"state": target.value, **fields}
        if reason:
            sets["reason"] = reason
        sets["finished_at"] = now if target.terminal else None
        clause = "id = ? AND state = ?" + (" AND token = ?" if token is not None else "")
        args = [job_id, expected.value] + ([token] if token is not None else [])
        with self.transaction() as db:
            cur = db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE {clause}",
                             [*sets.values(), *args])
            if cur.rowcount != 1:
                raise StaleUpdate(self._stale_message(db, job_id, expected, token))
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job_id, now, expected.value, target.value, reason))
        return self.get(job_id)

    def claim(self, job_id: str) -> JobRecord:
        """QUEUED -> STARTING with a new fencing token: only the holder of that token may
        move the job on, so a runner from an earlier start can never report for this one."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute("UPDATE jobs SET state = ?, token = token + 1, attempts = attempts + 1, started_at = ?, "
                             "pid = NULL, exit_code = NULL WHERE id = ? AND state = ?",
                             (JobState.STARTING.value, now, job_id, JobState.QUEUED.value))
            if cur.rowcount != 1:
                raise StaleUpdate(self._stale_message(db, job_id, JobState.QUEUED, None))
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?, 'scheduled')",
                       (job_id, now, JobState.QUEUED.value, JobState.STARTING.value))
        return self.get(job_id)

    def request_cancel(self, job_id: str) -> JobRecord:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def set_fields(self, job_id: str, token: int, **fields: Any) -> None:
        """Record facts about the current start (pid) under its token."""
        with self.transaction() as db:
            cur = db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ? AND token = ?",
                             [*fields.values(), job_id, token])
            if cur.rowcount != 1:
                raise StaleUpdate(f"job {job_id} is no longer under token {token}")

    # ------------------------------------------------------------------------ reads

    def get(self, job_id: str) -> JobRecord:
        rows = self.read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = rows[0] if rows else None
        if row is None:
            raise KeyError(f"no job {job_id!r}; `ftctl list` shows the jobs")
        return _record(row)

    def list(self, states: Iterable[JobState] | None = None, limit: int | None = None) -> list[JobRecord]:
        query, args = "SELECT * FROM jobs", []
        if states is not None:
            states = list(states)
            query += f" WHERE state IN ({', '.join('?' for _ in states)})"
            args = [s.value for s in states]
        query += " ORDER BY seq DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [_record(r) for r in self.read(query, args)]

    def queued(self, limit: int | None = None, offset: int = 0) -> list[Candidate]:
        """QUEUED jobs in queue order (priority, then submission); a page of them with `limit`."""
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        rows = self.read("SELECT id, priority, seq, cpus, gpus, team FROM jobs WHERE state = ? "
                          "ORDER BY priority DESC, seq ASC" + page, (JobState.QUEUED.value,))
        return [Candidate(r["id"], r["priority"], r["seq"], Resources(r["cpus"], r["gpus"]), r["team"]) for r in rows]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.read("SELECT * FROM events WHERE job = ? ORDER BY rowid", (job_id,))
        return [dict(r) for r in rows]

    # ---------------------------------------------------------------------- private

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction; BEGIN IMMEDIATE takes SQLite's write lock up front, so
        writers in other processes queue instead of failing halfway."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read(self, query: str, args=()) -> list[sqlite3.Row]:
        with self._lock:  # one connection shared by threads: never read inside another's transaction
            return self._db.execute(query, args).fetchall()

    @staticmethod
    def _stale_message(db, job_id: str, expected: JobState, token: int | None) -> str:
        row = db.execute("SELECT state, token FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return f"no job {job_id!r}"
        if row["state"] != expected.value:
            return f"job {job_id} is {row['state']}, not {expected.value}"
        return f"job {job_id} is now under token {row['token']}, not {token} (a newer start owns it)"


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], seq=row["seq"], name=row["name"], team=row["team"], priority=row["priority"],
        state=JobState(row["state"]), spec=json.loads(row["spec"]), run_dir=row["run_dir"],
        need=Resources(row["cpus"], row["gpus"]), submitted_at=row["submitted_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], attempts=row["attempts"], token=row["token"], pid=row["pid"],
        exit_code=row["exit_code"], reason=row["reason"], cancel_requested=bool(row["cancel_requested"]))
