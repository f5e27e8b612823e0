"""`ftctl validate`, `run`, `resume` and `estimate`: one job file, in the foreground."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from orchestrator.cli.arguments import JOB_FILE, OVERRIDES, load_job
from orchestrator.cli.command import Arg, command
from orchestrator.cli.control import print_job
from orchestrator.cli.output import console, fail, refuse
from orchestrator.cli.refusals import with_controller
from orchestrator.exitcodes import ExitCode
from orchestrator.rundir import RunDir

RAY_ADDRESS = Arg("--address", default=None, help="Ray address (default: $RAY_ADDRESS or embedded local Ray)")


@command("validate", JOB_FILE, OVERRIDES)
def cmd_validate(job: Path, overrides: list[str]) -> int:
    """Check a job file and list every problem in it."""
    spec = load_job(job, overrides)
    if spec is None:
        return ExitCode.INVALID
    console.print(f"[green]✓[/green] {job} is valid: job '{spec.name}', method {spec.method.kind}, "
                  f"{spec.resources.workers} worker(s), strategy {spec.resources.strategy}")
    return ExitCode.OK


@command("run", JOB_FILE, OVERRIDES,
         Arg("--run-dir", type=Path, default=None, help="output dir (default runs/<name>-<timestamp>)"),
         RAY_ADDRESS,
         Arg("--force-resume", action="store_true",
             help="resume even when the checkpoint was saved under a job that differs in ways that break exactness"))
def cmd_run(job: Path, overrides: list[str], run_dir: Path | None, address: str | None,
            force_resume: bool = False) -> int:
    """Validate the job, then train it on Ray (embedded local Ray unless an address is given)."""
    spec = load_job(job, overrides)
    if spec is None:
        return ExitCode.INVALID
    from orchestrator.pipeline import run_job

    return run_job(spec, run_dir=run_dir, address=address, console=console, force_resume=force_resume)


@command("resume",
         Arg("run_dir", type=Path, metavar="RUN_DIR|ID",
             help="the run dir of the job (resumed here, in the foreground), or a submitted job's ID "
                  "(re-queued on the controller)"),
         OVERRIDES,
         Arg("--workers", type=int, default=None,
             help="resume a ddp job on this many workers, keeping the global batch by changing grad_accum_steps"),
         Arg("--force", action="store_true", help="resume even when the job changed in ways that break exactness"),
         RAY_ADDRESS,
         exits="Exit 0 when the job finishes, 75 when it is preempted again, 1 when it fails, 2 for an invalid job.")
def cmd_resume(run_dir: Path, overrides: list[str], workers: int | None, force: bool, address: str | None) -> int:
    """Continue a stopped, preempted or failed run (a run dir, or a submitted job's ID) from its
    latest good checkpoint."""
    # Something that is neither a dir nor a path, with nothing to change, names a submitted job.
    if not run_dir.exists() and "/" not in str(run_dir) and not overrides and workers is None:
        return with_controller(address, lambda c: print_job(c.resume(str(run_dir)), "re-queued; it resumes from its "
                                                                                     "latest good checkpoint"))

    from orchestrator.checkpoint.compat import keep_global_batch
    from orchestrator.checkpoint.store import latest_complete_checkpoint, read_trainer_state, verify_training_checkpoint

    if workers is not None and workers < 1:
        return refuse([f"--workers must be at least 1 (got {workers})"])
    job = RunDir(run_dir).job
    if not job.is_file():
        return fail(f"{run_dir} is not a run dir (no job.yaml); resume takes the dir `ftctl run` wrote",
                    ExitCode.INVALID)
    extra = ["checkpoint.resume=auto"]
    if workers is not None:
        info = latest_complete_checkpoint(RunDir(run_dir).checkpoints, warn=lambda _m: None,
                                          verify=verify_training_checkpoint)
        if info is None:
            return fail(f"{run_dir} has no usable checkpoint to resume on {workers} worker(s)")
        saved = read_trainer_state(info.path)["spec"]
        shape = keep_global_batch(saved, workers)
        if shape is None:
            return fail(f"the saved global batch cannot be split over {workers} worker(s) with per_device_batch_size "
                        f"{saved['training']['per_device_batch_size']}; set resources.workers and training.* "
                        f"overrides yourself and pass --force", ExitCode.INVALID)
        extra += [f"{k}={v}" for k, v in shape.items()]
        console.print(f"keeping the global batch on {workers} worker(s): grad_accum_steps "
                      f"{saved['training']['grad_accum_steps']} -> {shape['training.grad_accum_steps']}")
    return cmd_run(job, extra + list(overrides), run_dir, address, force_resume=force)


@command("estimate", JOB_FILE, OVERRIDES,
         Arg("--gpu-memory", type=float, default=None, metavar="GiB", dest="gpu_memory_gib",
             help="memory per GPU (default 80 when gpus_per_worker > 0; on CPU: RAM per worker, no default)"),
         exits="Exit 0 when it fits (or no budget is known), 3 when it cannot fit, 2 for an invalid job,"
               " 1 when the model's architecture is unknown.")
def cmd_estimate(job: Path, overrides: list[str], gpu_memory_gib: float | None) -> int:
    """Estimate each worker's GPU memory (or RAM on CPU) and whether the job fits."""
    from orchestrator.models.memory import GiB, estimate_memory
    from orchestrator.models.shape import ModelShapeError, model_shape

    if gpu_memory_gib is not None and gpu_memory_gib <= 0:
        return fail(f"--gpu-memory must be a positive number of GiB, not {gpu_memory_gib:g}", ExitCode.INVALID)
    spec = load_job(job, overrides)
    if spec is None:
        return ExitCode.INVALID
    r = spec.resources
    if gpu_memory_gib is None and r.gpus_per_worker > 0:
        gpu_memory_gib = 80.0
    try:
        est = estimate_memory(spec, model_shape(spec.model.path, spec.model.revision), gpu_memory_gib)
    except ModelShapeError as err:
        return fail(escape(str(err)))

    from rich.table import Table

    unit, scale = ("GiB", GiB) if est.total >= GiB else ("MiB", 1024**2)
    console.print(f"{spec.name}: {spec.method.kind}, {r.workers} worker(s) x {r.gpus_per_worker:g} GPU, {r.strategy}"
                  f"{f' ZeRO-{r.zero_stage or 2}' if r.strategy == 'deepspeed' else ''}, {spec.training.precision}, "
                  f"batch {spec.training.per_device_batch_size} x {spec.data.max_seq_len} tokens")
    table = Table()
    table.add_column("component")
    table.add_column(f"{unit} per GPU" if est.on_gpu else f"{unit} per worker (RAM)", justify="right")
    for label, size in est.rows():
        if est.on_gpu or label != "CUDA context":
            table.add_row(label, f"{size / scale:.2f}")
    table.add_row("[bold]total[/bold]", f"[bold]{est.total / scale:.2f}[/bold]")
    if est.offloaded:
        table.add_row("[dim]offloaded to CPU RAM[/dim]", f"[dim]{est.offloaded / scale:.2f}[/dim]")
    console.print(table)
    console.print(f"parameters: {est.trainable_params:,} trainable / {est.total_params:,} total")
    for note in est.notes:
        console.print(f"  [dim]- {escape(note)}[/dim]", soft_wrap=True)
    if est.budget is None:
        console.print("estimate of each CPU worker's RAM; pass --gpu-memory GiB for a verdict against a budget")
        return ExitCode.OK
    budget = f"{est.budget / GiB:g} GiB" + (" per GPU" if est.on_gpu else " of RAM per worker")
    if est.fits:
        console.print(f"[green]✓[/green] fits: about {est.total / GiB:.1f} GiB of {budget}")
        return ExitCode.OK
    return fail(f"does not fit: needs about {est.total / GiB:.1f} GiB, {budget} available", ExitCode.WONT_FIT)
