"""The Ray driver: start (or join) Ray, run the workers, follow them, handle SIGTERM.

Failures: Ray restarts the worker group up to checkpoint.max_failures times and each start
resumes from the latest good checkpoint (attempts.jsonl, summary.json "restarts").
Preemption: on SIGTERM the driver asks the workers to commit a checkpoint at the end of
their current step, waits up to checkpoint.sigterm_grace_s, and the job exits with code 75,
meaning "resume me".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator import raycluster
from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec
from orchestrator.training.errors import JobFailed
from orchestrator.training.worker_io import WorkerConfig, WorkerResult


class Preemption:
    """SIGTERM handler for the duration of training: asks the workers (through a file in
    the run dir, which every rank's step loop polls via rank 0) to save and stop."""

    def __init__(self, flag: Path, grace_s: float, console: Console):
        self.flag, self.grace_s, self.console = flag, grace_s, console
        self.requested_at: float | None = None
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: preemption is then the caller's business
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _handle(self, signum, frame) -> None:
        if self.requested_at is None:
            self.requested_at = time.time()
            self.flag.write_text(json.dumps({"requested_at": self.requested_at}))

    def expired(self) -> bool:
        return self.requested_at is not None and time.time() - self.requested_at > self.grace_s

    def report(self) -> dict[str, Any] | None:
        if self.requested_at is None:
            return None
        return {"requested_at": self.requested_at, "grace_s": self.grace_s,
                "stopped_after_s": round(time.time() - self.requested_at, 3)}


def train_on_ray(spec: JobSpec, config: WorkerConfig, run: RunDir, address: str | None,
                 console: Console, preemption: Preemption | None = None) -> WorkerResult:
    """Run the workers with TorchTrainer, following their progress; rank 0's result."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.training.loop import train_loop_per_worker

    r = spec.resources
    start_ray(spec, address, console)
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_json(),
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker=resources, placement_strategy=r.placement.upper()),
        run_config=RunConfig(name=f"{spec.name}-{config.spec_hash[:8]}", storage_path=str(run.ray),
                             failure_config=FailureConfig(max_failures=spec.checkpoint.max_failures)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except Exception as exc:  # reported below, after the progress bar closes
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    # Installed after ray.init, which sets its own SIGTERM handler in this process.
    with preemption or contextlib.nullcontext():
        thread.start()
        _follow_progress(thread, run, spec, console, preemption)
        if preemption is not None and preemption.expired() and thread.is_alive():
            # The workers did not commit in time: stop them; the latest committed checkpoint stands.
            ray.shutdown()
            return WorkerResult(world_size=spec.resources.workers, steps=None, checkpoint=_latest_committed(run),
                                preempted=True)
        thread.join()
    if "error" in outcome:
        raise JobFailed(_failure_cause(outcome["error"]))
    if not run.worker_result.is_file():
        raise JobFailed(f"training ended without a result from rank 0; see the Ray logs under {run.ray}")
    return WorkerResult.from_json(json.loads(run.worker_result.read_text()))


def start_ray(spec: JobSpec, address: str | None, console: Console) -> None:
    """Join the cluster at `address` (else $RAY_ADDRESS), or start a private local Ray
    instance for this run alone: another Ray on the machine is never joined implicitly.
    Nothing to do when this process has joined one already."""
    import ray

    if ray.is_initialized():
        return
    r = spec.resources
    cpus = int(r.workers * r.cpus_per_worker) + 1
    address = address or os.environ.get("RAY_ADDRESS")
    options = {"log_to_driver": False, "configure_logging": False}
    if address:
        console.print(f"Ray: the cluster at {address}")
        try:
            raycluster.join(address, **options)
        except raycluster.RayUnavailable as err:
            raise JobFailed(str(err)) from None
        return
    needed = max(os.cpu_count() or 1, cpus)
    console.print(f"Ray: a private local instance for this run ({needed} CPUs; --address or $RAY_ADDRESS "
                  "names a cluster instead)")
    with raycluster.quiet():
        ray.init(address="local", num_cpus=needed, include_dashboard=False, **options)


def _latest_committed(run: RunDir) -> str | None:
    from orchestrator.checkpoint.store import latest_complete_checkpoint

    info = latest_complete_checkpoint(run.checkpoints, warn=lambda _m: None)
    return str(info.path) if info else None


def _follow_progress(thread: threading.Thread, run: RunDir, spec: JobSpec, console: Console,
                     preemption: Preemption | None = None) -> None:
    metrics, status_file = run.metrics, run.worker_status
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("starting workers", total=spec.training.max_steps or 1, info="")
        offset, inode = 0, None
        while thread.is_alive():
            time.sleep(0.5)
            if preemption is not None and preemption.requested_at is not None:
                progress.update(bar, description="preempted: saving")
                if preemption.expired():
                    console.print(f"[red]the workers did not save within {preemption.grace_s:.0f}s; stopping them[/red]")
                    return
            if status_file.is_file() and progress.tasks[0].description == "starting workers":
                status = json.loads(status_file.read_text())
                progress.update(bar, description="training", total=status["total_steps"],
                                info=f"world {status['world_size']}")
                if status.get("engine"):
                    console.print(status["engine"])
            if metrics.is_file():
                with open(metrics) as f:
                    identity = os.fstat(f.fileno()).st_ino
                    if identity != inode:  # a restarted worker group rewrote the file
                        inode, offset = identity, 0
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind("\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if "loss" in rec:
                        progress.update(bar, completed=rec["step"],
                                        info=f"loss {rec['loss']:.4f}  {rec.get('tokens_per_s', 0):,.0f} tok/s")


def _failure_cause(exc: Exception) -> str:
    """The workers' own error, not Ray's wrapping of it."""
    failures = getattr(exc, "worker_failures", None) or {}
    if failures:
        rank, err = sorted(failures.items())[0]
        cause = getattr(err, "cause", None) or err  # a RayTaskError carries the user's exception
        text = str(cause).strip().splitlines()
        last = text[-1] if text else ""
        ranks = ",".join(str(r) for r in sorted(failures))
        return f"rank {ranks}: {type(cause).__name__}: {last}"
    controller = getattr(exc, "controller_failure", None)
    if controller is not None:
        return f"Ray Train controller: {type(controller).__name__}: {controller}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
