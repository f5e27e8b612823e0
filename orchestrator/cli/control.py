"""`ftctl submit`, `list`, `status`, `logs`, `cancel` and `controller`: jobs on the cluster's controller."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.markup import escape

from orchestrator.cli.arguments import ADDRESS, AS_JSON, JOB_FILE, OVERRIDES, load_job
from orchestrator.cli.command import Arg, command
from orchestrator.cli.output import console, err_console, fail, note, refuse
from orchestrator.cli.refusals import with_controller
from orchestrator.exitcodes import ExitCode

JOB_ID = Arg("job_id", help="job ID")


def print_job(record: dict, note: str = "", to_stderr: bool = False) -> int:
    """One line: the job's ID, state and why it is in it, then `note`."""
    reason = f" ({escape(record['reason'])})" if record.get("reason") else ""
    (err_console if to_stderr else console).print(f"{record['id']}: {record['state']}{reason}"
                                                  + (f"; {note}" if note else ""), soft_wrap=True)
    return ExitCode.OK


@command("submit", JOB_FILE, OVERRIDES,
         Arg("--priority", type=int, default=0, help="higher runs first (default 0); FIFO within a priority"),
         Arg("--team", default="", help="team the job counts against for quotas"),
         Arg("--wait", action="store_true", help="wait for the job to end; exit by its final state"),
         Arg("--json", action="store_true", dest="as_json", help="print the job's record as JSON instead of its ID"),
         Arg("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else ftctl's own local head)"),
         exits="Exit 0 when queued (or, with --wait, succeeded), 2 for an invalid job, 3 when it can never fit the "
               "cluster.")
def cmd_submit(job: Path, overrides: list[str], priority: int, team: str, wait: bool, as_json: bool,
               address: str | None) -> int:
    """Queue a job on the cluster's controller (started if absent); prints only its ID on
    stdout (id=$(ftctl submit ...)), or its record with --json; the rest goes to stderr."""
    if load_job(job, overrides) is None:
        return ExitCode.INVALID

    def submit(client) -> int:
        record = client.submit(job, overrides, priority=priority, team=team)
        print(json.dumps(record, indent=2) if as_json else record["id"], flush=True)
        print_job(record, f"run dir {record['run_dir']}", to_stderr=True)
        if record["state"] == "REJECTED":
            return ExitCode.WONT_FIT
        if not wait:
            return ExitCode.OK
        final = client.wait(record["id"])
        print_job(final, to_stderr=True)
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
         Arg("--address", default=None,
             help="Ray address (default: $RAY_ADDRESS, else ftctl's own local head, which start starts)"),
         Arg("--num-cpus", type=int, default=None, help="start: CPUs of the local head it starts"),
         Arg("--port", type=int, default=None,
             help="start: GCS port of the local head it starts (default: a free one)"),
         Arg("--quota", action="append", default=[], dest="quotas", metavar="TEAM=CPUS[:GPUS]",
             help="start: the most a team's running jobs may hold together (repeatable)"),
         Arg("--ray", action="store_true", dest="stop_ray",
             help="stop: also stop the local Ray head ftctl started (never a cluster it did not start)"),
         Arg("--force", action="store_true", help="stop --ray: even while jobs run (they fail over to a restart)"),
         exits="Exit 0 on success, 1 when the cluster cannot be reached or started, 2 for a refused request.")
def cmd_controller(action: str, address: str | None, num_cpus: int | None, port: int | None,
                   quotas: list[str], stop_ray: bool, force: bool) -> int:
    """Start, stop or show the controller (a detached Ray actor on the cluster's head node)
    and the local Ray head ftctl runs it on."""
    from orchestrator.api import Client, ControllerUnavailable, cluster_info, connect

    problems = []
    if port is not None and not 1024 <= port <= 65535:
        problems.append(f"--port must be a port number from 1024 to 65535 (got {port})")
    if num_cpus is not None and num_cpus < 1:
        problems.append(f"--num-cpus must be at least 1 (got {num_cpus})")
    if action != "stop" and (stop_ray or force):
        problems.append("--ray and --force go with `controller stop`")
    elif force and not stop_ray:
        problems.append("--force goes with --ray: it stops ftctl's Ray head even while jobs run")
    if problems:
        return refuse(problems)
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
            return _stop(address, stop_ray, force)
        if action == "start":
            connect(address, start_ray=True, num_cpus=num_cpus, port=port, say=note)
        client = Client(address=address, start=action == "start", **({"quotas": limits} if limits else {}))
        print(json.dumps(client.info() | {"ray": cluster_info()}, indent=2))  # JSON unwrapped, for scripts
        return ExitCode.OK
    except ControllerUnavailable as err:
        return fail(escape(str(err)))


def _stop(address: str | None, stop_ray: bool, force: bool) -> int:
    """`controller stop [--ray]`: the controller, then (with --ray) ftctl's own head."""
    import os

    import ray

    from orchestrator import raycluster
    from orchestrator.api import Client, ControllerUnavailable, connect, stop_controller
    from orchestrator.spec.paths import ftctl_home

    home = ftctl_home()
    if stop_ray and (address or os.environ.get("RAY_ADDRESS")):
        return fail(f"--ray stops only the local head ftctl started; the cluster at "
                    f"{escape(address or os.environ['RAY_ADDRESS'])} is stopped by whoever started it", ExitCode.INVALID)
    try:
        connect(address, start_ray=False)
    except ControllerUnavailable as err:
        if not stop_ray:
            return fail(escape(str(err)))
        # Nothing answers: what is left of ftctl's head (a record, stray processes) goes.
        head = raycluster.stop_head(home, grace_s=5.0)
        console.print(f"no Ray head of ftctl's was running{'; its stale record is removed' if head else ''}")
        return ExitCode.OK
    if stop_ray and not force:
        try:
            active = Client(start=False).list(["RUNNING", "STARTING"])
        except ControllerUnavailable:  # no controller: no jobs it runs
            active = []
        if active:
            return fail(f"{len(active)} job(s) are running ({', '.join(r['id'] for r in active[:5])}); stopping Ray "
                        "would stop them: cancel them first, or pass --force (they restart from their checkpoints "
                        "on the next start)", ExitCode.INVALID)
    console.print("controller stopped (job records and running jobs are kept)" if stop_controller()
                  else "no controller was running")
    if stop_ray:
        ray.shutdown()
        head = raycluster.stop_head(home)
        console.print(f"stopped {head.describe()}" if head else "no Ray head of ftctl's was running")
    return ExitCode.OK

