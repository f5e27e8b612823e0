"""Controller: submit/cancel/resume, rounds (watch runners, schedule), restarts (reconcile),
driven with a fake launcher and a fake capacity; plus the runner's fencing and the real
launcher's adoption checks. No Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.controller.core import Controller, ControllerSettings, ProcessRunner, SubprocessLauncher
from orchestrator.controller.runner import exit_file, main as runner_main, read_exit
from orchestrator.exitcodes import ExitCode
from orchestrator.store.jobs import SQLiteJobStore, StaleUpdate
from orchestrator.store.resources import Resources
from orchestrator.store.states import JobState

Q, S, R, T = JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.RETRYING


# ------------------------------------------------------------------------ fakes


class FakeRunner:
    """A runner the test ends: through poll() (our child) or only through the exit file
    and alive() (a runner adopted by pid, whose exit code the controller cannot poll)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.code: int | None = None
        self.is_alive = True
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def alive(self) -> bool:
        return self.is_alive

    def signal(self, sig: int) -> None:
        self.signals.append(sig)

    def exit(self, code: int) -> None:
        self.code, self.is_alive = code, False

    def vanish(self) -> None:
        self.is_alive = False


class FakeLauncher:
    def __init__(self, first_pid: int = 40000):
        self.next_pid = first_pid
        self.launched: list = []             # the records launch() was given, in order
        self.runners: dict[str, list[FakeRunner]] = {}
        self.adoptable: dict[int, FakeRunner] = {}
        self.adopt_calls: list = []
        self.fail: Exception | None = None

    def launch(self, record):
        if self.fail is not None:
            raise self.fail
        self.launched.append(record)
        runner = FakeRunner(self.next_pid)
        self.next_pid += 1
        self.runners.setdefault(record.id, []).append(runner)
        return runner

    def adopt(self, record):
        self.adopt_calls.append(record)
        return self.adoptable.get(record.pid)

    def runner(self, job_id: str) -> FakeRunner:
        return self.runners[job_id][-1]


class Capacity:
    def __init__(self, cpus: float = 8, gpus: float = 0):
        self.value = Resources(cpus, gpus)

    def __call__(self) -> Resources:
        return self.value


# --------------------------------------------------------------------- fixtures




@pytest.fixture
def launcher():
    return FakeLauncher()


@pytest.fixture
def capacity():
    return Capacity(8)


def make(store, launcher, capacity, run_root, **settings) -> Controller:
    return Controller(store, launcher, capacity, run_root, ControllerSettings(**settings))


@pytest.fixture
def ctl(store, launcher, capacity, run_root):
    return make(store, launcher, capacity, run_root)


def submit(ctl, name="job", cpus=1.0, gpus=0.0, priority=0, team=""):
    return ctl.submit(name, {"name": name}, Resources(cpus, gpus), priority=priority, team=team)


def write_exit(record, code: int, token: int | None = None) -> None:
    path = exit_file(Path(record.run_dir), record.token if token is None else token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"code": code, "at": time.time(), "pid": 1}))


def write_summary(record, status: str) -> None:
    path = Path(record.run_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status}))


def transitions(store, job_id):
    return [(e["from_state"], e["to_state"]) for e in store.events(job_id)]


# ----------------------------------------------------------------------- submit


def test_submit_queues_the_job_with_its_run_dir_under_the_run_root(ctl, store, run_root):
    job = submit(ctl, "alpha", cpus=2, priority=3, team="t")
    assert job.state is Q
    assert job.id.startswith("alpha-")
    assert Path(job.run_dir) == run_root.resolve() / job.id
    assert (job.need, job.priority, job.team, job.spec) == (Resources(2, 0), 3, "t", {"name": "alpha"})
    assert (job.attempts, job.token, job.pid) == (0, 0, None)
    assert store.get(job.id) == job


def test_a_job_needing_more_than_the_cluster_is_rejected_at_once_with_the_reason(ctl, store, launcher, capacity):
    job = submit(ctl, "huge", cpus=9)
    assert job.state is JobState.REJECTED
    assert "needs 9 CPU" in job.reason and "8 CPU" in job.reason
    assert job.finished_at is not None
    gpu = submit(ctl, "gpu", cpus=1, gpus=1)
    assert gpu.state is JobState.REJECTED and "GPU" in gpu.reason
    assert ctl.tick()["started"] == []
    assert launcher.launched == []


@pytest.mark.parametrize("job_id", ["../x", "a/b", "..", ".", "", "/etc/passwd", "a/../../x"])
def test_run_dir_for_refuses_ids_that_escape_the_run_root(ctl, job_id):
    with pytest.raises(ValueError, match="outside"):
        ctl.run_dir_for(job_id)


def test_run_dir_for_accepts_a_plain_id(ctl, run_root):
    assert ctl.run_dir_for("job-1234") == run_root.resolve() / "job-1234"
    assert ctl.run_dir_for("..job") == run_root.resolve() / "..job"


@pytest.mark.parametrize("name", ["../x", "a/b"])
def test_submit_refuses_a_name_that_would_escape_the_run_root_and_stores_nothing(ctl, store, name):
    with pytest.raises(ValueError):
        submit(ctl, name)
    assert store.list() == []


# ------------------------------------------------------------------- scheduling


def test_tick_starts_jobs_in_priority_then_fifo_order_while_they_fit(ctl, store, launcher, capacity):
    capacity.value = Resources(4)
    low1 = submit(ctl, "low1", cpus=1)
    high = submit(ctl, "high", cpus=2, priority=5)
    low2 = submit(ctl, "low2", cpus=1)
    low3 = submit(ctl, "low3", cpus=1)

    out = ctl.tick()

    assert out["started"] == [high.id, low1.id, low2.id]
    assert [r.id for r in launcher.launched] == [high.id, low1.id, low2.id]
    assert store.get(low3.id).state is Q
    for job_id in out["started"]:
        rec = store.get(job_id)
        assert rec.state is R
        assert (rec.token, rec.attempts) == (1, 1)
        assert rec.pid == launcher.runner(job_id).pid
        assert rec.started_at is not None
        assert Path(rec.run_dir).is_dir()
        assert transitions(store, job_id) == [(None, "QUEUED"), ("QUEUED", "STARTING"), ("STARTING", "RUNNING")]
        assert job_id in ctl.watched
    # launched with the claimed record (token 1)
    assert all(r.token == 1 and r.state is S for r in launcher.launched)
    assert out["rejected"] == []


def test_a_job_needing_all_cpus_waits_while_others_run_and_nothing_overtakes_it(ctl, store, launcher, capacity):
    capacity.value = Resources(4)
    small = submit(ctl, "small", cpus=1)
    assert ctl.tick()["started"] == [small.id]
    big = submit(ctl, "big", cpus=4)
    after = submit(ctl, "after", cpus=1)

    assert ctl.tick()["started"] == []  # 3 CPUs free, but the big job is first in line
    assert store.get(big.id).state is Q and store.get(after.id).state is Q

    launcher.runner(small.id).exit(0)
    assert ctl.tick()["started"] == [big.id]
    assert store.get(small.id).state is JobState.SUCCEEDED
    assert store.get(after.id).state is Q

    launcher.runner(big.id).exit(0)
    assert ctl.tick()["started"] == [after.id]


def test_a_running_job_stays_running_while_its_runner_is_alive(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    for _ in range(3):
        ctl.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts) == (1, 1)
    assert len(launcher.launched) == 1
    assert launcher.runner(job.id).signals == []


def test_paging_reads_further_pages_when_the_first_did_not_block(store, launcher, run_root):
    ctl = make(store, launcher, Capacity(10), run_root, page=4)
    jobs = [submit(ctl, f"j{i}", cpus=1) for i in range(11)]
    out = ctl.tick()
    assert out["started"] == [j.id for j in jobs[:10]]
    assert store.get(jobs[10].id).state is Q
    assert len(store.list([R])) == 10


def test_paging_with_exactly_ten_jobs_on_ten_cpus_starts_all_in_one_tick(store, launcher, run_root):
    ctl = make(store, launcher, Capacity(10), run_root, page=4)
    jobs = [submit(ctl, f"j{i}", cpus=1) for i in range(10)]
    assert ctl.tick()["started"] == [j.id for j in jobs]
    assert store.queued() == []


def test_paging_stops_at_the_job_that_blocks(store, launcher, run_root):
    ctl = make(store, launcher, Capacity(3), run_root, page=2)
    jobs = [submit(ctl, f"j{i}", cpus=1) for i in range(7)]
    assert ctl.tick()["started"] == [j.id for j in jobs[:3]]


# ----------------------------------------------------------------- runner ends


def test_exit_0_succeeds(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    launcher.runner(job.id).exit(0)
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is JobState.SUCCEEDED
    assert rec.exit_code == 0
    assert rec.finished_at is not None
    assert job.id not in ctl.watched
    assert len(launcher.launched) == 1


def test_exit_0_read_from_the_exit_file_when_the_runner_cannot_be_polled(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    write_exit(store.get(job.id), 0)
    launcher.runner(job.id).vanish()
    ctl.tick()
    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (JobState.SUCCEEDED, 0)


def test_an_exit_file_of_another_token_is_not_this_runners(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    write_exit(store.get(job.id), 0, token=7)
    launcher.runner(job.id).vanish()
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is R and rec.token == 2  # lost, re-queued and started again, not SUCCEEDED


def test_exit_1_fails(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    launcher.runner(job.id).exit(1)
    ctl.tick()
    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (JobState.FAILED, 1)
    assert "exit 1" in rec.reason
    assert len(launcher.launched) == 1


@pytest.mark.parametrize("code, words", [(4, "forgetting gate"), (2, "invalid")])
def test_exit_4_and_2_fail_with_their_reason(ctl, store, launcher, code, words):
    job = submit(ctl)
    ctl.tick()
    launcher.runner(job.id).exit(code)
    ctl.tick()
    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (JobState.FAILED, code)
    assert words in rec.reason


def test_exit_75_requeues_without_counting_an_attempt_and_starts_again_under_token_2(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    assert store.get(job.id).attempts == 1
    launcher.runner(job.id).exit(75)

    ctl.tick()  # decides the preemption, re-queues, and starts it again in the same round

    rec = store.get(job.id)
    assert rec.state is R
    assert (rec.token, rec.attempts) == (2, 1)  # the preempted start was not counted
    assert rec.exit_code is None  # the new start cleared the old code
    assert len(launcher.launched) == 2 and launcher.launched[1].token == 2
    assert rec.pid == launcher.runner(job.id).pid != launcher.runners[job.id][0].pid
    assert transitions(store, job.id)[-4:] == [("RUNNING", "RETRYING"), ("RETRYING", "QUEUED"),
                                               ("QUEUED", "STARTING"), ("STARTING", "RUNNING")]
    events = store.events(job.id)
    assert "preempted" in events[-4]["reason"]


def test_a_preempted_job_goes_back_in_line_behind_a_higher_priority_job(ctl, store, launcher, capacity):
    capacity.value = Resources(1)
    job = submit(ctl, "low", cpus=1)
    ctl.tick()
    urgent = submit(ctl, "urgent", cpus=1, priority=9)
    assert ctl.tick()["started"] == []  # the cluster is full
    launcher.runner(job.id).exit(75)
    assert ctl.tick()["started"] == [urgent.id]
    rec = store.get(job.id)
    assert rec.state is Q
    assert (rec.token, rec.attempts, rec.exit_code) == (1, 0, 75)
    assert "preempted" in rec.reason
    assert transitions(store, job.id)[-2:] == [("RUNNING", "RETRYING"), ("RETRYING", "QUEUED")]


def test_repeated_preemptions_never_exhaust_max_attempts(store, launcher, capacity, run_root):
    ctl = make(store, launcher, capacity, run_root, max_attempts=2)
    job = submit(ctl)
    ctl.tick()
    for n in range(2, 6):
        launcher.runner(job.id).exit(75)
        ctl.tick()
        rec = store.get(job.id)
        assert rec.state is R and (rec.token, rec.attempts) == (n, 1)


def test_a_runner_lost_without_an_exit_code_is_retried_until_max_attempts_then_fails(store, launcher, capacity,
                                                                                     run_root):
    ctl = make(store, launcher, capacity, run_root, max_attempts=2)
    job = submit(ctl)
    ctl.tick()
    assert (store.get(job.id).token, store.get(job.id).attempts) == (1, 1)

    launcher.runner(job.id).vanish()  # no exit code, no exit file
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts) == (2, 2)
    assert ("RUNNING", "RETRYING") in transitions(store, job.id)
    lost = [e for e in store.events(job.id) if e["to_state"] == "RETRYING"]
    assert "lost" in lost[0]["reason"] and "attempt 1 of 2" in lost[0]["reason"]

    launcher.runner(job.id).vanish()
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is JobState.FAILED
    assert rec.attempts == 2 and rec.exit_code is None
    assert "lost 2 times" in rec.reason
    assert len(launcher.launched) == 2
    ctl.tick()
    assert len(launcher.launched) == 2


def test_a_lost_runner_whose_summary_says_succeeded_succeeds(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    write_summary(store.get(job.id), "succeeded")
    launcher.runner(job.id).vanish()
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is JobState.SUCCEEDED and rec.exit_code is None


def test_a_runner_that_cannot_start_is_requeued_with_the_reason(ctl, store, launcher):
    job = submit(ctl)
    launcher.fail = RuntimeError("no python here")
    out = ctl.tick()
    assert out["started"] == [job.id]  # planned, even though its runner did not come up
    rec = store.get(job.id)
    assert rec.state is Q
    assert "could not start its runner" in rec.reason and "no python here" in rec.reason
    assert (rec.token, rec.attempts) == (1, 1)  # the failed start counts as an attempt
    assert transitions(store, job.id)[-3:] == [("QUEUED", "STARTING"), ("STARTING", "RETRYING"),
                                               ("RETRYING", "QUEUED")]
    assert job.id not in ctl.watched

    launcher.fail = None
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts) == (2, 2)


def test_a_runner_that_never_starts_fails_after_max_attempts(store, launcher, capacity, run_root):
    ctl = make(store, launcher, capacity, run_root, max_attempts=2)
    job = submit(ctl)
    launcher.fail = OSError("boom")
    ctl.tick()
    assert store.get(job.id).state is Q
    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is JobState.FAILED and rec.attempts == 2
    assert "could not start its runner" in rec.reason


# ----------------------------------------------------------------------- cancel


def test_cancelling_a_queued_job_cancels_it_at_once(ctl, store, launcher):
    job = submit(ctl)
    rec = ctl.cancel(job.id)
    assert rec.state is JobState.CANCELLED and rec.finished_at is not None
    assert store.get(job.id).state is JobState.CANCELLED
    ctl.tick()
    assert launcher.launched == []


def test_cancelling_a_finished_job_changes_nothing(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    launcher.runner(job.id).exit(0)
    ctl.tick()
    before = store.get(job.id)
    assert ctl.cancel(job.id) == before
    assert store.get(job.id).state is JobState.SUCCEEDED


def test_cancelling_a_running_job_sends_sigterm_once_then_sigkill_after_the_grace(store, launcher, capacity,
                                                                                  run_root):
    ctl = make(store, launcher, capacity, run_root, cancel_grace_s=0.05)
    job = submit(ctl)
    ctl.tick()
    runner = launcher.runner(job.id)

    rec = ctl.cancel(job.id)
    assert rec.state is R and rec.cancel_requested
    assert runner.signals == []  # the next round stops it

    ctl.tick()
    assert runner.signals == [signal.SIGTERM]
    ctl.tick()
    assert runner.signals == [signal.SIGTERM]  # once, not every round
    assert store.get(job.id).state is R

    time.sleep(0.08)
    ctl.tick()
    assert runner.signals[:2] == [signal.SIGTERM, signal.SIGKILL]
    assert runner.signals.count(signal.SIGTERM) == 1

    runner.exit(75)
    out = ctl.tick()
    rec = store.get(job.id)
    assert rec.state is JobState.CANCELLED
    assert rec.exit_code == 75
    assert "cancelled" in rec.reason
    assert out["started"] == [] and len(launcher.launched) == 1
    assert job.id not in ctl.watched


def test_a_cancelled_runner_killed_without_an_exit_code_is_cancelled_not_retried(store, launcher, capacity,
                                                                                 run_root):
    ctl = make(store, launcher, capacity, run_root, cancel_grace_s=0.0)
    job = submit(ctl)
    ctl.tick()
    ctl.cancel(job.id)
    ctl.tick()
    launcher.runner(job.id).vanish()
    ctl.tick()
    assert store.get(job.id).state is JobState.CANCELLED
    assert len(launcher.launched) == 1


# ----------------------------------------------------------------------- resume


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_resume_requeues_a_failed_or_cancelled_job_with_attempts_reset(ctl, store, launcher, end):
    job = submit(ctl)
    ctl.tick()
    if end == "failed":
        launcher.runner(job.id).exit(1)
        ctl.tick()
        assert store.get(job.id).state is JobState.FAILED
    else:
        ctl.cancel(job.id)
        ctl.tick()
        launcher.runner(job.id).exit(75)
        ctl.tick()
        before = store.get(job.id)
        assert before.state is JobState.CANCELLED and before.cancel_requested

    rec = ctl.resume(job.id)
    assert rec.state is Q
    assert rec.attempts == 0 and not rec.cancel_requested
    assert rec.finished_at is None
    assert "resumed" in rec.reason

    ctl.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts) == (2, 1)
    assert launcher.runner(job.id).signals == []  # the old cancel request does not stop the new start
    ctl.tick()
    assert launcher.runner(job.id).signals == []


def test_resume_of_a_queued_job_cancelled_before_start(ctl, store):
    job = submit(ctl)
    ctl.cancel(job.id)
    rec = ctl.resume(job.id)
    assert rec.state is Q and rec.attempts == 0


def test_resuming_a_running_or_succeeded_job_is_refused(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    with pytest.raises(StaleUpdate, match="RUNNING"):
        ctl.resume(job.id)
    launcher.runner(job.id).exit(0)
    ctl.tick()
    with pytest.raises(StaleUpdate, match="SUCCEEDED"):
        ctl.resume(job.id)
    assert store.get(job.id).state is JobState.SUCCEEDED
    queued = submit(ctl, "q", cpus=100)  # rejected
    with pytest.raises(StaleUpdate):
        ctl.resume(queued.id)


# -------------------------------------------------------------------- reconcile


def test_a_new_controller_adopts_a_live_runner_and_does_not_restart_it(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    pid = store.get(job.id).pid
    events_before = store.events(job.id)

    second_launcher = FakeLauncher(first_pid=50000)
    survivor = FakeRunner(pid)
    second_launcher.adoptable[pid] = survivor
    second = make(store, second_launcher, capacity, run_root)

    assert job.id in second.watched and second.watched[job.id].runner is survivor
    assert second.watched[job.id].token == 1
    second.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts, rec.pid) == (1, 1, pid)
    assert second_launcher.launched == []
    assert store.events(job.id) == events_before

    survivor.exit(0)
    second.tick()
    assert store.get(job.id).state is JobState.SUCCEEDED


def test_an_adopted_runner_still_counts_against_capacity(store, launcher, capacity, run_root):
    capacity.value = Resources(2)
    first = make(store, launcher, capacity, run_root)
    job = submit(first, cpus=2)
    first.tick()
    second_launcher = FakeLauncher(first_pid=50000)
    second_launcher.adoptable[store.get(job.id).pid] = FakeRunner(store.get(job.id).pid)
    second = make(store, second_launcher, capacity, run_root)
    other = submit(second, "other", cpus=1)
    assert second.tick()["started"] == []
    assert store.get(other.id).state is Q


def test_a_new_controller_decides_a_gone_runner_from_its_exit_file(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    write_exit(store.get(job.id), 0)

    second_launcher = FakeLauncher(first_pid=50000)  # adopts nothing: the runner is gone
    second = make(store, second_launcher, capacity, run_root)

    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (JobState.SUCCEEDED, 0)
    assert job.id not in second.watched
    assert [r.id for r in second_launcher.adopt_calls] == [job.id]
    second.tick()
    assert second_launcher.launched == []


def test_a_new_controller_retries_a_runner_that_failed_unwatched_counting_the_attempt(store, launcher, capacity,
                                                                                     run_root):
    """Exit 1 found on restart: most likely the cluster went down with it, so it is retried."""
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    write_exit(store.get(job.id), 1)
    make(store, FakeLauncher(first_pid=50000), capacity, run_root)
    rec = store.get(job.id)
    assert rec.state is Q
    assert (rec.exit_code, rec.attempts, rec.token) == (1, 1, 1)
    assert transitions(store, job.id)[-2:] == [("RUNNING", "RETRYING"), ("RETRYING", "QUEUED")]


def test_a_new_controller_fails_a_runner_that_failed_unwatched_on_its_last_attempt(store, launcher, capacity,
                                                                                  run_root):
    first = make(store, launcher, capacity, run_root, max_attempts=1)
    job = submit(first)
    first.tick()
    write_exit(store.get(job.id), 1)
    make(store, FakeLauncher(first_pid=50000), capacity, run_root, max_attempts=1)
    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (JobState.FAILED, 1)


@pytest.mark.parametrize("code, state, words", [(4, JobState.FAILED, "forgetting gate"),
                                                (2, JobState.FAILED, "invalid"),
                                                (75, JobState.QUEUED, "preempted")])
def test_a_new_controller_honours_a_meaningful_exit_code_found_on_restart(store, launcher, capacity, run_root,
                                                                          code, state, words):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    write_exit(store.get(job.id), code)
    make(store, FakeLauncher(first_pid=50000), capacity, run_root)
    rec = store.get(job.id)
    assert (rec.state, rec.exit_code) == (state, code)
    assert words in rec.reason
    if code == 75:
        assert rec.attempts == 0


def test_an_adopted_runner_that_is_not_alive_is_decided_not_watched(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    pid = store.get(job.id).pid
    write_exit(store.get(job.id), 0)
    second_launcher = FakeLauncher(first_pid=50000)
    dead = FakeRunner(pid)
    dead.vanish()
    second_launcher.adoptable[pid] = dead
    second = make(store, second_launcher, capacity, run_root)
    assert job.id not in second.watched
    assert store.get(job.id).state is JobState.SUCCEEDED


def test_a_new_controller_requeues_a_gone_runner_without_exit_file_counting_the_attempt(store, launcher, capacity,
                                                                                        run_root):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()

    second_launcher = FakeLauncher(first_pid=50000)
    second = make(store, second_launcher, capacity, run_root)

    rec = store.get(job.id)
    assert rec.state is Q
    assert (rec.token, rec.attempts) == (1, 1)
    assert "lost" in rec.reason
    assert transitions(store, job.id)[-2:] == [("RUNNING", "RETRYING"), ("RETRYING", "QUEUED")]

    second.tick()
    rec = store.get(job.id)
    assert rec.state is R and (rec.token, rec.attempts) == (2, 2)
    assert [r.token for r in second_launcher.launched] == [2]


def test_a_new_controller_fails_a_gone_runner_that_used_its_last_attempt(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root, max_attempts=1)
    job = submit(first)
    first.tick()
    make(store, FakeLauncher(first_pid=50000), capacity, run_root, max_attempts=1)
    rec = store.get(job.id)
    assert rec.state is JobState.FAILED and rec.attempts == 1


def test_a_new_controller_cancels_a_gone_runner_whose_cancel_was_requested(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root)
    job = submit(first)
    first.tick()
    first.cancel(job.id)
    make(store, FakeLauncher(first_pid=50000), capacity, run_root)
    assert store.get(job.id).state is JobState.CANCELLED


def test_a_new_controller_decides_a_job_left_starting(store, capacity, run_root):
    job = store.add("s", {}, str(run_root / "s"), Resources(1), job_id="s")
    store.claim(job.id)  # the controller died between claim and launch
    launcher = FakeLauncher()
    make(store, launcher, capacity, run_root)
    rec = store.get(job.id)
    assert rec.state is Q and rec.attempts == 1
    assert launcher.adopt_calls[0].pid is None


def test_a_new_controller_requeues_a_job_left_in_retrying(store, capacity, run_root):
    job = store.add("r", {}, str(run_root / "r"), Resources(1), job_id="r")
    claimed = store.claim(job.id)
    store.move(job.id, S, R, token=claimed.token)
    store.move(job.id, R, T, "lost before the requeue", token=claimed.token)

    launcher = FakeLauncher()
    ctl = make(store, launcher, capacity, run_root)
    rec = store.get(job.id)
    assert rec.state is Q
    assert rec.reason == "lost before the requeue"
    assert launcher.adopt_calls == []  # RETRYING is not active: nothing to adopt
    ctl.tick()
    assert store.get(job.id).state is R and store.get(job.id).token == 2


def test_reconcile_leaves_queued_and_finished_jobs_alone(store, launcher, capacity, run_root):
    first = make(store, launcher, capacity, run_root)
    queued = submit(first, "q", cpus=100)  # rejected
    waiting = submit(first, "w")
    first.cancel(waiting.id)
    again = submit(first, "a")
    before = {j.id: store.get(j.id) for j in (queued, waiting, again)}
    second_launcher = FakeLauncher()
    make(store, second_launcher, capacity, run_root)
    assert {j: store.get(j) for j in before} == before
    assert second_launcher.adopt_calls == []


# ------------------------------------------------------------------------ status


def test_status_has_the_record_events_and_summary(ctl, store, launcher):
    job = submit(ctl)
    ctl.tick()
    write_summary(store.get(job.id), "running")
    st = ctl.status(job.id)
    assert st["id"] == job.id and st["state"] == "RUNNING" and st["cpus"] == 1
    assert [e["to_state"] for e in st["events"]] == ["QUEUED", "STARTING", "RUNNING"]
    assert st["summary"] == {"status": "running"}
    json.dumps(st)


# ----------------------------------------------------------------- runner.main


@pytest.fixture
def claimed(store, run_root):
    job = store.add("m", {"name": "m"}, str(run_root / "m"), Resources(1), job_id="m")
    return store.claim(job.id)


def _main(db_path, job_id, token):
    return runner_main(["--store", str(db_path), "--job", job_id, "--token", str(token), "--noop-seconds", "0"])


def test_runner_with_a_stale_token_does_nothing(db_path, claimed, capsys):
    assert _main(db_path, claimed.id, claimed.token + 1) == ExitCode.STALE == 5
    assert not exit_file(Path(claimed.run_dir), claimed.token + 1).exists()
    assert not Path(claimed.run_dir).exists()
    assert "does nothing" in capsys.readouterr().err


def test_runner_with_the_current_token_runs_and_records_its_exit(db_path, claimed):
    assert _main(db_path, claimed.id, claimed.token) == 0
    path = exit_file(Path(claimed.run_dir), claimed.token)
    assert path.name == f"exit-{claimed.token}.json"
    assert path.parent == Path(claimed.run_dir) / "controller"
    assert read_exit(Path(claimed.run_dir), claimed.token) == 0
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_runner_for_a_running_job_runs(store, db_path, claimed):
    store.move(claimed.id, S, R, token=claimed.token)
    assert _main(db_path, claimed.id, claimed.token) == 0


@pytest.mark.parametrize("where", ["queued", "retrying", "succeeded", "cancelled"])
def test_runner_for_a_job_not_starting_or_running_does_nothing(store, db_path, claimed, where):
    if where == "queued":
        store.move(claimed.id, S, T, token=claimed.token)
        store.move(claimed.id, T, Q)
    elif where == "retrying":
        store.move(claimed.id, S, T, token=claimed.token)
    elif where == "succeeded":
        store.move(claimed.id, S, JobState.SUCCEEDED, token=claimed.token)
    else:
        store.move(claimed.id, S, JobState.CANCELLED, token=claimed.token)
    assert store.get(claimed.id).token == claimed.token
    assert _main(db_path, claimed.id, claimed.token) == ExitCode.STALE
    assert read_exit(Path(claimed.run_dir), claimed.token) is None


def test_read_exit_is_none_for_a_missing_or_broken_file(tmp_path):
    assert read_exit(tmp_path, 1) is None
    path = exit_file(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_exit(tmp_path, 1) is None
    path.write_text(json.dumps({"at": 1}))
    assert read_exit(tmp_path, 1) is None
    path.write_text(json.dumps({"code": 75}))
    assert read_exit(tmp_path, 1) == 75


# ---------------------------------------------------------- SubprocessLauncher


def _record(store, run_root, job_id="adopt-me", token=1, pid=None):
    job = store.add("a", {}, str(run_root / job_id), Resources(1), job_id=job_id)
    return dataclasses.replace(job, token=token, pid=pid)


def _sleeper(*args: str) -> subprocess.Popen:
    """A process whose cmdline carries `args` (the shell ignores them: "$0" and "$@"); it
    waits on its stdin, so it has no child of its own to outlive it."""
    return subprocess.Popen(["/bin/sh", "-c", "read line", "sh", *args], stdin=subprocess.PIPE)


def _dead_pid() -> int:
    p = subprocess.Popen(["/bin/true"])
    p.wait()
    return p.pid


def test_command_runs_the_runner_for_this_job_under_this_token():
    launcher = SubprocessLauncher("/home/jobs.sqlite", None, noop_seconds=0.5)
    rec = dataclasses.replace(_fake_record(), id="j-1", token=3)
    cmd = launcher.command(rec)
    assert cmd[:3] == [sys.executable, "-m", "orchestrator.controller.runner"]
    i = cmd.index("--job")
    assert cmd[i:i + 4] == ["--job", "j-1", "--token", "3"]
    assert cmd[cmd.index("--store") + 1] == "/home/jobs.sqlite"
    assert cmd[cmd.index("--noop-seconds") + 1] == "0.5"
    assert "--address" not in cmd
    with_address = SubprocessLauncher("/db", "ray://head:10001").command(rec)
    assert with_address[with_address.index("--address") + 1] == "ray://head:10001"
    assert "--noop-seconds" not in with_address


def _fake_record():
    s = SQLiteJobStore(":memory:")
    try:
        return s.add("x", {}, "/runs/x", Resources(1))
    finally:
        s.close()


def test_adopt_refuses_a_record_without_pid(store, run_root):
    assert SubprocessLauncher(str(store.path), None).adopt(_record(store, run_root, pid=None)) is None


def test_adopt_refuses_a_pid_that_is_not_this_jobs_runner(store, run_root):
    rec = _record(store, run_root, pid=os.getpid())
    assert SubprocessLauncher(str(store.path), None).adopt(rec) is None


def test_adopt_refuses_a_pid_that_does_not_exist(store, run_root):
    rec = _record(store, run_root, pid=_dead_pid())
    assert SubprocessLauncher(str(store.path), None).adopt(rec) is None


def test_adopt_takes_a_live_process_running_this_job_under_this_token(store, run_root):
    rec = _record(store, run_root, token=1)
    proc = _sleeper("--store", "x", "--job", rec.id, "--token", "1")
    try:
        _wait_for_cmdline(proc.pid, b"--token")
        runner = SubprocessLauncher(str(store.path), None).adopt(dataclasses.replace(rec, pid=proc.pid))
        assert isinstance(runner, ProcessRunner) and runner.pid == proc.pid
        assert runner.alive()
        assert runner.poll() is None
        other_token = SubprocessLauncher(str(store.path), None).adopt(dataclasses.replace(rec, pid=proc.pid, token=2))
        assert other_token is None
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def test_adopt_refuses_a_runner_of_another_token_whose_other_arguments_happen_to_match(store, run_root):
    """The token must be the one after --token, not any argument equal to it: this process
    runs the job under token 2 (with --noop-seconds 1), so it is not token 1's runner."""
    rec = _record(store, run_root, token=1)
    proc = _sleeper("--store", "x", "--job", rec.id, "--token", "2", "--noop-seconds", "1")
    try:
        _wait_for_cmdline(proc.pid, b"--noop-seconds")
        assert SubprocessLauncher(str(store.path), None).adopt(dataclasses.replace(rec, pid=proc.pid)) is None
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def _wait_for_cmdline(pid: int, part: bytes) -> None:
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            if part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never showed {part!r} in its cmdline")


def test_process_runner_alive_for_this_process_and_not_for_a_finished_one():
    assert ProcessRunner(os.getpid()).alive() is True
    assert ProcessRunner(os.getpid()).poll() is None
    dead = ProcessRunner(_dead_pid())
    assert dead.alive() is False
    dead.signal(0)  # a gone process group is not an error


def test_process_runner_sees_a_zombie_as_not_alive():
    proc = subprocess.Popen(["/bin/true"])
    try:
        runner = ProcessRunner(proc.pid)
        deadline = time.time() + 5
        while runner.alive() and time.time() < deadline:
            time.sleep(0.01)
        assert runner.alive() is False  # exited, not yet reaped: state Z
        assert Path(f"/proc/{proc.pid}").exists()
    finally:
        proc.wait()
