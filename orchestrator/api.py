"""Python SDK: the control plane's operations, as `ftctl submit/list/status/logs/cancel/resume`.

    from orchestrator.api import Client
    client = Client()                                   # joins the Ray cluster, starts the controller if absent
    job = client.submit("configs/quickstart.yaml", ["training.max_steps=50"], priority=5)
    client.wait(job["id"])
    print(client.status(job["id"])["state"])

The controller is reached only through Ray (a named actor); no port of its own is opened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from orchestrator.controller.actor import NAME, NAMESPACE
from orchestrator.rundir import RunDir

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"}


class ControllerUnavailable(Exception):
    """No Ray cluster or controller to talk to; the message says how to start one."""


def connect(address: str | None = None, start_ray: bool = True, num_cpus: int | None = None,
            port: int | None = None) -> None:
    """Join the Ray cluster at `address` (default $RAY_ADDRESS or the local one); with
    `start_ray`, start a local head node (on `port`, default Ray's 6379) when there is none."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        with _quiet_stderr() as said:
            ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
        return
    except ConnectionError:
        if _needs_token(said()):
            raise ControllerUnavailable(f"the Ray cluster at {target} requires token authentication; set "
                                        "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or "
                                        "RAY_AUTH_TOKEN_PATH) and try again") from None
        if not start_ray or target != "auto":
            raise ControllerUnavailable(f"no Ray cluster at {target}; start one (ray start --head) or leave "
                                        f"--address out to start a local one") from None
    cmd = ["ray", "start", "--head", "--include-dashboard=false", "--disable-usage-stats"]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    if port:
        cmd += ["--port", str(port)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr + done.stdout
        if "already used" in said or "occupied" in said or "Address already in use" in said:
            raise ControllerUnavailable(f"port {port or 6379} is taken (another user's Ray, or another program); "
                                        "start ftctl's head on a free one: ftctl controller start --port 6390")
        last = next((line.strip() for line in reversed(said.splitlines()) if line.strip()), "no output")
        raise ControllerUnavailable(f"could not start a local Ray head ({last[:300]}); `ray start --head` "
                                    "shows the whole error")
    ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False, configure_logging=False)


def _needs_token(said: str) -> bool:
    """Whether Ray's client was turned away for lack of the cluster's auth token (Ray says so
    only in its C++ log lines, and raises a plain ConnectionError)."""
    return "Unauthenticated" in said or "InvalidAuthToken" in said


@contextlib.contextmanager
def _quiet_stderr():
    """Keep what Ray's C++ core writes to fd 2 while connecting (retries, auth notices) out of
    the user's terminal; yields a function returning what was written."""
    import tempfile

    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: "".join(captured)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


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
    def __init__(self, address: str | None = None, start: bool = True, home: Path | None = None, **options: Any):
        connect(address, start_ray=start)
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
