"""The adapter registry: every trained adapter version, its lineage, and which one is promoted.

Kept in the JobStore's SQLite file, beside the jobs that made the versions. A version is
immutable once registered except for its verdict (`registered` -> `promoted` | `rejected`);
which version is served is a separate pointer per name (`adapter_heads`), moved only by a
compare-and-swap on the version it expects, so a refresh that finishes after someone else
promoted or rolled back never overwrites their decision. Every move is an `adapter_events`
row: the promotion history is read back, never reconstructed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS adapter_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent INTEGER,
    job_id TEXT,
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    record TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS adapter_heads (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS adapter_events (
    name TEXT NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS adapter_events_name ON adapter_events(name);
"""

VERDICTS = ("registered", "promoted", "rejected")


class RegistryError(Exception):
    """A registry request that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    parent: int | None
    job_id: str | None
    run_dir: str
    created_at: float
    verdict: str
    reason: str
    record: dict[str, Any]

    @property
    def adapter(self) -> str:
        return self.record["artifacts"]["adapter"]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Registry:
    """Adapter versions in `store`'s SQLite file (a SQLiteJobStore)."""

    def __init__(self, store):
        self.store = store
        store.add_schema(SCHEMA)

    # ----------------------------------------------------------------------- writes

    def register(self, name: str, record: dict[str, Any], parent: int | None, run_dir: str,
                 job_id: str | None = None) -> Version:
        """A new version of `name` (the next number), verdict `registered`."""
        now = time.time()
        with self.store.transaction() as db:
            if parent is not None and not db.execute("SELECT 1 FROM adapter_versions WHERE name = ? AND version = ?",
                                                     (name, parent)).fetchone():
                raise RegistryError(f"adapter {name} has no version {parent} to be the parent")
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions WHERE name = ?",
                                 (name,)).fetchone()[0]
            db.execute("INSERT INTO adapter_versions VALUES (?, ?, ?, ?, ?, ?, 'registered', '', ?)",
                       (name, version, parent, job_id, run_dir, now, json.dumps(record)))
            db.execute("INSERT INTO adapter_events VALUES (?, ?, 'register', NULL, ?, ?)",
                       (name, now, version, f"job {job_id}" if job_id else f"run {run_dir}"))
        return self.get(name, version)

    def judge(self, name: str, version: int, promote: bool, reason: str, gates: list[dict[str, Any]],
              expected_head: int | None, measured: dict[str, Any] | None = None) -> Version:
        """Record the gates' verdict; with `promote`, move the head to `version`, but only if
        the head is still `expected_head` (else the version is rejected, saying who moved it)."""
        now = time.time()
        with self.store.transaction() as db:
            head = _head(db, name)
            if promote and head != expected_head:
                promote = False
                reason = (f"not promoted: the promoted version changed from {_v(expected_head)} to {_v(head)} while "
                          f"this version was made; promote it by hand if it should still replace {_v(head)}")
            row = db.execute("SELECT record FROM adapter_versions WHERE name = ? AND version = ?",
                             (name, version)).fetchone()
            if row is None:
                raise RegistryError(f"adapter {name} has no version {version} to judge")
            record = json.loads(row["record"]) | {"gates": gates, "measured": measured or {},
                                                  "judged_against": expected_head}
            db.execute("UPDATE adapter_versions SET verdict = ?, reason = ?, record = ? WHERE name = ? AND version = ?",
                       ("promoted" if promote else "rejected", reason, json.dumps(record), name, version))
            if promote:
                _move_head(db, name, head, version, "promote", reason, now)
            else:
                db.execute("INSERT INTO adapter_events VALUES (?, ?, 'reject', ?, ?, ?)",
                           (name, now, head, version, reason))
        return self.get(name, version)

    def promote(self, name: str, version: int, reason: str, force: bool = False) -> Version:
        """Serve `version` from now on (by hand). A version its gates rejected needs `force`."""
        target = self.get(name, version)
        if target.verdict == "rejected" and not force:
            raise RegistryError(f"{name} v{version} was rejected ({target.reason}); pass --force to promote it anyway")
        now = time.time()
        with self.store.transaction() as db:
            head = _head(db, name)
            if head == version:
                raise RegistryError(f"{name} v{version} is already the promoted version")
            db.execute("UPDATE adapter_versions SET verdict = 'promoted' WHERE name = ? AND version = ?",
                       (name, version))
            _move_head(db, name, head, version, "promote", reason or "promoted by hand", now)
        return self.get(name, version)

    def rollback(self, name: str, to: int | None = None, reason: str = "") -> Version:
        """Serve an earlier promoted version again: `to`, or the newest promoted one older than
        the current."""
        now = time.time()
        with self.store.transaction() as db:
            head = _head(db, name)
            if head is None:
                raise RegistryError(f"adapter {name} has no promoted version to roll back from")
            if to is None:
                to = _previous_head(db, name, head)
                if to is None:
                    raise RegistryError(f"no promoted version of {name} is older than v{head}; there is nothing to "
                                        "roll back to")
            row = db.execute("SELECT verdict FROM adapter_versions WHERE name = ? AND version = ?",
                             (name, to)).fetchone()
            if row is None:
                raise RegistryError(f"adapter {name} has no version {to}")
            if row["verdict"] != "promoted":
                raise RegistryError(f"{name} v{to} was never promoted ({row['verdict']}); roll back only to a version "
                                    "that was served, or promote it")
            if to == head:
                raise RegistryError(f"{name} v{to} is already the promoted version")
            _move_head(db, name, head, to, "rollback", reason or "rolled back by hand", now)
        return self.get(name, to)

    # ------------------------------------------------------------------------ reads

    def head(self, name: str) -> Version | None:
        rows = self.store.read("SELECT version FROM adapter_heads WHERE name = ?", (name,))
        return self.get(name, rows[0]["version"]) if rows else None

    @staticmethod
    def head_in(db, name: str) -> Version | None:
        """The promoted version, read inside the caller's transaction."""
        row = db.execute("SELECT v.* FROM adapter_heads h JOIN adapter_versions v ON v.name = h.name AND "
                         "v.version = h.version WHERE h.name = ?", (name,)).fetchone()
        return _version(row) if row else None

    def get(self, name: str, version: int) -> Version:
        rows = self.store.read("SELECT * FROM adapter_versions WHERE name = ? AND version = ?", (name, version))
        if not rows:
            known = self.names()
            raise RegistryError(f"adapter {name} has no version {version}" if name in known else
                                f"no adapter named {name!r}" + (f"; known: {', '.join(known)}" if known else ""))
        return _version(rows[0])

    def versions(self, name: str) -> list[Version]:
        return [_version(r) for r in self.store.read("SELECT * FROM adapter_versions WHERE name = ? ORDER BY version",
                                                     (name,))]

    def names(self) -> list[str]:
        return [r["name"] for r in self.store.read("SELECT DISTINCT name FROM adapter_versions ORDER BY name")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.read("SELECT * FROM adapter_events WHERE name = ? ORDER BY rowid", (name,))]

    def lineage(self, name: str, version: int) -> list[int]:
        """`version` and its ancestors, newest first."""
        chain, seen = [], set()
        current: int | None = version
        while current is not None and current not in seen:
            seen.add(current)
            chain.append(current)
            current = self.get(name, current).parent
        return chain


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def _head(db, name: str) -> int | None:
    row = db.execute("SELECT version FROM adapter_heads WHERE name = ?", (name,)).fetchone()
    return row["version"] if row else None


def _previous_head(db, name: str, head: int) -> int | None:
    """The newest promoted version older than `head`."""
    row = db.execute("SELECT MAX(version) AS v FROM adapter_versions WHERE name = ? AND verdict = 'promoted' "
                     "AND version < ?", (name, head)).fetchone()
    return row["v"]


def _move_head(db, name: str, head: int | None, version: int, action: str, reason: str, now: float) -> None:
    db.execute("INSERT INTO adapter_heads VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET version = excluded.version, "
               "updated_at = excluded.updated_at", (name, version, now))
    db.execute("INSERT INTO adapter_events VALUES (?, ?, ?, ?, ?, ?)", (name, now, action, head, version, reason))


def _version(row) -> Version:
    return Version(name=row["name"], version=row["version"], parent=row["parent"], job_id=row["job_id"],
                   run_dir=row["run_dir"], created_at=row["created_at"], verdict=row["verdict"], reason=row["reason"],
                   record=json.loads(row["record"]))
