"""The exit codes of every ftctl process: the CLI, `ftctl run` and the controller's runners.

One table, because the controller reads a runner's code to decide what happens to its job
(see controller/policy.py): two meanings must never share a number.
"""

from __future__ import annotations

import enum


@enum.unique
class ExitCode(enum.IntEnum):
    OK = 0
    """The command did what it was asked."""

    FAILED = 1
    """The command or the job failed; the message or the log says why."""

    INVALID = 2
    """The job file or the arguments are invalid; nothing was run."""

    WONT_FIT = 3
    """The job can never fit the cluster (or the estimate says it cannot fit)."""

    GATE = 4
    """A forgetting gate stopped the job."""

    STALE = 5
    """A controller runner found the job's record moved on (a newer start owns it); it ran nothing."""

    PREEMPTED = 75
    """Stopped on request after a checkpoint (EX_TEMPFAIL): resume me."""

    INTERRUPTED = 130
    """Stopped by Ctrl-C (128 + SIGINT), or the job was cancelled."""
