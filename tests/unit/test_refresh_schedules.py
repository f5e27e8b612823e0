"""Refresh schedules: the pure `due()` decision, and ScheduleStore + Controller firing refresh
jobs under a fake clock (once per slot across restarts and concurrent controllers, missed
slots by policy, pause/resume, warm start from the promoted version, data snapshots)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.controller.core import Controller
from orchestrator.refresh.schedules import GRACE_S, due
from orchestrator.spec import resolve_spec
from orchestrator.store.jobs import SQLiteJobStore
from orchestrator.store.schedules import ScheduleError, ScheduleStore
from tests.unit.test_controller_core import Capacity, FakeLauncher

CRON = "0 3 * * *"


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=timezone.utc).timestamp() + second


CREATED = ts(2026, 1, 5, 12)          # schedules are added here
SLOT1 = ts(2026, 1, 6, 3)             # first slot after CREATED
SLOT2 = ts(2026, 1, 7, 3)
SLOT3 = ts(2026, 1, 8, 3)
SLOT4 = ts(2026, 1, 9, 3)


# ----------------------------------------------------------------------- due()


def test_nothing_is_due_before_the_first_slot():
    for now in (CREATED, ts(2026, 1, 5, 23, 59), SLOT1 - 1):
        assert due(CRON, CREATED, now, "catch-up") == due(CRON, CREATED, now, "skip")
        d = due(CRON, CREATED, now, "catch-up")
        assert (d.fire, d.kind, d.missed, d.newest) == (None, "scheduled", 0, None)


@pytest.mark.parametrize("late", [0.0, 0.5, 59.0, 61.0, GRACE_S])
def test_a_slot_noticed_within_grace_fires_on_time(late):
    for policy in ("catch-up", "skip"):
        d = due(CRON, CREATED, SLOT1 + late, policy)
        assert (d.fire, d.kind, d.missed, d.newest) == (SLOT1, "scheduled", 0, SLOT1)


def test_a_slot_noticed_after_grace_is_missed():
    d = due(CRON, CREATED, SLOT1 + GRACE_S + 1, "catch-up")
    assert (d.fire, d.kind, d.missed, d.newest) == (SLOT1, "catch-up", 1, SLOT1)
    d = due(CRON, CREATED, SLOT1 + GRACE_S + 1, "skip")
    assert (d.fire, d.kind, d.missed, d.newest) == (None, "skipped", 1, SLOT1)


def test_after_firing_a_slot_it_is_not_due_again():
    d = due(CRON, SLOT1, SLOT1 + 30, "catch-up")
    assert (d.fire, d.newest) == (None, None)
    d = due(CRON, SLOT1, SLOT2 - 1, "catch-up")
    assert (d.fire, d.newest) == (None, None)


def test_down_over_three_slots_catch_up_fires_the_newest_once():
    now = SLOT3 + 5 * 3600
    d = due(CRON, CREATED, now, "catch-up")
    assert (d.fire, d.kind, d.missed, d.newest) == (SLOT3, "catch-up", 3, SLOT3)


def test_down_over_three_slots_skip_fires_nothing_and_moves_past_them():
    now = SLOT3 + 5 * 3600
    d = due(CRON, CREATED, now, "skip")
    assert (d.fire, d.kind, d.missed, d.newest) == (None, "skipped", 3, SLOT3)


def test_noticed_on_time_after_two_missed_slots_fires_scheduled_with_missed_two():
    for policy in ("catch-up", "skip"):
        d = due(CRON, CREATED, SLOT3 + 30, policy)
        assert (d.fire, d.kind, d.missed, d.newest) == (SLOT3, "scheduled", 2, SLOT3)


# ------------------------------------------------------------- store + controller


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock(CREATED)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "incoming"
    d.mkdir()
    for name in ("b.jsonl", "a.jsonl"):
        write_rows(d / name)
    return d


def write_rows(path: Path) -> None:
    path.write_text("".join(json.dumps({"prompt": f"shift {w}=", "response": r}) + "\n"
                            for w, r in (("abc", "bcd"), ("xyz", "yza"))))


def job_spec(tmp_path: Path, train_glob: str) -> dict:
    eval_file = tmp_path / "eval.jsonl"
    if not eval_file.exists():
        write_rows(eval_file)
    return resolve_spec({
        "name": "nightly",
        "method": {"kind": "lora"},
        "data": {"train": {"path": train_glob}, "eval": {"path": str(eval_file)}},
        "forgetting": {"max_drop": 0.1,
                       "tasks": [{"name": "reversal", "path": "builtin:demo/source_reversal.jsonl",
                                  "max_drop": 0.05}]},
    }).model_dump(mode="json")


@pytest.fixture
def spec(tmp_path, data_dir):
    return job_spec(tmp_path, str(data_dir / "*.jsonl"))


def controller(store, clock, run_root) -> Controller:
    return Controller(store, FakeLauncher(), Capacity(8), run_root, clock=clock)


@pytest.fixture
def ctl(store, clock, run_root):
    return controller(store, clock, run_root)


def add(ctl, spec, name="nightly", missed="catch-up", at=CREATED):
    return ctl.schedules.add(name, CRON, spec, missed=missed, now=at)


def jobs(store, name="nightly"):
    return sorted((r for r in store.list() if r.name == name), key=lambda r: r.seq)


def firing_tuples(schedules: ScheduleStore, name="nightly"):
    return [(f["slot"], f["kind"], f["missed"]) for f in schedules.firings(name)]


def sorted_files(*paths: Path) -> list[str]:
    return sorted(str(p.resolve()) for p in paths)


def test_fires_once_when_the_slot_comes_with_a_refresh_job_on_a_data_snapshot(store, ctl, clock, spec, data_dir):
    add(ctl, spec)
    clock.t = SLOT1 - 30
    assert ctl.tick()["fired"] == []
    assert jobs(store) == []
    assert ctl.schedules.firings("nightly") == []

    clock.t = SLOT1 + 30
    fired = ctl.tick()["fired"]
    assert len(fired) == 1
    [job] = jobs(store)
    assert job.id == fired[0] and job.id.startswith("nightly-")
    s = job.spec
    assert s["name"] == "nightly"
    assert (s["promotion"]["auto"], s["promotion"]["adapter"], s["promotion"]["parent"]) == (True, "nightly", None)
    assert s["method"]["lora"]["init_adapter"] is None
    assert s["data"]["train"]["files"] == sorted_files(data_dir / "a.jsonl", data_dir / "b.jsonl")
    assert s["data"]["train"]["path"] == str(data_dir / "*.jsonl")
    assert (job.need.cpus, job.need.gpus) == (1.0, 0.0)

    [firing] = ctl.schedules.firings("nightly")
    assert (firing["slot"], firing["kind"], firing["missed"], firing["job_id"], firing["parent"], firing["at"]) == (
        SLOT1, "scheduled", 0, job.id, None, SLOT1 + 30)
    assert firing["note"] == "first version: fresh adapter; 2 data file(s)"
    assert ctl.schedules.get("nightly").last_slot == SLOT1

    # data arriving after the firing is not in the fired job, only in the next refresh
    write_rows(data_dir / "c.jsonl")
    for _ in range(3):
        assert ctl.tick()["fired"] == []
    assert store.get(job.id).spec["data"]["train"]["files"] == sorted_files(data_dir / "a.jsonl",
                                                                           data_dir / "b.jsonl")
    clock.t = SLOT2 + 10
    [second] = ctl.tick()["fired"]
    assert store.get(second).spec["data"]["train"]["files"] == sorted_files(
        data_dir / "a.jsonl", data_dir / "b.jsonl", data_dir / "c.jsonl")
    assert firing_tuples(ctl.schedules) == [(SLOT1, "scheduled", 0), (SLOT2, "scheduled", 0)]


def test_a_restarted_controller_does_not_fire_the_slot_again(store, db_path, ctl, clock, run_root, spec):
    add(ctl, spec)
    clock.t = SLOT1 + 5
    assert len(ctl.tick()["fired"]) == 1
    other_store = SQLiteJobStore(db_path)
    try:
        other = controller(other_store, clock, run_root)
        for _ in range(5):
            assert other.tick()["fired"] == []
            assert ctl.tick()["fired"] == []
        assert len(jobs(store)) == 1
        assert len(jobs(other_store)) == 1
        assert firing_tuples(other.schedules) == [(SLOT1, "scheduled", 0)]
    finally:
        other_store.close()


def test_a_stale_read_of_the_schedule_cannot_fire_the_slot_twice(store, db_path, ctl, clock, run_root, spec):
    """A controller that read the schedule before another fired it (restarted halfway)."""
    add(ctl, spec)
    clock.t = SLOT1 + 5
    other_store = SQLiteJobStore(db_path)
    try:
        other = controller(other_store, clock, run_root)
        stale = other.schedules.get("nightly")
        assert len(ctl.fire_schedules()) == 1
        decision = due(stale.cron, stale.last_slot, clock(), stale.missed)
        assert decision.fire == SLOT1
        job_id = other.schedules.fire(stale, decision, clock(), lambda db: other._refresh_job(db, stale))
        assert job_id is None
        assert len(jobs(store)) == 1
        assert len(ctl.schedules.firings("nightly")) == 1
    finally:
        other_store.close()


def test_two_concurrent_controllers_fire_each_slot_once(store, db_path, clock, run_root, spec):
    stores = [store, SQLiteJobStore(db_path)]
    try:
        ctls = [controller(s, clock, run_root) for s in stores]
        add(ctls[0], spec)
        fired: list[str] = []
        errors: list[BaseException] = []
        for slot in (SLOT1, SLOT2, SLOT3):
            clock.t = slot + 1
            barrier = threading.Barrier(len(ctls), timeout=10)

            def loop(c):
                try:
                    barrier.wait()
                    for _ in range(15):
                        fired.extend(c.tick()["fired"])
                except BaseException as err:  # noqa: BLE001 - reported below
                    errors.append(err)

            threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in ctls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=20)
            assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(fired) == 3 and len(set(fired)) == 3
        assert sorted(fired) == sorted(j.id for j in jobs(store))
        assert firing_tuples(ctls[1].schedules) == [(SLOT1, "scheduled", 0), (SLOT2, "scheduled", 0),
                                                    (SLOT3, "scheduled", 0)]
    finally:
        stores[1].close()


def test_missed_slots_catch_up_fires_once_then_on_time_again(store, db_path, ctl, clock, run_root, spec):
    add(ctl, spec, missed="catch-up")
    clock.t = CREATED + 3600
    assert ctl.tick()["fired"] == []
    # no controller runs over three slots; a new one starts five hours after the newest
    clock.t = SLOT3 + 5 * 3600
    later_store = SQLiteJobStore(db_path)
    try:
        later = controller(later_store, clock, run_root)
        fired = later.tick()["fired"]
        assert len(fired) == 1
        for _ in range(3):
            assert later.tick()["fired"] == []
        assert [j.id for j in jobs(later_store)] == fired
        [firing] = later.schedules.firings("nightly")
        assert (firing["slot"], firing["kind"], firing["missed"], firing["job_id"]) == (SLOT3, "catch-up", 3,
                                                                                        fired[0])
        assert "3 missed slot(s) folded into this firing" in firing["note"]
        assert later.schedules.get("nightly").last_slot == SLOT3

        clock.t = SLOT4 + 20
        assert len(later.tick()["fired"]) == 1
        assert len(jobs(later_store)) == 2
        assert firing_tuples(later.schedules)[-1] == (SLOT4, "scheduled", 0)
    finally:
        later_store.close()


def test_missed_slots_skip_fires_nothing_then_on_time_again(store, db_path, ctl, clock, run_root, spec):
    add(ctl, spec, missed="skip")
    clock.t = SLOT3 + 5 * 3600
    later_store = SQLiteJobStore(db_path)
    try:
        later = controller(later_store, clock, run_root)
        for _ in range(3):
            assert later.tick()["fired"] == []
        assert jobs(later_store) == []
        [firing] = later.schedules.firings("nightly")
        assert (firing["slot"], firing["kind"], firing["missed"], firing["job_id"], firing["parent"]) == (
            SLOT3, "skipped", 3, None, None)
        assert firing["note"] == "3 slot(s) missed, skipped by policy"
        assert later.schedules.get("nightly").last_slot == SLOT3

        clock.t = SLOT4 + 20
        [job_id] = later.tick()["fired"]
        assert [j.id for j in jobs(later_store)] == [job_id]
        assert firing_tuples(later.schedules) == [(SLOT3, "skipped", 3), (SLOT4, "scheduled", 0)]
    finally:
        later_store.close()


def test_on_time_after_missed_slots_fires_scheduled_and_notes_them(store, ctl, clock, spec):
    add(ctl, spec, missed="skip")
    clock.t = SLOT3 + 30
    assert len(ctl.tick()["fired"]) == 1
    [firing] = ctl.schedules.firings("nightly")
    assert (firing["slot"], firing["kind"], firing["missed"]) == (SLOT3, "scheduled", 2)
    assert firing["note"].endswith("; 2 missed slot(s) folded into this firing")


def test_a_paused_schedule_does_not_fire_and_resuming_counts_from_now(store, ctl, clock, spec):
    add(ctl, spec)
    clock.t = CREATED + 60
    assert ctl.schedules.set_paused("nightly", True, now=clock()).paused is True
    for t in (SLOT1 + 10, SLOT2 + 10, SLOT3 + 4 * 3600):
        clock.t = t
        assert ctl.tick()["fired"] == []
    assert jobs(store) == []
    assert ctl.schedules.firings("nightly") == []

    resumed = ctl.schedules.set_paused("nightly", False, now=clock())
    assert (resumed.paused, resumed.last_slot) == (False, SLOT3 + 4 * 3600)
    for _ in range(3):
        assert ctl.tick()["fired"] == []       # SLOT1..SLOT3 passed while paused: not due, not missed
    assert ctl.schedules.firings("nightly") == []

    clock.t = SLOT4 + 10
    assert len(ctl.tick()["fired"]) == 1
    assert firing_tuples(ctl.schedules) == [(SLOT4, "scheduled", 0)]


def test_pausing_after_a_read_stops_that_firing(store, ctl, clock, spec):
    add(ctl, spec)
    clock.t = SLOT1 + 5
    read = ctl.schedules.get("nightly")
    ctl.schedules.set_paused("nightly", True, now=clock())
    decision = due(read.cron, read.last_slot, clock(), read.missed)
    assert ctl.schedules.fire(read, decision, clock(), lambda db: ctl._refresh_job(db, read)) is None
    assert jobs(store) == [] and ctl.schedules.firings("nightly") == []


def test_a_firing_warm_starts_from_the_promoted_version(store, ctl, clock, spec, tmp_path):
    adapter = tmp_path / "runs-old" / "v1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    add(ctl, spec)
    reg = ctl.registry
    reg.register("nightly", {"artifacts": {"adapter": str(adapter)}}, None, run_dir=str(adapter.parent))
    reg.judge("nightly", 1, True, "all gates passed", [], expected_head=None)
    # a newer version that its gates rejected is not warm-started from
    reg.register("nightly", {"artifacts": {"adapter": "/nowhere/v2"}}, 1, run_dir="/nowhere")
    reg.judge("nightly", 2, False, "target: no gain", [], expected_head=1)

    clock.t = SLOT1 + 5
    [job_id] = ctl.tick()["fired"]
    s = store.get(job_id).spec
    assert s["method"]["lora"]["init_adapter"] == str(adapter)
    assert (s["promotion"]["parent"], s["promotion"]["auto"], s["promotion"]["adapter"]) == (1, True, "nightly")
    [firing] = ctl.schedules.firings("nightly")
    assert firing["parent"] == 1
    assert firing["note"] == "warm start from v1; 2 data file(s)"


def test_a_glob_matching_no_file_consumes_the_slot_and_says_why(store, ctl, clock, tmp_path):
    empty = tmp_path / "nothing-yet"
    empty.mkdir()
    add(ctl, job_spec(tmp_path, str(empty / "*.jsonl")))
    clock.t = SLOT1 + 5
    assert ctl.tick()["fired"] == []
    assert ctl.tick()["fired"] == []
    assert jobs(store) == []
    [firing] = ctl.schedules.firings("nightly")
    assert (firing["slot"], firing["kind"], firing["job_id"]) == (SLOT1, "scheduled", None)
    assert firing["note"].startswith("not fired: ")
    assert "no data file matches" in firing["note"]
    assert ctl.schedules.get("nightly").last_slot == SLOT1

    # once data lands, the next slot fires
    write_rows(empty / "first.jsonl")
    clock.t = SLOT2 + 5
    [job_id] = ctl.tick()["fired"]
    assert store.get(job_id).spec["data"]["train"]["files"] == sorted_files(empty / "first.jsonl")


def test_run_now_queues_a_manual_refresh_and_keeps_the_slots(store, ctl, clock, spec):
    add(ctl, spec)
    clock.t = CREATED + 2 * 3600
    job_id = ctl.run_schedule_now("nightly")
    assert job_id is not None
    [job] = jobs(store)
    assert job.id == job_id
    assert job.spec["promotion"]["auto"] is True
    [firing] = ctl.schedules.firings("nightly")
    assert (firing["kind"], firing["slot"], firing["at"], firing["missed"], firing["job_id"]) == (
        "manual", CREATED + 2 * 3600, CREATED + 2 * 3600, 0, job_id)
    assert ctl.schedules.get("nightly").last_slot == CREATED

    # the cron slot still fires as usual
    clock.t = SLOT1 + 5
    assert len(ctl.tick()["fired"]) == 1
    assert [f["kind"] for f in ctl.schedules.firings("nightly")] == ["manual", "scheduled"]


def test_run_now_of_an_unknown_schedule_errors(ctl):
    with pytest.raises(ScheduleError, match="no schedule named 'ghost'"):
        ctl.run_schedule_now("ghost")


def test_store_add_remove_and_validation(store, spec):
    schedules = ScheduleStore(store)
    s = schedules.add("nightly", CRON, spec, missed="skip", priority=3, team="ml", now=CREATED)
    assert (s.name, s.cron, s.missed, s.paused, s.priority, s.team, s.created_at, s.last_slot) == (
        "nightly", CRON, "skip", False, 3, "ml", CREATED, CREATED)
    assert s.spec == spec
    assert s.as_dict(now=CREATED)["next_slot"] == SLOT1
    with pytest.raises(ScheduleError, match="exists"):
        schedules.add("nightly", CRON, spec, now=CREATED)
    with pytest.raises(ScheduleError, match="missed-firing policy"):
        schedules.add("other", CRON, spec, missed="all", now=CREATED)
    with pytest.raises(ValueError):
        schedules.add("other", "61 * * * *", spec, now=CREATED)
    with pytest.raises(ScheduleError, match="no schedule named 'ghost'; known: nightly"):
        schedules.get("ghost")
    assert [x.name for x in schedules.list()] == ["nightly"]
    schedules.remove("nightly")
    assert schedules.list() == []


def _finishes(call, timeout_s: float = 0.5):
    """Run `call` in a daemon thread; (finished, the exception it raised)."""
    raised: list[BaseException] = []

    def target():
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - returned to the test
            raised.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), (raised[0] if raised else None)


@pytest.mark.parametrize("action", ["remove", "pause"])
def test_an_unknown_schedule_is_an_error_not_a_hang(tmp_path, spec, action):
    """remove/set_paused of a missing name must raise ScheduleError. They build the message
    with store.read() while still inside store.transaction(), which holds the store's
    (non-reentrant) lock: the call deadlocks instead."""
    own = SQLiteJobStore(tmp_path / "own.sqlite")  # not closed: a deadlocked thread may hold its lock
    schedules = ScheduleStore(own)
    schedules.add("nightly", CRON, spec, now=CREATED)
    call = {"remove": lambda: schedules.remove("ghost"),
            "pause": lambda: schedules.set_paused("ghost", True, now=CREATED)}[action]
    finished, err = _finishes(call)
    assert finished, f"ScheduleStore {action} of an unknown schedule deadlocked (store lock taken twice)"
    assert isinstance(err, ScheduleError)
    assert "no schedule named 'ghost'; known: nightly" in str(err)


def test_a_schedule_name_must_be_usable_as_a_job_name(store):
    schedules = ScheduleStore(store)
    with pytest.raises(ScheduleError, match="not usable as a job and adapter name"):
        schedules.add("Nightly Run", "0 3 * * *", {"name": "x"}, now=0.0)
    assert schedules.list() == []
