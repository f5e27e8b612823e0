"""SQLiteJobStore: job records, compare-and-swap moves, fencing tokens, restarts, concurrency."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest

from orchestrator.store.jobs import SQLiteJobStore, StaleUpdate
from orchestrator.store.resources import Resources
from orchestrator.store.states import IllegalTransition, JobState

Q, S, R, T = JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.RETRYING




def add(store, name="job", priority=0, team="", cpus=1.0, gpus=0.0, **kw):
    return store.add(name, {"name": name}, f"/runs/{name}", Resources(cpus, gpus), priority=priority, team=team, **kw)


# ------------------------------------------------------------------------ basics


def test_the_database_is_in_wal_mode_and_created_under_a_missing_directory(store, db_path):
    assert db_path.exists()
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        other.close()


def test_add_queues_the_job_with_increasing_seq_and_a_submitted_event(store):
    a = add(store, "a", priority=2, team="alpha", cpus=4, gpus=1)
    b = add(store, "b")
    assert (a.seq, b.seq) == (1, 2)
    assert a.state is Q and b.state is Q
    assert a.id.startswith("a-") and a.id != b.id
    assert (a.name, a.team, a.priority, a.need, a.run_dir, a.spec) == (
        "a", "alpha", 2, Resources(4, 1), "/runs/a", {"name": "a"})
    assert (a.attempts, a.token, a.started_at, a.finished_at, a.cancel_requested) == (0, 0, None, None, False)
    events = store.events(a.id)
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in events] == [(None, "QUEUED", "submitted")]


def test_add_with_an_explicit_id_keeps_it_and_refuses_a_duplicate(store):
    assert add(store, "a", job_id="my-job").id == "my-job"
    with pytest.raises(sqlite3.IntegrityError):
        add(store, "b", job_id="my-job")
    # the failed add left nothing behind: the next job still gets the next seq
    assert add(store, "c").seq == 2
    assert [e["to_state"] for e in store.events("my-job")] == ["QUEUED"]


def test_queued_is_in_priority_then_submission_order_and_only_queued(store):
    low1 = add(store, "low1", priority=0)
    high1 = add(store, "high1", priority=5)
    low2 = add(store, "low2", priority=0)
    high2 = add(store, "high2", priority=5, team="alpha", cpus=2, gpus=1)
    started = add(store, "started", priority=9)
    store.claim(started.id)
    order = store.queued()
    assert [c.id for c in order] == [high1.id, high2.id, low1.id, low2.id]
    assert order[1].team == "alpha" and order[1].need == Resources(2, 1) and order[1].seq == high2.seq


def test_claim_starts_the_job_under_a_new_token_and_counts_the_attempt(store):
    job = add(store)
    claimed = store.claim(job.id)
    assert claimed.state is S
    assert (claimed.token, claimed.attempts) == (1, 1)
    assert claimed.started_at is not None
    assert store.events(job.id)[-1]["to_state"] == "STARTING"


def test_a_second_claim_of_the_same_job_is_stale(store):
    job = add(store)
    store.claim(job.id)
    with pytest.raises(StaleUpdate, match="STARTING, not QUEUED"):
        store.claim(job.id)
    after = store.get(job.id)
    assert (after.token, after.attempts) == (1, 1)
    assert len(store.events(job.id)) == 2


def test_claiming_an_unknown_job_is_stale_and_names_it(store):
    with pytest.raises(StaleUpdate, match="no job 'ghost'"):
        store.claim("ghost")


def test_a_runner_from_an_earlier_start_cannot_move_the_job(store):
    job = add(store)
    first = store.claim(job.id)
    store.move(job.id, S, R, token=first.token)
    store.move(job.id, R, T, "lost", token=first.token)
    store.move(job.id, T, Q)
    second = store.claim(job.id)
    assert (second.token, second.attempts) == (2, 2)
    before, events_before = store.get(job.id), store.events(job.id)

    with pytest.raises(StaleUpdate, match="newer start owns it"):
        store.move(job.id, S, R, token=first.token)
    with pytest.raises(StaleUpdate):
        store.set_fields(job.id, first.token, pid=4242)

    assert store.get(job.id) == before
    assert store.events(job.id) == events_before
    # the current token still works
    store.set_fields(job.id, second.token, pid=4243)
    assert store.move(job.id, S, R, token=second.token).pid == 4243


def test_a_move_from_a_state_the_job_is_no_longer_in_is_stale_and_changes_nothing(store):
    job = add(store)
    store.claim(job.id)
    before, events_before = store.get(job.id), store.events(job.id)
    with pytest.raises(StaleUpdate, match="is STARTING, not QUEUED"):
        store.move(job.id, Q, JobState.CANCELLED, "too late")
    assert store.get(job.id) == before
    assert store.events(job.id) == events_before


def test_an_illegal_move_is_refused_before_the_database_is_touched(store):
    job = add(store)
    before, events_before = store.get(job.id), store.events(job.id)
    with pytest.raises(IllegalTransition):
        store.move(job.id, Q, R)
    assert store.get(job.id) == before and store.events(job.id) == events_before
    # Checked first: even for a job that does not exist, the illegal edge is what is reported.
    with pytest.raises(IllegalTransition):
        store.move("ghost", JobState.SUCCEEDED, Q)


@pytest.mark.parametrize("path", [[S, R, JobState.SUCCEEDED], [S, R, JobState.FAILED], [JobState.CANCELLED],
                                  [JobState.REJECTED], [S, T, JobState.FAILED]])
def test_reaching_a_finished_state_records_when(store, path):
    job = add(store)
    current = Q
    for target in path:
        if target is S:
            rec = store.claim(job.id)
        else:
            rec = store.move(job.id, current, target, f"to {target.value}")
        assert (rec.finished_at is not None) == target.terminal
        current = target
    assert rec.state is path[-1] and rec.reason == f"to {path[-1].value}"
    assert rec.finished_at >= rec.submitted_at


def _finished_then_resumed(store, end):
    """A job that ran, ended FAILED or CANCELLED, and was resumed the way `ftctl resume` does it."""
    job = add(store)
    token = store.claim(job.id).token
    store.move(job.id, S, R, token=token)
    store.move(job.id, R, end, "it ended", token=token)
    store.request_cancel(job.id)
    return store.move(job.id, end, Q, "resumed on request", cancel_requested=0, attempts=0)


@pytest.mark.parametrize("end", [JobState.FAILED, JobState.CANCELLED])
def test_a_resumed_job_is_queued_again_and_starts_under_a_new_token(store, end):
    resumed = _finished_then_resumed(store, end)
    assert resumed.state is Q and resumed.cancel_requested is False and resumed.reason == "resumed on request"
    assert [c.id for c in store.queued()] == [resumed.id]
    again = store.claim(resumed.id)
    assert (again.token, again.attempts) == (2, 1)
    with pytest.raises(StaleUpdate):   # the runner of the first start can no longer report
        store.move(resumed.id, S, R, token=1)


@pytest.mark.parametrize("end", [JobState.FAILED, JobState.CANCELLED])
def test_a_resumed_job_no_longer_shows_when_it_finished(store, end):
    resumed = _finished_then_resumed(store, end)
    assert resumed.finished_at is None, "a QUEUED job must not carry the finished_at of its previous end"


def test_move_records_fields_reason_and_an_event(store):
    job = add(store)
    token = store.claim(job.id).token
    store.move(job.id, S, R, token=token, pid=99)
    done = store.move(job.id, R, JobState.FAILED, "the job failed (exit 1)", token=token, exit_code=1)
    assert (done.state, done.pid, done.exit_code, done.reason) == (JobState.FAILED, 99, 1, "the job failed (exit 1)")
    assert [(e["from_state"], e["to_state"]) for e in store.events(job.id)] == [
        (None, "QUEUED"), ("QUEUED", "STARTING"), ("STARTING", "RUNNING"), ("RUNNING", "FAILED")]
    assert store.events(job.id)[-1]["reason"] == "the job failed (exit 1)"


def test_records_survive_closing_and_reopening_the_store(db_path):
    first = SQLiteJobStore(db_path)
    spec = {"name": "ft", "model": {"base": "tiny"}, "resources": {"workers": 2, "gpus_per_worker": 1},
            "lr": 1e-4, "tags": ["a", "b"], "note": "ünïcödé"}
    job = first.add("ft", spec, "/runs/ft", Resources(8, 2), priority=3, team="alpha")
    token = first.claim(job.id).token
    first.set_fields(job.id, token, pid=1234)
    first.move(job.id, S, R, "runner up", token=token)
    first.request_cancel(job.id)
    other = add(first, "other")
    before, events_before = first.get(job.id), first.events(job.id)
    first.close()

    reopened = SQLiteJobStore(db_path)
    try:
        after = reopened.get(job.id)
        assert after == before
        assert after.spec == spec and after.need == Resources(8, 2)
        assert (after.state, after.token, after.attempts, after.pid, after.cancel_requested) == (R, 1, 1, 1234, True)
        assert reopened.events(job.id) == events_before
        assert [c.id for c in reopened.queued()] == [other.id]
        # seq keeps counting from where it was
        assert add(reopened, "next").seq == other.seq + 1
    finally:
        reopened.close()


def test_getting_an_unknown_job_says_which_and_where_to_look(store):
    with pytest.raises(KeyError) as err:
        store.get("nope-123")
    assert "nope-123" in str(err.value) and "ftctl list" in str(err.value)


def test_list_is_newest_first_and_filters_by_state_and_limit(store):
    jobs = [add(store, f"j{i}") for i in range(5)]
    store.claim(jobs[1].id)
    store.move(jobs[3].id, Q, JobState.CANCELLED)
    assert [r.id for r in store.list()] == [j.id for j in reversed(jobs)]
    assert [r.id for r in store.list(limit=2)] == [jobs[4].id, jobs[3].id]
    assert [r.id for r in store.list(states=[Q])] == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert [r.id for r in store.list(states=[S, JobState.CANCELLED])] == [jobs[3].id, jobs[1].id]
    assert [r.id for r in store.list(states=iter([Q]), limit=1)] == [jobs[4].id]
    assert store.list(states=[R]) == []


def test_request_cancel_flags_the_job_without_moving_it(store):
    job = add(store)
    flagged = store.request_cancel(job.id)
    assert flagged.cancel_requested is True and flagged.state is Q
    assert store.get(job.id).cancel_requested is True
    with pytest.raises(KeyError):
        store.request_cancel("ghost")


def test_as_dict_is_plain_data(store):
    d = add(store, "a", cpus=2, gpus=1).as_dict()
    assert d["state"] == "QUEUED" and (d["cpus"], d["gpus"]) == (2, 1)
    assert "spec" not in d and "need" not in d


# ------------------------------------------------------------------- concurrency


def test_threads_adding_to_one_store_lose_nothing(store):
    errors = []

    def submit(t):
        try:
            for i in range(25):
                add(store, f"t{t}-{i}")
        except Exception as e:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    records = store.list()
    assert len(records) == 200
    assert sorted(r.seq for r in records) == list(range(1, 201))
    assert len({r.id for r in records}) == 200


def _add_from_another_process(path, worker, count, start):
    start.wait(timeout=60)
    s = SQLiteJobStore(path)
    try:
        for i in range(count):
            s.add(f"p{worker}-{i}", {"worker": worker, "i": i}, "/runs", Resources(1))
    finally:
        s.close()


def test_processes_adding_to_one_file_lose_nothing(db_path):
    # forkserver where there is one: children forked from a clean server process, not from
    # this one, whose threads (left by earlier tests) may hold locks a forked child inherits.
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_add_from_another_process, args=(str(db_path), w, 50, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()  # all four open a fresh file at about the same time, then write together
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    s = SQLiteJobStore(db_path)
    try:
        records = s.list()
        assert len(records) == 200
        assert len({r.id for r in records}) == 200
        assert sorted(r.seq for r in records) == list(range(1, 201))
        assert sorted((r.spec["worker"], r.spec["i"]) for r in records) == [(w, i) for w in range(4) for i in range(50)]
        assert all(len(s.events(r.id)) == 1 for r in records)
    finally:
        s.close()


def test_two_controllers_racing_to_claim_the_same_jobs_claim_each_once(db_path):
    a, b = SQLiteJobStore(db_path), SQLiteJobStore(db_path)
    try:
        ids = [add(a, f"j{i}").id for i in range(50)]
        won = {"a": [], "b": []}
        stale = {"a": 0, "b": 0}
        errors = []
        go = threading.Barrier(2)

        def race(name, s):
            try:
                go.wait(timeout=10)
                for jid in ids:
                    try:
                        won[name].append(s.claim(jid).id)
                    except StaleUpdate:
                        stale[name] += 1
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=race, args=("a", a)), threading.Thread(target=race, args=("b", b))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert sorted(won["a"] + won["b"]) == sorted(ids)          # each claimed exactly once
        assert stale["a"] + stale["b"] == 50                       # and each loser was told
        for jid in ids:
            rec = b.get(jid)
            assert (rec.state, rec.token, rec.attempts) == (S, 1, 1)
            assert [e["to_state"] for e in a.events(jid)] == ["QUEUED", "STARTING"]
    finally:
        a.close()
        b.close()
