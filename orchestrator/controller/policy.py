"""What happens to a job when its runner ends or is found gone: a pure decision.

The runner is `ftctl run` (the same code as the foreground path); its exit code and the
run dir's summary.json say how it ended. Retrying means re-queueing: the next start resumes
from the latest good checkpoint of the same run dir.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.exitcodes import ExitCode
from orchestrator.store.states import JobState


@dataclass(frozen=True)
class RunnerEnd:
    """How a runner ended. `code` is None when it vanished without an exit code (its host or
    the Ray cluster went away, or the controller restarted and found it gone)."""
    code: int | None
    summary_status: str | None = None   # summary.json "status", when the runner wrote one
    cancel_requested: bool = False


@dataclass(frozen=True)
class Decision:
    state: JobState
    reason: str
    counts_as_attempt: bool = True

    @property
    def requeue(self) -> bool:
        return self.state == JobState.RETRYING


def after_runner(end: RunnerEnd, attempts: int, max_attempts: int) -> Decision:
    """`attempts`: starts so far, this one included; `max_attempts`: the most a job gets."""
    if end.code == ExitCode.OK or (end.code is None and end.summary_status == "succeeded"):
        # Finished before a cancel could stop it: what happened is that it succeeded.
        return Decision(JobState.SUCCEEDED, "the job finished")
    if end.cancel_requested:
        return Decision(JobState.CANCELLED, "cancelled on request", counts_as_attempt=False)
    if end.code == ExitCode.GATE or end.summary_status == "stopped_by_gate":
        return Decision(JobState.FAILED, "a forgetting gate stopped the job (see forgetting.json)")
    if end.code == ExitCode.INVALID:
        return Decision(JobState.FAILED, "the job file is invalid (see the log)")
    if end.code == ExitCode.PREEMPTED or (end.code is None and end.summary_status == "preempted"):
        # Saved a checkpoint on SIGTERM: resuming is the point, and it was not its fault.
        return Decision(JobState.RETRYING, "preempted after a checkpoint; re-queued to resume",
                        counts_as_attempt=False)
    if end.code is None:
        if attempts < max_attempts:
            return Decision(JobState.RETRYING, f"its runner was lost (attempt {attempts} of {max_attempts}); "
                                               f"re-queued to resume from the latest checkpoint")
        return Decision(JobState.FAILED, f"its runner was lost {attempts} times (max_attempts {max_attempts})")
    # Exit 1: the job itself failed after its own in-job restarts (checkpoint.max_failures).
    return Decision(JobState.FAILED, f"the job failed (exit {end.code}); see the log")


def on_controller_start(state: JobState, runner_alive: bool, end: RunnerEnd, attempts: int,
                        max_attempts: int) -> Decision | None:
    """A restarted controller meets a job it did not see end. None: leave it (still running,
    or not active); else what to do with it."""
    if not state.active:
        return None
    if runner_alive:
        return None  # adopt it: the runner kept going while the controller was away
    trusted = (ExitCode.OK, ExitCode.INVALID, ExitCode.GATE, ExitCode.PREEMPTED)
    if end.code not in trusted and end.summary_status != "succeeded":
        # It failed while nobody watched: most likely with the cluster it ran on (a Ray
        # restart takes every runner down with it). Resuming from a checkpoint is safe; a
        # job that fails on its own fails again, watched, within max_attempts.
        end = RunnerEnd(code=None, summary_status=None, cancel_requested=end.cancel_requested)
    return after_runner(end, attempts, max_attempts)
