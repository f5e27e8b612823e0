"""Commands that talk to the controller, against a stand-in client (no Ray): what it refuses is
one line and exit 2, an unreachable controller one line and exit 1."""

from __future__ import annotations

import pytest

import orchestrator.api
from orchestrator.cli import main
from orchestrator.exitcodes import ExitCode

RUNNING = {"id": "j1", "state": "RUNNING", "reason": "", "run_dir": "/runs/j1"}
SCHEDULE = {"name": "nightly", "firings": [{"note": "no new data since the last firing"}]}


class StandInClient:
    """Answers like the controller: job j1 is running, any other job is unknown; schedules fire nothing."""

    def __init__(self, address: str | None = None, start: bool = True, **_options) -> None:
        if address == "unreachable":
            raise orchestrator.api.ControllerUnavailable("the controller is not running; start it with "
                                                         "`ftctl controller start`")

    def status(self, job_id: str) -> dict:
        if job_id != "j1":
            raise KeyError(f"no job {job_id!r}; `ftctl list` shows the jobs")
        return RUNNING

    def cancel(self, job_id: str) -> dict:
        return self.status(job_id)

    def schedule_run_now(self, name: str) -> None:
        return None

    def schedule(self, name: str) -> dict:
        return SCHEDULE


@pytest.fixture(autouse=True)
def stand_in_client(monkeypatch):
    monkeypatch.setattr(orchestrator.api, "Client", StandInClient)


def test_cancelling_a_running_job_says_it_stops_after_a_checkpoint(capsys):
    assert main(["cancel", "j1"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == "j1: RUNNING; stopping after a checkpoint"


def test_an_unknown_job_is_one_line_and_exit_2(capsys):
    assert main(["status", "nope"]) == ExitCode.INVALID
    out = capsys.readouterr()
    assert out.err.strip() == "✗ no job 'nope'; `ftctl list` shows the jobs" and not out.out


@pytest.mark.parametrize("argv", [["list"], ["logs", "j1"], ["schedule", "list"], ["resume", "j1"]])
def test_an_unreachable_controller_is_one_line_and_exit_1(capsys, argv):
    assert main([*argv, "--address", "unreachable"]) == ExitCode.FAILED
    assert capsys.readouterr().err.strip() == ("✗ the controller is not running; start it with "
                                               "`ftctl controller start`")


def test_run_now_that_queues_nothing_says_why_and_exits_1(capsys):
    assert main(["schedule", "run-now", "nightly"]) == ExitCode.FAILED
    assert "nightly: nothing queued: no new data since the last firing" in capsys.readouterr().err
