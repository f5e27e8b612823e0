"""`ftctl submit`, `list`, `status`, `logs`, `cancel` and `controller`: jobs on the cluster's controller."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.arguments import ADDRESS, AS_JSON, JOB_FILE, OVERRIDES, load_job
from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console, fail, refuse
from orchestrator.cli.refusals import with_controller
from orchestrator.exitcodes import ExitCode

JOB_ID = Arg("job_id", help="job ID")


def print_job(record: dict, note: str = "") -> int:
    """One line: the job's ID, state and why it is in it, then `note`."""
    reason = f" ({escape(record['reason'])})" if record.get("reason") else ""
    console.print(f"{record['id']}: {record['state']}{reason}" + (f"; {note}" if note else ""), soft_wrap=True)
    return ExitCode.OK


@command("submit", JOB_FILE, OVERRIDES,
         Arg("--priority", type=int, default=0, help="higher runs first (default 0); FIFO within a priority"),
         Arg("--team", default="", help="team the job counts against for quotas"),
         Arg("--wait", action="store_true", help="wait for the job to end; exit by its final state"),
         Arg("--address", default=None, help="Ray address (default: $RAY_ADDRESS or the local cluster)"),
         exits="Exit 0 when queued (or, with --wait, succeeded), 2 for an invalid job, 3 when it can never fit the "
               "cluster.")
def cmd_submit(job: Path, overrides: list[str], priority: int, team: str, wait: bool, address: str | None) -> int:
    """Queue a job on the cluster's controller (started if absent); prints its ID."""
    if load_job(job, overrides) is None:
        return ExitCode.INVALID

    def submit(client) -> int:
        record = client.submit(job, overrides, priority=priority, team=team)
        print_job(record, f"run dir {record['run_dir']}")
        if record["state"] == "REJECTED":
            return ExitCode.WONT_FIT
        if not wait:
            return ExitCode.OK
        final = client.wait(record["id"])
        print_job(final)
        return {"SUCCEEDED": ExitCode.OK, "CANCELLED": ExitCode.INTERRUPTED}.get(final["state"], ExitCode.FAILED)

    return with_controller(address, submit)


@command("list",
         Arg("--state", action="append", default=[], dest="states", metavar="STATE",
             help="only jobs in this state (repeatable)"),
         Arg("--limit", type=int, default=None, help="at most this many"),
         AS_JSON,
         ADDRESS)
def cmd_list(states: list[str], limit: int | None, as_json: bool, address: str | None) -> int:
    """Jobs the controller knows, newest first."""
    from rich.table import Table

    def show(client) -> None:
        records = client.list([s.upper() for s in states] or None, limit)
        if as_json:
            print(json.dumps(records, indent=2))
            return
        table = Table()
        table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in records), default=2))
        for column in ("state", "priority", "team", "CPU", "GPU", "attempts", "age"):
            table.add_column(column, no_wrap=True)
        table.add_column("reason", overflow="fold")
        for r in records:
            age = time.time() - r["submitted_at"]
            table.add_row(r["id"], r["state"], str(r["priority"]), r["team"], f"{r['cpus']:g}", f"{r['gpus']:g}",
                          str(r["attempts"]), f"{age / 60:.0f}m" if age >= 60 else f"{age:.0f}s", escape(r["reason"]))
        console.print(table)

    return with_controller(address, show, start=False)


@command("status", Arg("job_id", help="job ID (from submit or list)"), AS_JSON, ADDRESS)
def cmd_status(job_id: str, as_json: bool, address: str | None) -> int:
    """One job's state, history and (when it has run) summary."""
    def show(client) -> None:
        status = client.status(job_id)
        if as_json:
            print(json.dumps(status, indent=2))
            return
        print_job(status)
        gpus = f", {status['gpus']:g} GPU" if status["gpus"] else ""
        console.print(f"  priority {status['priority']}, team {status['team'] or '-'}, needs {status['cpus']:g} CPU"
                      f"{gpus}, attempts {status['attempts']}, run dir {status['run_dir']}")
        for e in status["events"]:
            console.print(f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['from_state'] or '':>9} -> "
                          f"{e['to_state']:<9} {escape(e['reason'])}")
        summary = status.get("summary")
        if summary:
            console.print(f"  summary: {summary.get('status')}, {summary.get('steps')} steps, final loss "
                          f"{summary.get('final_loss')}")

    return with_controller(address, show, start=False)


@command("logs", JOB_ID, Arg("-f", "--follow", action="store_true", help="follow until the job ends"), ADDRESS)
def cmd_logs(job_id: str, follow: bool, address: str | None) -> int:
    """A job's driver log; -f follows it until the job ends."""
    def show(client) -> None:
        for chunk in client.logs(job_id, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    return with_controller(address, show, start=False)


@command("cancel", JOB_ID, ADDRESS)
def cmd_cancel(job_id: str, address: str | None) -> int:
    """Cancel a job: a queued one at once, a running one after it saves a checkpoint (SIGTERM)."""
    def cancel(client) -> int:
        record = client.cancel(job_id)
        # A running job stays RUNNING until its runner has saved a checkpoint and stopped.
        running = client.status(job_id)["state"] == "RUNNING"
        return print_job(record, "stopping after a checkpoint" if running else "")

    return with_controller(address, cancel, start=False)


@command("controller",
         Arg("action", choices=["start", "stop", "status"]),
         Arg("--address", default=None, help="Ray address (start: a local head is started when none runs)"),
         Arg("--num-cpus", type=int, default=None, help="start: CPUs of the local head it starts"),
         Arg("--port", type=int, default=None,
             help="start: port of the local head it starts (default 6379; pick another when that one is taken)"),
         Arg("--quota", action="append", default=[], dest="quotas", metavar="TEAM=CPUS[:GPUS]",
             help="start: the most a team's running jobs may hold together (repeatable)"))
def cmd_controller(action: str, address: str | None, num_cpus: int | None, port: int | None,
                   quotas: list[str]) -> int:
    """Start, stop or show the controller (a detached Ray actor on the cluster's head node)."""
    from orchestrator.api import Client, ControllerUnavailable, connect, stop_controller

    if port is not None and not 1024 <= port <= 65535:
        return refuse([f"--port must be a port number from 1024 to 65535 (got {port})"])
    if num_cpus is not None and num_cpus < 1:
        return refuse([f"--num-cpus must be at least 1 (got {num_cpus})"])
    limits = {}
    for item in quotas:
        team, _, amount = item.partition("=")
        cpus, _, gpus = amount.partition(":")
        try:
            limits[team] = {"cpus": float(cpus), "gpus": float(gpus or 0)}
        except ValueError:
            return fail(f"--quota {item!r}: write TEAM=CPUS or TEAM=CPUS:GPUS, e.g. research=8:2", ExitCode.INVALID)
    try:
        if action == "stop":
            connect(address, start_ray=False)
            console.print("controller stopped (job records and running jobs are kept)" if stop_controller()
                          else "no controller was running")
            return ExitCode.OK
        if action == "start":
            connect(address, start_ray=True, num_cpus=num_cpus, port=port)
        client = Client(address=address, start=action == "start", **({"quotas": limits} if limits else {}))
        console.print(json.dumps(client.info(), indent=2))
        return ExitCode.OK
    except ControllerUnavailable as err:
        return fail(escape(str(err)))
