"""The controller: carries out the pure decisions (scheduler, policy) against the JobStore
and the runner processes. Plain Python: the Ray actor (actor.py) wraps it, tests drive it
with a fake launcher and a fake capacity.

One round (`tick`): look at every runner (ended? cancel asked?), then start what the
scheduler picks. A restarted controller first meets the jobs it did not see end
(`reconcile`): a runner still alive is adopted, a dead one is decided by the policy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from orchestrator.controller import policy
from orchestrator.controller.runner import read_exit
from orchestrator.controller.scheduler import never_fits, plan
from orchestrator.rundir import RunDir
from orchestrator.store.jobs import JobRecord, SQLiteJobStore, StaleUpdate
from orchestrator.store.resources import Resources
from orchestrator.store.states import JobState

ACTIVE = (JobState.STARTING, JobState.RUNNING)


class Runner(Protocol):
    pid: int

    def poll(self) -> int | None: ...        # exit code once ended, else None
    def alive(self) -> bool: ...
    def signal(self, sig: int) -> None: ...  # to the runner's whole process group


class Launcher(Protocol):
    def launch(self, record: JobRecord) -> Runner: ...
    def adopt(self, record: JobRecord) -> Runner | None: ...  # the runner of an earlier controller, if alive


@dataclass
class Watched:
    runner: Runner
    token: int
    term_sent_at: float | None = None


@dataclass
class ControllerSettings:
    max_attempts: int = 3             # starts per job, lost runners included (preemptions excluded)
    cancel_grace_s: float = 120.0     # SIGTERM -> SIGKILL for a cancelled job
    quotas: dict[str, Resources] = field(default_factory=dict)
    page: int = 256                   # queued jobs read per scheduling page


class Controller:
    def __init__(self, store: SQLiteJobStore, launcher: Launcher, capacity: Callable[[], Resources],
                 run_root: Path, settings: ControllerSettings | None = None, clock: Callable[[], float] = time.time):
        from orchestrator.store.registry import Registry
        from orchestrator.store.schedules import ScheduleStore

        self.store = store
        self.schedules = ScheduleStore(store)
        self.registry = Registry(store)
        self.clock = clock
        self._next_slots: dict[tuple[str, str, float], float] = {}
        self.launcher = launcher
        self.capacity = capacity
        self.run_root = Path(run_root).resolve()
        self.settings = settings or ControllerSettings()
        self.watched: dict[str, Watched] = {}
        self.lock = threading.RLock()
        self.last_plan_seconds = 0.0
        self.reconcile()

    # ------------------------------------------------------------------ requests

    def submit(self, name: str, spec: dict[str, Any], need: Resources, priority: int = 0,
               team: str = "") -> JobRecord:
        with self.lock:
            import uuid

            job_id = f"{name}-{uuid.uuid4().hex[:8]}"
            run_dir = self.run_dir_for(job_id)
            record = self.store.add(name, spec, str(run_dir), need, priority, team, job_id=job_id)
            reason = never_fits(need, self.capacity())
            if reason:
                record = self.store.move(job_id, JobState.QUEUED, JobState.REJECTED, reason)
            return record

    def cancel(self, job_id: str) -> JobRecord:
        with self.lock:
            record = self.store.get(job_id)
            if record.state in (JobState.QUEUED, JobState.RETRYING):
                return self.store.move(job_id, record.state, JobState.CANCELLED, "cancelled on request")
            if record.state.active:
                return self.store.request_cancel(job_id)  # the next tick stops its runner
            return record

    def resume(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again; it resumes from its latest good checkpoint."""
        with self.lock:
            record = self.store.get(job_id)
            if record.state not in (JobState.FAILED, JobState.CANCELLED):
                raise StaleUpdate(f"job {job_id} is {record.state.value}; only FAILED or CANCELLED jobs are resumed")
            return self.store.move(job_id, record.state, JobState.QUEUED, "resumed on request", cancel_requested=0,
                                   attempts=0)

    def run_dir_for(self, job_id: str) -> Path:
        run_dir = (self.run_root / job_id).resolve()
        if run_dir.parent != self.run_root:
            raise ValueError(f"job id {job_id!r} would put its run dir outside {self.run_root}")
        return run_dir

    # -------------------------------------------------------------------- rounds

    def reconcile(self) -> None:
        """Meet the active jobs an earlier controller left: adopt live runners, decide dead ones."""
        with self.lock:
            for record in self.store.list(ACTIVE):
                runner = self.launcher.adopt(record)
                if runner is not None and runner.alive():
                    self.watched[record.id] = Watched(runner, record.token)
                    continue
                end = policy.RunnerEnd(code=read_exit(Path(record.run_dir), record.token),
                                       summary_status=_summary_status(record), cancel_requested=record.cancel_requested)
                decision = policy.on_controller_start(record.state, False, end, record.attempts,
                                                      self.settings.max_attempts)
                self._carry_out(record, decision, end.code)
            for record in self.store.list([JobState.RETRYING]):
                self._requeue(record)

    def tick(self) -> dict[str, Any]:
        with self.lock:
            self._watch_runners()
            fired = self.fire_schedules()
            return {**self._schedule(), "fired": fired}

    # ----------------------------------------------------------------- schedules

    def fire_schedules(self) -> list[str]:
        """Fire every schedule whose slot has come (see refresh.schedules.due); the job ids queued."""
        from orchestrator.cron import parse_cron
        from orchestrator.refresh.schedules import due
        from orchestrator.store.schedules import ScheduleError

        fired = []
        now = self.clock()
        for name, cron, paused, last_slot in self.schedules.clocks():
            # The next slot after the last one handled is fixed until a firing moves it:
            # remembered, so a tick over many schedules costs one comparison each.
            key = (name, cron, last_slot)
            if key not in self._next_slots:
                self._next_slots[key] = parse_cron(cron).next_after(last_slot)
            if paused or now < self._next_slots[key]:
                continue
            try:
                schedule = self.schedules.get(name)
            except ScheduleError:
                continue  # removed meanwhile
            decision = due(schedule.cron, schedule.last_slot, now, schedule.missed)
            if decision.newest is None:
                continue
            self._next_slots.pop(key, None)
            job_id = self.schedules.fire(schedule, decision, now, lambda db, s=schedule: self._refresh_job(db, s))
            if job_id:
                fired.append(job_id)
        return fired

    def run_schedule_now(self, name: str) -> str | None:
        with self.lock:
            schedule = self.schedules.get(name)
            return self.schedules.run_now(name, self.clock(), lambda db: self._refresh_job(db, schedule))

    def _refresh_job(self, db, schedule) -> tuple[str | None, int | None, str]:
        """Queue one refresh of `schedule` inside the firing's transaction: (job id, parent, note).
        A refresh that cannot be built (no data yet, a bad job) queues nothing and says why."""
        import uuid

        from orchestrator.data.errors import DataError
        from orchestrator.refresh.jobs import refresh_spec
        from orchestrator.spec import SpecError

        head = self.registry.head_in(db, schedule.name)
        try:
            spec = refresh_spec(schedule.spec, schedule.name, head).model_dump(mode="json")
        except (DataError, SpecError, ValueError) as err:
            return None, None, f"not fired: {err}"
        job_id = f"{schedule.name}-{uuid.uuid4().hex[:8]}"
        res = spec["resources"]
        need = Resources(res["workers"] * res["cpus_per_worker"], res["workers"] * res["gpus_per_worker"])
        why = never_fits(need, self.capacity())
        if why:
            return None, None, f"not fired: {why}"
        files = spec["data"]["train"]["files"]
        self.store.insert_job(db, job_id, schedule.name, spec, str(self.run_dir_for(job_id)), need,
                              schedule.priority, schedule.team, reason=f"refresh of schedule {schedule.name}")
        return job_id, spec["promotion"]["parent"], (
            f"warm start from v{head.version}" if head else "first version: fresh adapter") + (
            f"; {len(files)} data file(s)" if files else "")

    def _watch_runners(self) -> None:
        now = time.time()
        for job_id, watched in list(self.watched.items()):
            record = self.store.get(job_id)
            code = watched.runner.poll()
            if code is None and not watched.runner.alive():
                code = read_exit(Path(record.run_dir), watched.token)
                ended = True
            else:
                ended = code is not None
            if ended:
                del self.watched[job_id]
                self._decide(record, policy.RunnerEnd(code=code, summary_status=_summary_status(record),
                                                      cancel_requested=record.cancel_requested))
                continue
            if record.cancel_requested:
                if watched.term_sent_at is None:
                    watched.runner.signal(signal.SIGTERM)  # the job saves a checkpoint and exits 75
                    watched.term_sent_at = now
                elif now - watched.term_sent_at > self.settings.cancel_grace_s:
                    watched.runner.signal(signal.SIGKILL)

    def _schedule(self) -> dict[str, Any]:
        capacity = self.capacity()
        active = self.store.list(ACTIVE)
        free = capacity
        usage: dict[str, Resources] = {}
        for record in active:
            free = free - record.need
            usage[record.team] = usage.get(record.team, Resources()) + record.need
        started = time.perf_counter()
        decision = self._plan(free, capacity, usage)
        self.last_plan_seconds = time.perf_counter() - started
        for job_id, reason in decision.reject:
            self._try(lambda: self.store.move(job_id, JobState.QUEUED, JobState.REJECTED, reason))
        for job_id in decision.start:
            self._start(job_id)
        return {"started": list(decision.start), "rejected": [j for j, _ in decision.reject],
                "plan_seconds": self.last_plan_seconds}

    def _plan(self, free: Resources, capacity: Resources, usage: dict[str, Resources]):
        """Plan over the head of the queue, read a page at a time as the scheduler walks it:
        it stops at the first job that does not fit, so a deep queue costs no more than a
        short one."""
        def queue():
            offset = 0
            while True:
                page = self.store.queued(limit=self.settings.page, offset=offset)
                yield from page
                if len(page) < self.settings.page:
                    return
                offset += len(page)

        return plan(queue(), free, capacity, usage, self.settings.quotas, ordered=True)

    def _start(self, job_id: str) -> None:
        try:
            record = self.store.claim(job_id)
        except StaleUpdate:
            return  # cancelled (or claimed) in the meantime
        Path(record.run_dir).mkdir(parents=True, exist_ok=True)
        try:
            runner = self.launcher.launch(record)
        except Exception as err:  # the runner could not even start: count it as an attempt
            self._decide(record, policy.RunnerEnd(code=None), reason_prefix=f"could not start its runner ({err}); ")
            return
        self.store.set_fields(job_id, record.token, pid=runner.pid)
        self.watched[job_id] = Watched(runner, record.token)
        self._try(lambda: self.store.move(job_id, JobState.STARTING, JobState.RUNNING, "runner started",
                                          token=record.token))

    def _decide(self, record: JobRecord, end: policy.RunnerEnd, reason_prefix: str = "") -> None:
        self._carry_out(record, policy.after_runner(end, record.attempts, self.settings.max_attempts), end.code,
                        reason_prefix)

    def _carry_out(self, record: JobRecord, decision: policy.Decision, code: int | None, reason_prefix: str = "") -> None:
        fields: dict[str, Any] = {"exit_code": code}
        if not decision.counts_as_attempt:
            fields["attempts"] = max(record.attempts - 1, 0)
        moved = self._try(lambda: self.store.move(record.id, record.state, decision.state,
                                                  reason_prefix + decision.reason, token=record.token, **fields))
        if moved is not None and decision.requeue:
            self._requeue(moved)

    def _requeue(self, record: JobRecord) -> None:
        self._try(lambda: self.store.move(record.id, JobState.RETRYING, JobState.QUEUED, record.reason))

    @staticmethod
    def _try(action):
        try:
            return action()
        except StaleUpdate:
            return None  # someone else moved it first; their move stands

    # -------------------------------------------------------------------- status

    def status(self, job_id: str) -> dict[str, Any]:
        record = self.store.get(job_id)
        return {**record.as_dict(), "events": self.store.events(job_id), "summary": _summary(record)}


def _summary(record: JobRecord) -> dict[str, Any] | None:
    import json

    path = RunDir(record.run_dir).summary
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _summary_status(record: JobRecord) -> str | None:
    summary = _summary(record)
    return summary.get("status") if summary else None


# ---------------------------------------------------------------- process runners


class ProcessRunner:
    """A runner process, known by pid. It is never our child (double fork), so it has no exit
    status to poll: its end is seen as the pid going away, its exit code read from its exit file."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


class SubprocessLauncher:
    """Starts `python -m orchestrator.controller.runner` for a job, in its own session,
    logging to `<run dir>/driver.log`."""

    def __init__(self, store_path: str, address: str | None, noop_seconds: float | None = None):
        self.store_path = store_path
        self.address = address
        self.noop_seconds = noop_seconds

    def command(self, record: JobRecord) -> list[str]:
        import sys

        cmd = [sys.executable, "-m", "orchestrator.controller.runner", "--store", self.store_path,
               "--job", record.id, "--token", str(record.token)]
        if self.address:
            cmd += ["--address", self.address]
        if self.noop_seconds is not None:
            cmd += ["--noop-seconds", str(self.noop_seconds)]
        return cmd

    def launch(self, record: JobRecord) -> ProcessRunner:
        """Start the runner detached from the controller's process (double fork, own session):
        Ray kills a worker's children when the worker dies, and a runner must outlive a
        controller restart to be adopted by the next one."""
        import json
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-c", _SPAWN, json.dumps(self.command(record)),
                               str(RunDir(record.run_dir).driver_log)],
                              capture_output=True, text=True, env=_runner_env(), timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:] or f"exit {done.returncode}")
        return ProcessRunner(int(done.stdout.strip().splitlines()[-1]))

    def adopt(self, record: JobRecord) -> ProcessRunner | None:
        if not record.pid:
            return None
        try:
            cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # The pid may have been reused: it is ours only if it runs this job under this token.
        pairs = set(zip(cmdline, cmdline[1:]))
        if (b"--job", record.id.encode()) not in pairs or (b"--token", str(record.token).encode()) not in pairs:
            return None
        return ProcessRunner(record.pid)


# The intermediate process of the double fork: starts the runner in its own session, prints
# its pid and exits, so the runner is nobody's child but init's.
_SPAWN = """
import json, subprocess, sys
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "ab") as out:
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
print(p.pid)
"""


def _runner_env() -> dict[str, str]:
    """The node's environment (where secrets such as HF_TOKEN live), without Ray's
    per-worker variables that would make the runner think it is a Ray worker."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_JOB_ID", "RAY_RAYLET_PID"))}
