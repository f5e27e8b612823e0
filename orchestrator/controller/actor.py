"""The controller as a Ray detached, named actor (`controller` in namespace `ftctl`).

It lives on the head node (its runner processes start there and connect to the cluster),
restarts when it dies (max_restarts=-1), and on every start reconciles with the JobStore,
so a killed controller, or a whole Ray restart, loses and duplicates nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

NAME, NAMESPACE = "controller", "ftctl"


class ControllerActor:
    def __init__(self, home: str, run_root: str | None = None, poll_s: float = 0.25,
                 noop_seconds: float | None = None, max_attempts: int = 3, quotas: dict | None = None):
        import ray

        from orchestrator.controller.core import Controller, ControllerSettings, SubprocessLauncher
        from orchestrator.store.jobs import SQLiteJobStore, store_file
        from orchestrator.store.resources import Resources

        self.home = Path(home)
        db = store_file(self.home)
        store = SQLiteJobStore(db)
        address = ray.get_runtime_context().gcs_address
        settings = ControllerSettings(max_attempts=max_attempts,
                                      quotas={t: Resources(**q) for t, q in (quotas or {}).items()})
        self.controller = Controller(store, SubprocessLauncher(str(db), address, noop_seconds), cluster_capacity,
                                     Path(run_root) if run_root else self.home / "runs", settings)
        self.poll_s = poll_s
        self.wake = threading.Event()
        self.stopping = False
        self.errors: list[str] = []
        threading.Thread(target=self._loop, daemon=True, name="ftctl-controller").start()

    def _loop(self) -> None:
        while not self.stopping:
            try:
                self.controller.tick()
            except Exception as err:  # keep scheduling; the error is visible in `ftctl controller status`
                self.errors = (self.errors + [f"{type(err).__name__}: {err}"])[-20:]
            self.wake.wait(self.poll_s)
            self.wake.clear()

    # Every method returns plain data: the SDK may run in another Python.
    def submit(self, name: str, spec: dict, cpus: float, gpus: float, priority: int, team: str) -> dict[str, Any]:
        from orchestrator.store.resources import Resources

        record = self.controller.submit(name, spec, Resources(cpus, gpus), priority, team)
        self.wake.set()
        return record.as_dict()

    def get(self, job_id: str) -> dict[str, Any]:
        return self.controller.status(job_id)

    def list(self, states: list[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        from orchestrator.store.states import JobState

        chosen = [JobState(s) for s in states] if states else None
        return [r.as_dict() for r in self.controller.store.list(chosen, limit)]

    def cancel(self, job_id: str) -> dict[str, Any]:
        record = self.controller.cancel(job_id)
        self.wake.set()
        return record.as_dict()

    def resume(self, job_id: str) -> dict[str, Any]:
        record = self.controller.resume(job_id)
        self.wake.set()
        return record.as_dict()

    # Refresh schedules (they fire inside this controller's loop).
    def schedule_add(self, name: str, cron: str, spec: dict, missed: str, priority: int, team: str) -> dict[str, Any]:
        schedules = self.controller.schedules
        record = schedules.add(name, cron, spec, missed, priority, team, now=self.controller.clock())
        return record.as_dict(self.controller.clock())

    def schedule_list(self) -> list[dict[str, Any]]:
        now = self.controller.clock()
        return [s.as_dict(now) | {"firings": self.controller.schedules.firings(s.name)[-5:]}
                for s in self.controller.schedules.list()]

    def schedule_get(self, name: str) -> dict[str, Any]:
        schedules = self.controller.schedules
        return schedules.get(name).as_dict(self.controller.clock()) | {"firings": schedules.firings(name)}

    def schedule_remove(self, name: str) -> None:
        self.controller.schedules.remove(name)

    def schedule_pause(self, name: str, paused: bool) -> dict[str, Any]:
        return self.controller.schedules.set_paused(name, paused, now=self.controller.clock()).as_dict(
            self.controller.clock())

    def schedule_run_now(self, name: str) -> str | None:
        job_id = self.controller.run_schedule_now(name)
        self.wake.set()
        return job_id

    def info(self) -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "home": str(self.home), "store": self.controller.store.path,
                "quotas": {t: vars(q) for t, q in self.controller.settings.quotas.items()},
                "watching": sorted(self.controller.watched), "last_plan_seconds": self.controller.last_plan_seconds,
                "capacity": vars(cluster_capacity()), "errors": self.errors}

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


def cluster_capacity():
    """All CPUs and GPUs the Ray cluster has now (a lost node shrinks it)."""
    import ray

    from orchestrator.store.resources import Resources

    total = ray.cluster_resources()
    return Resources(float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)))
