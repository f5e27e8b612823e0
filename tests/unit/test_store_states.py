"""Job lifecycle: which state changes are legal, and what an illegal one tells the operator."""

from __future__ import annotations

import pytest

from orchestrator.store.states import ALLOWED, TERMINAL, IllegalTransition, JobState, check_transition

NON_TERMINAL = [s for s in JobState if s not in TERMINAL]


def test_every_state_has_a_row_in_the_table():
    assert set(ALLOWED) == set(JobState)


@pytest.mark.parametrize("finished", [JobState.SUCCEEDED, JobState.REJECTED])
def test_a_succeeded_or_rejected_job_can_never_move_again(finished):
    assert finished.terminal and not finished.active
    assert ALLOWED[finished] == frozenset()
    for target in JobState:
        with pytest.raises(IllegalTransition):
            check_transition(finished, target)


@pytest.mark.parametrize("finished", [JobState.FAILED, JobState.CANCELLED])
def test_a_failed_or_cancelled_job_can_only_be_resumed_into_the_queue(finished):
    # `ftctl resume ID`: the one way out of a finished state, and only back to QUEUED.
    assert finished.terminal and not finished.active
    check_transition(finished, JobState.QUEUED)
    for target in JobState:
        if target is not JobState.QUEUED:
            with pytest.raises(IllegalTransition, match="allowed: QUEUED"):
                check_transition(finished, target)


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_every_unfinished_job_can_be_cancelled(state):
    assert not state.terminal
    check_transition(state, JobState.CANCELLED)


def test_terminal_states_are_exactly_the_four_finished_ones():
    assert {s for s in JobState if s.terminal} == {
        JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED}


def test_only_starting_and_running_jobs_hold_resources():
    assert {s for s in JobState if s.active} == {JobState.STARTING, JobState.RUNNING}


def test_a_queued_job_cannot_skip_starting_and_jump_to_running():
    with pytest.raises(IllegalTransition):
        check_transition(JobState.QUEUED, JobState.RUNNING)


def test_only_a_queued_job_can_be_rejected():
    for state in JobState:
        if state is JobState.QUEUED:
            check_transition(state, JobState.REJECTED)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(state, JobState.REJECTED)


def test_illegal_transition_names_both_states_and_what_is_allowed():
    with pytest.raises(IllegalTransition) as err:
        check_transition(JobState.QUEUED, JobState.RUNNING)
    message = str(err.value)
    assert "QUEUED" in message and "RUNNING" in message
    assert "allowed: CANCELLED, REJECTED, STARTING" in message


def test_illegal_transition_from_a_finished_job_says_it_is_finished():
    with pytest.raises(IllegalTransition) as err:
        check_transition(JobState.SUCCEEDED, JobState.QUEUED)
    message = str(err.value)
    assert "SUCCEEDED" in message and "QUEUED" in message
    assert "finished" in message


def walk(*states: JobState) -> None:
    for current, target in zip(states, states[1:]):
        check_transition(current, target)


def test_the_happy_path_is_legal():
    walk(JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED)


def test_a_retry_path_goes_back_through_the_queue_and_is_legal():
    walk(JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.RETRYING,
         JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.FAILED)


def test_a_runner_that_never_came_up_can_retry_or_fail_from_starting():
    walk(JobState.STARTING, JobState.RETRYING, JobState.QUEUED)
    check_transition(JobState.STARTING, JobState.FAILED)


def test_a_retrying_job_cannot_start_without_being_queued_again():
    for target in (JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED):
        with pytest.raises(IllegalTransition):
            check_transition(JobState.RETRYING, target)
