"""`ftctl schedule ...` and `ftctl refresh`: adapters refreshed on a cron schedule.

`schedule` talks to the controller through Ray, since schedules fire inside it; `schedule
render` and `refresh` serve clusters without one (a scrontab entry or a RayCronJob runs
`ftctl refresh NAME` in the foreground).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from orchestrator.cli.arguments import ADDRESS, AS_JSON, HOME, NAME, OVERRIDES, load_job, registry_under, store_under
from orchestrator.cli.command import Arg, Group, command
from orchestrator.cli.output import console, fail, print_problems, print_rows, refuse
from orchestrator.cli.refusals import with_controller
from orchestrator.exitcodes import ExitCode

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec

SCHEDULE = Group("schedule", "Scheduled adapter refreshes (fired by the controller).", metavar="ACTION")
BARE_OVERRIDES = Arg("overrides", nargs="*", metavar="key.sub=value")


def refreshable_job(name: str, job: Path, overrides: list[str], cron: str | None = None) -> JobSpec | None:
    """The job file as a refreshable JobSpec, or None after saying what is wrong (a bad
    schedule name or cron, an invalid job, or a job with nothing to gate on)."""
    from orchestrator.cron import parse_cron
    from orchestrator.refresh.jobs import check_refreshable
    from orchestrator.store.schedules import ScheduleError, check_name

    try:
        check_name(name)
        if cron is not None:
            parse_cron(cron)
        spec = load_job(job, overrides)
    except (ValueError, ScheduleError) as err:
        fail(escape(str(err)))
        return None
    if spec is None:
        return None
    problems = check_refreshable(spec)
    if problems:
        fail(f"{job} cannot be refreshed on a schedule: " + "; ".join(problems))
        return None
    return spec


def slot_time(t: float | None) -> str:
    """A schedule's slot as UTC date and time; "-" for none."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


@command("add",
         Arg("name", help="the schedule, and the adapter name its versions register under"),
         Arg("--cron", required=True, help='five-field cron in UTC, e.g. "0 3 * * *"'),
         Arg("--job", type=Path, required=True, help="job file (lora/qlora, with data.eval and forgetting gates)"),
         OVERRIDES,
         Arg("--missed", choices=["catch-up", "skip"], default="catch-up",
             help="slots missed while no controller ran: fire once for them (catch-up) or not (skip)"),
         Arg("--priority", type=int, default=0),
         Arg("--team", default=""),
         ADDRESS,
         group=SCHEDULE)
def cmd_schedule_add(name: str, cron: str, job: Path, overrides: list[str], missed: str, priority: int, team: str,
                     address: str | None) -> int:
    """Refresh adapter NAME on a cron schedule (UTC): each firing trains the job warm-started
    from the promoted version, on the data its glob matches then, and promotes the result
    only when every gate passes."""
    if refreshable_job(name, job, overrides, cron) is None:
        return ExitCode.INVALID

    def add(client) -> None:
        s = client.schedule_add(name, cron, job, overrides, missed, priority, team)
        console.print(f"schedule {name}: {cron} (UTC), missed firings: {missed}; next {slot_time(s['next_slot'])}")

    return with_controller(address, add, start=True)


@command("list", AS_JSON, ADDRESS, group=SCHEDULE)
def cmd_schedule_list(as_json: bool, address: str | None) -> int:
    """Schedules, when each fires next, and their latest firings."""
    def show(client) -> None:
        def cells(s: dict) -> list[str]:
            last = s["firings"][-1] if s["firings"] else None
            return [s["name"], s["cron"], s["missed"], "paused" if s["paused"] else "active", slot_time(s["next_slot"]),
                    f"{slot_time(last['slot'])} {last['kind']} {last['job_id'] or ''} {escape(last['note'])}"
                    if last else "-"]

        print_rows(client.schedules(), as_json, ("schedule", "cron", "missed", "state", "next", "last firing"), cells)

    return with_controller(address, show, start=False)


@command("show", NAME, AS_JSON, ADDRESS, group=SCHEDULE)
def cmd_schedule_show(name: str, as_json: bool, address: str | None) -> int:
    """One schedule and every firing it made (slot, kind, job, note)."""
    def show(client) -> None:
        s = client.schedule(name)
        if as_json:
            print(json.dumps(s, indent=2))
            return
        console.print(f"{s['name']}: {s['cron']} (UTC), missed: {s['missed']}, "
                      f"{'paused' if s['paused'] else 'next ' + slot_time(s['next_slot'])}")
        for f in s["firings"]:
            console.print(f"  {slot_time(f['slot'])} {f['kind']:<9} {f['job_id'] or '-':<24} {escape(f['note'])}",
                          soft_wrap=True)

    return with_controller(address, show, start=False)


@command("remove", NAME, ADDRESS, group=SCHEDULE)
def cmd_schedule_remove(name: str, address: str | None) -> int:
    """Remove a schedule (its adapter versions stay)."""
    def remove(client) -> None:
        client.schedule_remove(name)
        console.print(f"schedule {name} removed (its adapter versions stay in the registry)")

    return with_controller(address, remove, start=False)


def set_paused(name: str, address: str | None, paused: bool) -> int:
    """Pause or resume a schedule and say when it fires next."""
    def act(client) -> None:
        s = client.schedule_pause(name, paused)
        console.print(f"schedule {name} {'paused' if s['paused'] else 'resumed; next ' + slot_time(s['next_slot'])}")

    return with_controller(address, act, start=False)


@command("pause", NAME, ADDRESS, group=SCHEDULE)
def cmd_schedule_pause(name: str, address: str | None) -> int:
    """Stop firing until resumed."""
    return set_paused(name, address, True)


@command("resume", NAME, ADDRESS, group=SCHEDULE)
def cmd_schedule_resume(name: str, address: str | None) -> int:
    """Fire again from the next slot (slots passed while paused are not made up)."""
    return set_paused(name, address, False)


@command("run-now", NAME, ADDRESS, group=SCHEDULE)
def cmd_schedule_run_now(name: str, address: str | None) -> int:
    """Fire one refresh now, outside the cron."""
    def run_now(client) -> int | None:
        job_id = client.schedule_run_now(name)
        note = client.schedule(name)["firings"][-1]["note"]
        if not job_id:
            return fail(f"{name}: nothing queued: {escape(note)}")
        console.print(f"{name}: queued {job_id} ({note})")
        return None

    return with_controller(address, run_now, start=False)


@command("render", NAME,
         Arg("--cron", required=True),
         Arg("--job", type=Path, required=True),
         BARE_OVERRIDES,
         Arg("--target", choices=["slurm", "k8s"], required=True),
         Arg("--image", default="ftctl:latest", help="k8s: container image with ftctl installed"),
         Arg("--namespace", default="default"),
         Arg("--pvc", default="ftctl-runs", help="k8s: PVC holding FTCTL_HOME (the registry) and run dirs"),
         Arg("--cpus", type=int, default=None, help="slurm: CPUs for the refresh (default: the job's)"),
         Arg("--time", dest="time_limit", default=None, help="slurm: time limit, e.g. 02:00:00"),
         group=SCHEDULE)
def cmd_schedule_render(name: str, cron: str, job: Path, overrides: list[str], target: str, image: str,
                        namespace: str, pvc: str, cpus: int | None, time_limit: str | None) -> int:
    """For clusters without a long-running controller: print a Slurm scrontab entry or a
    KubeRay RayCronJob that runs `ftctl refresh NAME` on the schedule."""
    spec = refreshable_job(name, job, overrides, cron)
    if spec is None:
        return ExitCode.INVALID
    from orchestrator.launchers.errors import LaunchError
    from orchestrator.launchers.kubernetes import K8sOptions, render_manifests, to_yaml
    from orchestrator.launchers.slurm import render_scrontab

    try:
        if target == "slurm":
            print(render_scrontab(name, cron, job.resolve(), overrides, spec, cpus=cpus, time_limit=time_limit))
        else:
            options = K8sOptions(image=image, namespace=namespace, pvc=pvc, cron=cron, refresh=name)
            print(to_yaml(render_manifests(spec, options)))
    except LaunchError as err:
        return refuse(err.problems)
    return ExitCode.OK


@command("refresh",
         Arg("name", help="adapter name in the registry"),
         Arg("--job", type=Path, required=True),
         BARE_OVERRIDES,
         Arg("--address", default=None, help="Ray address (default: embedded local Ray)"),
         HOME,
         Arg("--run-dir", type=Path, default=None, help="default runs/<name>-<timestamp>"))
def cmd_refresh(name: str, job: Path, overrides: list[str], address: str | None, home: Path | None,
                run_dir: Path | None = None) -> int:
    """Run one refresh of adapter NAME in the foreground (what a scrontab entry or a RayCronJob
    runs): warm-start from the promoted version, train on what the data glob matches now,
    register, gate and promote."""
    from orchestrator.data.errors import DataError
    from orchestrator.refresh.jobs import refresh_spec
    from orchestrator.spec import SpecError

    spec = refreshable_job(name, job, overrides)
    if spec is None:
        return ExitCode.INVALID
    try:
        refreshed = refresh_spec(spec.model_dump(mode="json"), name, registry_under(home).head(name))
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    except DataError as err:
        return fail(escape(str(err)))
    from orchestrator.pipeline import default_run_dir, run_job

    return run_job(refreshed, run_dir=run_dir or default_run_dir(refreshed), address=address, console=console,
                   store=store_under(home))
