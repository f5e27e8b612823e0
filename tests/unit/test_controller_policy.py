"""What happens to a job when its runner ends, or when a restarted controller finds it."""

from __future__ import annotations

import pytest

from orchestrator.controller.policy import Decision, RunnerEnd, after_runner, on_controller_start
from orchestrator.exitcodes import ExitCode
from orchestrator.store.states import JobState, check_transition


def test_the_exit_codes_match_what_ftctl_run_returns():
    assert (ExitCode.OK, ExitCode.FAILED, ExitCode.INVALID, ExitCode.GATE, ExitCode.PREEMPTED) == (0, 1, 2, 4, 75)


# -------------------------------------------------------------------- after_runner


def test_a_job_that_finished_before_its_cancel_took_effect_succeeded():
    d = after_runner(RunnerEnd(0, "succeeded", True), attempts=1, max_attempts=3)
    assert d.state is JobState.SUCCEEDED


@pytest.mark.parametrize("end", [RunnerEnd(1, cancel_requested=True),
                                 RunnerEnd(4, "stopped_by_gate", True), RunnerEnd(75, cancel_requested=True),
                                 RunnerEnd(None, cancel_requested=True)])
def test_a_cancel_request_wins_over_how_an_unfinished_runner_ended(end):
    d = after_runner(end, attempts=3, max_attempts=3)
    assert d.state is JobState.CANCELLED
    assert not d.requeue and not d.counts_as_attempt
    assert "cancel" in d.reason


def test_exit_zero_succeeds():
    d = after_runner(RunnerEnd(0), attempts=1, max_attempts=3)
    assert d.state is JobState.SUCCEEDED and not d.requeue


@pytest.mark.parametrize("end", [RunnerEnd(4), RunnerEnd(4, "stopped_by_gate"), RunnerEnd(1, "stopped_by_gate"),
                                 RunnerEnd(None, "stopped_by_gate")])
def test_a_forgetting_gate_stop_fails_the_job_and_says_so(end):
    d = after_runner(end, attempts=1, max_attempts=3)
    assert d.state is JobState.FAILED and not d.requeue
    assert "forgetting gate" in d.reason


def test_an_invalid_job_file_fails_without_retry():
    d = after_runner(RunnerEnd(2), attempts=1, max_attempts=3)
    assert d.state is JobState.FAILED and "invalid" in d.reason


def test_preemption_requeues_without_using_up_an_attempt():
    d = after_runner(RunnerEnd(75), attempts=3, max_attempts=3)
    assert d.state is JobState.RETRYING and d.requeue
    assert d.counts_as_attempt is False
    assert "preempted" in d.reason


def test_a_lost_runner_is_retried_while_attempts_remain():
    for attempts in (1, 2):
        d = after_runner(RunnerEnd(None), attempts=attempts, max_attempts=3)
        assert d.state is JobState.RETRYING and d.requeue and d.counts_as_attempt
        assert f"attempt {attempts} of 3" in d.reason


def test_a_lost_runner_fails_the_job_once_attempts_are_used_up():
    d = after_runner(RunnerEnd(None), attempts=3, max_attempts=3)
    assert d.state is JobState.FAILED and not d.requeue
    assert "lost 3 times" in d.reason and "max_attempts 3" in d.reason


def test_a_lost_runner_whose_summary_says_succeeded_succeeded():
    d = after_runner(RunnerEnd(None, "succeeded"), attempts=3, max_attempts=3)
    assert d.state is JobState.SUCCEEDED


def test_exit_one_fails_and_points_at_the_log():
    d = after_runner(RunnerEnd(1), attempts=1, max_attempts=3)
    assert d.state is JobState.FAILED and not d.requeue
    assert "exit 1" in d.reason and "log" in d.reason


def test_an_unknown_exit_code_fails_rather_than_retrying_forever():
    d = after_runner(RunnerEnd(137), attempts=1, max_attempts=3)
    assert d.state is JobState.FAILED and "exit 137" in d.reason


def test_every_decision_is_a_legal_move_for_a_job_whose_runner_ended():
    # The runner may end (or vanish) before it reported RUNNING, so STARTING must allow it too.
    ends = [RunnerEnd(code, status, cancel) for code in (0, 1, 2, 4, 75, 137, None)
            for status in (None, "succeeded", "failed", "stopped_by_gate") for cancel in (False, True)]
    for end in ends:
        for attempts in (1, 3):
            target = after_runner(end, attempts, max_attempts=3).state
            check_transition(JobState.RUNNING, target)
            check_transition(JobState.STARTING, target)


# -------------------------------------------------------------- on_controller_start


@pytest.mark.parametrize("state", [s for s in JobState if not s.active])
def test_a_restarted_controller_leaves_inactive_jobs_alone(state):
    assert on_controller_start(state, runner_alive=False, end=RunnerEnd(None), attempts=1, max_attempts=3) is None


@pytest.mark.parametrize("state", [JobState.STARTING, JobState.RUNNING])
def test_a_restarted_controller_adopts_a_runner_that_is_still_alive(state):
    assert on_controller_start(state, runner_alive=True, end=RunnerEnd(None), attempts=1, max_attempts=3) is None


@pytest.mark.parametrize("state", [JobState.STARTING, JobState.RUNNING])
@pytest.mark.parametrize("end,attempts", [(RunnerEnd(None), 1), (RunnerEnd(None), 3), (RunnerEnd(0), 1),
                                          (RunnerEnd(None, "succeeded"), 3), (RunnerEnd(4), 1),
                                          (RunnerEnd(None, cancel_requested=True), 1)])
def test_a_restarted_controller_decides_a_dead_runner_as_if_it_had_seen_it_end(state, end, attempts):
    d = on_controller_start(state, runner_alive=False, end=end, attempts=attempts, max_attempts=3)
    assert isinstance(d, Decision)
    assert d == after_runner(end, attempts, 3)
