"""The lifecycle of a submitted job, as pure transitions.

    QUEUED -> STARTING -> RUNNING -> SUCCEEDED
                 |           |---> FAILED
                 |           |---> RETRYING -> QUEUED      (lost workers, preempted, retryable exit)
                 |---------------> RETRYING / FAILED      (the runner never came up)
    QUEUED / STARTING / RUNNING / RETRYING -> CANCELLED
    QUEUED -> REJECTED                                     (can never fit the cluster)
    FAILED / CANCELLED -> QUEUED                           (`ftctl resume ID`, on request only)

Terminal states are the ones nothing moves on its own; only a user's resume re-queues a
failed or cancelled job (it continues from its latest good checkpoint).

A transition that is not in the table raises: the store applies transitions with a
compare-and-swap on the current state, so two actors can never both move one job.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) cluster resources."""
        return self in (JobState.STARTING, JobState.RUNNING)


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED})

Q, S, R, T = JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.RETRYING
ALLOWED: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({S, JobState.CANCELLED, JobState.REJECTED}),
    S: frozenset({R, T, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    R: frozenset({JobState.SUCCEEDED, JobState.FAILED, T, JobState.CANCELLED}),
    T: frozenset({Q, JobState.FAILED, JobState.CANCELLED}),
    JobState.FAILED: frozenset({Q}),
    JobState.CANCELLED: frozenset({Q}),
    JobState.SUCCEEDED: frozenset(),
    JobState.REJECTED: frozenset(),
}


class IllegalTransition(Exception):
    """A job was asked to move along an edge its lifecycle does not have."""


def check_transition(current: JobState, target: JobState) -> None:
    if target not in ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "none: it is finished"
        raise IllegalTransition(f"a {current.value} job cannot become {target.value} (allowed: {allowed})")
