"""Python SDK: the control plane's operations, as `ftctl submit/list/status/logs/cancel/resume`.

    from orchestrator.api import Client
    client = Client()                                   # joins the Ray cluster, starts the controller if absent
    job = client.submit("configs/quickstart.yaml", ["training.max_steps=50"], priority=5)
    client.wait(job["id"])
    print(client.status(job["id"])["state"])

The controller is reached only through Ray (a named actor); no port of its own is opened.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from orchestrator import raycluster
from orchestrator.controller.actor import NAME, NAMESPACE
from orchestrator.rundir import RunDir

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"}


class ControllerUnavailable(Exception):
    """No Ray cluster or controller to talk to; the message says how to start one."""


def connect(address: str | None = None, start_ray: bool = True, num_cpus: int | None = None,
            port: int | None = None, home: Path | None = None, say: Callable[[str], None] | None = None) -> None:
    """Join the Ray cluster the control plane uses: `address`, else $RAY_ADDRESS, else the
    local head ftctl started (recorded under FTCTL_HOME). Ray's own discovery is never used,
    so another Ray on the machine is left alone. With `start_ray`, a head that is not running,
    or no longer answers, is (cleaned up and) started, on `port` (default: a free one) with
    `num_cpus`; `say` hears what was done."""
    import ray

    from orchestrator.spec.paths import ftctl_home

    if ray.is_initialized():
        return
    say = say or (lambda message: None)
    options = {"namespace": NAMESPACE, "log_to_driver": False, "configure_logging": False}
    named = address or os.environ.get("RAY_ADDRESS")
    try:
        if named:
            raycluster.join(named, **options)
            return
        home = Path(home or ftctl_home())
        head = raycluster.read_head(home)
        if head is not None and not raycluster.head_is_alive(head):
            if not start_ray:
                raise ControllerUnavailable(f"{head.describe()} no longer answers; run `ftctl controller start` "
                                            "(it starts a fresh one; jobs are kept)")
            say(f"{head.describe()} no longer answers; cleaning it up and starting a fresh one")
            raycluster.stop_head(home, grace_s=5.0)
            head = None
        if head is None:
            if not start_ray:
                raise ControllerUnavailable("ftctl's Ray cluster is not running; start it with `ftctl controller "
                                            "start` (or name a cluster with --address or $RAY_ADDRESS)")
            head = raycluster.start_head(home, num_cpus=num_cpus, port=port)
            say(f"started {head.describe()}")
        raycluster.use_auth_mode(head.auth_mode)
        raycluster.join(head.address, **options)
    except raycluster.RayUnavailable as err:
        raise ControllerUnavailable(str(err)) from None


def controller(start: bool = True, home: Path | None = None, **options: Any):
    """The controller actor's handle; created (detached, on the head node) when absent."""
    import ray

    from orchestrator.spec.paths import ftctl_home

    try:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        if not start:
            raise ControllerUnavailable("the controller is not running; start it with `ftctl controller start` "
                                        "(or `ftctl submit`, which starts it)") from None
    from orchestrator.controller.actor import ControllerActor

    actor_class = ray.remote(ControllerActor)
    handle = actor_class.options(
        name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_task_retries=-1, num_cpus=0, max_concurrency=32,
        resources={"node:__internal_head__": 0.001},  # runners start beside it, on the head node
    ).remote(str(home or ftctl_home()), **options)
    ray.get(handle.info.remote())  # constructed and reconciled
    return handle


class Client:
    def __init__(self, address: str | None = None, start: bool = True, home: Path | None = None,
                 say: Callable[[str], None] | None = None, **options: Any):
        connect(address, start_ray=start, home=home, say=say)
        self._actor = controller(start=start, home=home, **options)

    def _call(self, method: str, *args: Any) -> Any:
        """Call the controller; its own errors (an unknown job, a bad schedule) are raised
        here as themselves, not wrapped in Ray's RayTaskError with the actor's traceback."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(getattr(self._actor, method).remote(*args))
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception) and not isinstance(cause, RayTaskError):
                raise cause from None
            raise
        except RayActorError as err:
            raise ControllerUnavailable(f"the controller died while answering ({type(err).__name__}); "
                                        "`ftctl controller start` restarts it, jobs and records are kept") from None

    def submit(self, job: str | Path | dict, overrides: Iterable[str] = (), priority: int = 0,
               team: str = "") -> dict[str, Any]:
        """Validate a job file (or a job dict) and queue it; the job's record."""
        from orchestrator.spec import load_spec, resolve_spec
        from orchestrator.spec.paths import absolute_paths

        spec = resolve_spec(job, list(overrides)) if isinstance(job, dict) else load_spec(Path(job), list(overrides))
        r = spec.resources
        # The controller runs the job from its own working directory: paths are resolved here,
        # where they were validated.
        stored = absolute_paths(spec.model_dump(mode="json"), Path.cwd())
        return self._call("submit", spec.name, stored, r.workers * r.cpus_per_worker,
                          r.workers * r.gpus_per_worker, priority, team)

    def list(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self._call("list", list(states) if states else None, limit)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("get", job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("cancel", job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("resume", job_id)

    def info(self) -> dict[str, Any]:
        return self._call("info")

    # ------------------------------------------------------------ refresh schedules

    def schedule_add(self, name: str, cron: str, job: str | Path | dict, overrides: Iterable[str] = (),
                     missed: str = "catch-up", priority: int = 0, team: str = "") -> dict[str, Any]:
        """Refresh the adapter `name` on a cron schedule (UTC) with the job file `job`: each
        firing trains from the promoted version on the data its glob matches then, and
        promotes the result only when every gate passes."""
        from orchestrator.refresh.jobs import check_refreshable
        from orchestrator.spec import load_spec, resolve_spec
        from orchestrator.spec.paths import absolute_paths

        spec = resolve_spec(job, list(overrides)) if isinstance(job, dict) else load_spec(Path(job), list(overrides))
        problems = check_refreshable(spec)
        if problems:
            raise ValueError(f"{job} cannot be refreshed on a schedule: " + "; ".join(problems))
        stored = absolute_paths(spec.model_dump(mode="json"), Path.cwd())
        return self._call("schedule_add", name, cron, stored, missed, priority, team)

    def schedules(self) -> list[dict[str, Any]]:
        return self._call("schedule_list")

    def schedule(self, name: str) -> dict[str, Any]:
        """One schedule and every firing it made."""
        return self._call("schedule_get", name)

    def schedule_remove(self, name: str) -> None:
        self._call("schedule_remove", name)

    def schedule_pause(self, name: str, paused: bool = True) -> dict[str, Any]:
        return self._call("schedule_pause", name, paused)

    def schedule_run_now(self, name: str) -> str | None:
        """Fire one refresh now (outside the cron); the queued job's id, or None with the reason in the firings."""
        return self._call("schedule_run_now", name)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status["state"] in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status['state']} after {timeout:g}s")
            time.sleep(poll_s)

    def logs(self, job_id: str, follow: bool = False, poll_s: float = 0.5) -> Iterator[str]:
        """The job's driver log (every attempt's, appended); with `follow`, until the job ends."""
        path = RunDir(self.status(job_id)["run_dir"]).driver_log
        offset = 0
        while True:
            if path.is_file():
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset += len(chunk)
                if chunk:
                    yield chunk.decode(errors="replace")
            if not follow or self.status(job_id)["state"] in TERMINAL and not _grown(path, offset):
                return
            time.sleep(poll_s)


def _grown(path: Path, offset: int) -> bool:
    return path.is_file() and path.stat().st_size > offset


def stop_controller() -> bool:
    """Stop the controller actor (jobs and their records stay; running runners keep running
    and are adopted by the next controller)."""
    import ray

    try:
        handle = ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.get(handle.stop.remote())
    ray.kill(handle, no_restart=True)
    return True


def cluster_info(home: Path | None = None) -> dict[str, Any]:
    """The Ray cluster this process joined: its address, Ray version, and whether it is the
    local head ftctl started (then also that head's record: pid, temp dir, log, ...)."""
    import ray

    from orchestrator.spec.paths import ftctl_home

    address = ray.get_runtime_context().gcs_address
    head = raycluster.read_head(Path(home or ftctl_home()))
    ours = head is not None and head.address == address
    info: dict[str, Any] = {"address": address, "ray_version": ray.__version__, "started_by_ftctl": ours}
    return info | asdict(head) if ours else info
