"""`ftctl`: thin typed commands over the package's functions.

Heavy libraries (torch, ray, transformers, datasets) are imported inside the commands
that need them, so `ftctl --help` and `ftctl validate` start in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from orchestrator.exitcodes import ExitCode

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)



def cmd_validate(job: Path, overrides: list[str]) -> int:
    """Check a job file and list every problem in it."""
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    console.print(f"[green]✓[/green] {job} is valid: job '{spec.name}', method {spec.method.kind}, "
                  f"{spec.resources.workers} worker(s), strategy {spec.resources.strategy}")
    return ExitCode.OK


def cmd_run(job: Path, overrides: list[str], run_dir: Path | None, address: str | None,
            force_resume: bool = False) -> int:
    """Validate the job, then train it on Ray (embedded local Ray unless an address is given)."""
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    from orchestrator.pipeline import run_job

    return run_job(spec, run_dir=run_dir, address=address, console=console, force_resume=force_resume)


def cmd_resume(run_dir: Path, overrides: list[str], workers: int | None, force: bool, address: str | None) -> int:
    """Continue a stopped, preempted or failed run (a run dir, or a submitted job's ID) from its latest good checkpoint."""
    import json

    if not run_dir.exists() and "/" not in str(run_dir) and not overrides and workers is None:
        return _with_client(address, lambda c: _print_job(c.resume(str(run_dir)), "re-queued; it resumes from its "
                                                                                   "latest good checkpoint"))

    from orchestrator.checkpoint.compat import keep_global_batch
    from orchestrator.checkpoint.store import latest_complete_checkpoint, read_trainer_state, verify_training_checkpoint

    if workers is not None and workers < 1:
        return refuse([f"--workers must be at least 1 (got {workers})"])
    job = run_dir / "job.yaml"
    if not job.is_file():
        err_console.print(f"[red]✗[/red] {run_dir} is not a run dir (no job.yaml); resume takes the dir `ftctl run` wrote")
        return ExitCode.INVALID
    extra = ["checkpoint.resume=auto"]
    if workers is not None:
        info = latest_complete_checkpoint(run_dir / "checkpoints", warn=lambda _m: None,
                                          verify=verify_training_checkpoint)
        if info is None:
            err_console.print(f"[red]✗[/red] {run_dir} has no usable checkpoint to resume on {workers} worker(s)")
            return ExitCode.FAILED
        saved = read_trainer_state(info.path)["spec"]
        shape = keep_global_batch(saved, workers)
        if shape is None:
            err_console.print(f"[red]✗[/red] the saved global batch cannot be split over {workers} worker(s) with "
                              f"per_device_batch_size {saved['training']['per_device_batch_size']}; set "
                              f"resources.workers and training.* overrides yourself and pass --force")
            return ExitCode.INVALID
        extra += [f"{k}={v}" for k, v in shape.items()]
        console.print(f"keeping the global batch on {workers} worker(s): grad_accum_steps "
                      f"{saved['training']['grad_accum_steps']} -> {shape['training.grad_accum_steps']}")
    return cmd_run(job, extra + list(overrides), run_dir, address, force_resume=force)


def cmd_estimate(job: Path, overrides: list[str], gpu_memory_gib: float | None) -> int:
    """Estimate each worker's GPU memory (or RAM on CPU) and whether the job fits."""
    from orchestrator.models.memory import GiB, ModelShapeError, estimate_memory, model_shape
    from orchestrator.spec import JobSpec, SpecError, load_spec
    from orchestrator.spec.load import apply_overrides, read_job_file
    from orchestrator.spec.rules import NOT_YET_AVAILABLE

    if gpu_memory_gib is not None and gpu_memory_gib <= 0:
        err_console.print(f"[red]✗[/red] --gpu-memory must be a positive number of GiB, not {gpu_memory_gib:g}")
        return ExitCode.INVALID
    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        if any(NOT_YET_AVAILABLE not in p.message for p in err.problems):
            print_problems(job, err)
            return ExitCode.INVALID
        # Valid, but not runnable by this version yet: its memory can still be planned.
        spec = JobSpec.model_validate(apply_overrides(read_job_file(job), overrides)[0])
        for p in err.problems:
            console.print(f"[yellow]note:[/yellow] {escape(p.path)}: {escape(p.message)}", soft_wrap=True)
    r = spec.resources
    if gpu_memory_gib is None and r.gpus_per_worker > 0:
        gpu_memory_gib = 80.0
    try:
        est = estimate_memory(spec, model_shape(spec.model.path, spec.model.revision), gpu_memory_gib)
    except ModelShapeError as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.FAILED

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
    err_console.print(f"[red]✗[/red] does not fit: needs about {est.total / GiB:.1f} GiB, {budget} available")
    return ExitCode.WONT_FIT


def cmd_eval(model: str | None, adapter: Path | None, tasks: list[str], job: Path | None, metric: str,
             max_examples: int | None, max_drop: float | None, out: Path | None) -> int:
    """Evaluate a model (and an adapter on it) on held-out source tasks; print the forgetting table."""
    import json

    from orchestrator.spec import SpecError

    if not tasks and job is None:
        err_console.print("[red]✗[/red] name the tasks: --tasks PATH|NAME=PATH ..., or --job JOB.yaml to use its "
                          "forgetting.tasks")
        return ExitCode.INVALID
    if job is None and model is None:
        err_console.print("[red]✗[/red] --model is needed without --job")
        return ExitCode.INVALID
    from orchestrator.forgetting.standalone import eval_spec, evaluate_standalone

    try:
        spec = eval_spec(model, tasks, job, metric, max_examples, max_drop)
    except SpecError as err:
        print_problems(job or Path("--tasks"), err)
        return ExitCode.INVALID
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        err_console.print(f"[red]✗[/red] {adapter} is not a PEFT adapter dir (no adapter_config.json)")
        return ExitCode.INVALID
    from orchestrator.data.errors import DataError
    from orchestrator.forgetting.gates import check_gates, gates_of
    from orchestrator.forgetting.report import build_forgetting_report, forgetting_table
    from orchestrator.models.build import ModelError

    try:
        with console.status("evaluating") as status:
            values = evaluate_standalone(spec, adapter, progress=status.update)
    except (ModelError, DataError) as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.FAILED
    after = values["adapted"] or values["base"]
    report = build_forgetting_report(spec, [{"step": 0, **values["base"]}, {"step": 1, **after}])
    title = f"{spec.model.path}" + (f" + {adapter}" if adapter else "") + ": held-out source tasks"
    console.print(forgetting_table(report, title=title))
    trips = check_gates(gates_of(spec.forgetting), values["base"], after, 1) if adapter else []
    if out is not None:
        out.write_text(json.dumps({"model": spec.model.path, "adapter": str(adapter) if adapter else None,
                                   **values, "report": report, "tripped": [t.as_dict() for t in trips]}, indent=2))
    for trip in trips:
        err_console.print(f"[red]✗ gate:[/red] {trip.task} {trip.metric} {trip.base:.3f} -> {trip.value:.3f} "
                          f"(drop {trip.drop:.3f} > max_drop {trip.max_drop:g})")
    return ExitCode.GATE if trips else ExitCode.OK


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge one or more LoRA/QLoRA adapters into a base model, verify it, and write a model dir."""
    import json

    from orchestrator.merging.export import MergeVerificationFailed, merge_and_verify
    from orchestrator.merging.inputs import build_request
    from orchestrator.merging.merge import MergeError
    from orchestrator.spec import SpecError

    if args.weight and len(args.weight) != len(args.adapter):
        err_console.print(f"[red]✗[/red] {len(args.adapter)} --adapter but {len(args.weight)} --weight; give one "
                          f"--weight per --adapter, or none (1.0 each)")
        return ExitCode.INVALID
    try:
        with console.status("preparing the merge") as status:
            request = build_request(
                adapters=args.adapter, out=args.out, base=args.base, weights=args.weight, method=args.method,
                dtype=args.dtype, density=args.density, seed=args.seed, tolerance=args.tolerance,
                shard_size=args.shard_size, tasks=args.tasks, metric=args.metric, max_examples=args.max_examples,
                heldout=args.heldout, job=args.job, quantized=args.quantized, progress=console.print)
            manifest = merge_and_verify(request, progress=status.update)
    except MergeVerificationFailed as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        if args.json is not None:
            args.json.write_text(json.dumps(err.report, indent=2))
        return ExitCode.FAILED
    except (MergeError, SpecError) as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.INVALID
    if args.json is not None:
        args.json.write_text(json.dumps(manifest, indent=2))
    print_merge(manifest)
    return ExitCode.OK


def print_merge(manifest: dict) -> None:
    from rich.table import Table

    v, stats = manifest["verification"], manifest["merge"]
    names = ", ".join(f"{a['path']} (x{a['weight']:g})" for a in manifest["adapters"])
    console.print(f"[green]✓[/green] merged {names} into {manifest['base']['path']} -> {manifest['path']}")
    console.print(f"  method {manifest['method']}" + (f" (density {manifest['density']:g}, seed {manifest['seed']})"
                                                     if manifest["method"] not in ("linear", "cat") else "")
                  + f", {manifest['output_dtype']}, {len(stats['shards'])} shard(s), {stats['tensors_changed']} of "
                    f"{stats['tensors']} tensors changed, {stats['seconds']:.1f}s")
    console.print(f"  verified: max |logit difference| vs {v['reference']} = {v['max_abs_logit_diff']:.2e} "
                  f"(tolerance {v['tolerance']:g}, {v['probe']} {v['probe_shape']})")
    if stats.get("peak_rss_growth_bytes") is not None:
        console.print(f"  memory: peak RSS grew {stats['peak_rss_growth_bytes'] / 2**20:.0f} MiB while merging "
                      f"(largest output shard {stats['largest_shard_bytes'] / 2**20:.0f} MiB)")
    if manifest.get("quantisation_gap"):
        from orchestrator.merging.export import gap_line

        console.print(f"  {gap_line(manifest['quantisation_gap'])}")
    metrics = manifest.get("task_metrics")
    if metrics:
        tasks = list(next(iter(metrics.values())))
        table = Table(title="task metrics: each adapter alone (before) and the merged model (after)")
        table.add_column("model")
        for t in tasks:
            table.add_column(t, justify="right")
        for model, values in metrics.items():
            table.add_row(model, *(f"{values[t]:.3f}" for t in tasks))
        console.print(table)


# ------------------------------------------------------------------ control plane


def _with_client(address: str | None, action: Callable, start: bool = True) -> int:
    """Run `action` with a controller client; what the controller refuses (an unknown job,
    a job in the wrong state) is one line and exit 2, an unreachable controller exit 1."""
    from orchestrator.api import Client, ControllerUnavailable
    from orchestrator.store.jobs import StaleUpdate

    try:
        client = Client(address=address, start=start)
        result = action(client)
    except ControllerUnavailable as err:
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.FAILED
    except (KeyError, ValueError, StaleUpdate) as err:
        err_console.print(f"[red]✗[/red] {escape(error_text(err))}", soft_wrap=True)
        return ExitCode.INVALID
    return ExitCode.OK if result is None else result


def error_text(err: BaseException) -> str:
    """An exception's message as a sentence (a KeyError's str() is its repr)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _print_job(record: dict, note: str = "") -> int:
    console.print(f"{record['id']}: {record['state']}" + (f" ({escape(record['reason'])})" if record.get("reason") else "")
                  + (f"; {note}" if note else ""), soft_wrap=True)
    return ExitCode.OK


def cmd_submit(job: Path, overrides: list[str], priority: int, team: str, address: str | None, wait: bool) -> int:
    """Queue a job on the cluster's controller (started if absent); prints its ID."""
    from orchestrator.spec import SpecError, load_spec

    try:
        load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID

    def submit(client) -> int:
        record = client.submit(job, overrides, priority=priority, team=team)
        _print_job(record, f"run dir {record['run_dir']}")
        if record["state"] == "REJECTED":
            return ExitCode.WONT_FIT
        if not wait:
            return ExitCode.OK
        final = client.wait(record["id"])
        _print_job(final)
        return {"SUCCEEDED": ExitCode.OK, "CANCELLED": ExitCode.INTERRUPTED}.get(final["state"], ExitCode.FAILED)

    return _with_client(address, submit)


def cmd_list(states: list[str], limit: int | None, address: str | None, as_json: bool) -> int:
    """Jobs the controller knows, newest first."""
    import json
    import time

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

    return _with_client(address, show, start=False)


def cmd_status(job_id: str, address: str | None, as_json: bool) -> int:
    """One job's state, history and (when it has run) summary."""
    import json
    import time

    def show(client) -> None:
        status = client.status(job_id)
        if as_json:
            print(json.dumps(status, indent=2))
            return
        _print_job(status)
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

    return _with_client(address, show, start=False)


def cmd_logs(job_id: str, follow: bool, address: str | None) -> int:
    """A job's driver log; -f follows it until the job ends."""
    def show(client) -> None:
        for chunk in client.logs(job_id, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    return _with_client(address, show, start=False)


def cmd_cancel(job_id: str, address: str | None) -> int:
    """Cancel a job: a queued one at once, a running one after it saves a checkpoint (SIGTERM)."""
    return _with_client(address, lambda c: _print_job(c.cancel(job_id), "stopping after a checkpoint"
                                                      if c.status(job_id)["state"] == "RUNNING" else ""), start=False)


def cmd_controller(action: str, address: str | None, num_cpus: int | None, quotas: list[str],
                   port: int | None = None) -> int:
    """Start, stop or show the controller (a detached Ray actor on the cluster's head node)."""
    import json

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
            err_console.print(f"[red]✗[/red] --quota {item!r}: write TEAM=CPUS or TEAM=CPUS:GPUS, e.g. research=8:2")
            return ExitCode.INVALID
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
        err_console.print(f"[red]✗[/red] {escape(str(err))}", soft_wrap=True)
        return ExitCode.FAILED


def cmd_launch_k8s(job: Path, overrides: list[str], image: str, namespace: str, workers: int | None,
                   gpus_per_worker: float | None, pvc: str, cron: str | None, secrets: list[str], apply: bool) -> int:
    """Render the job as KubeRay manifests (a ConfigMap with the job file and a RayJob, or a
    RayCronJob with --cron); print them, or pipe them to kubectl with --apply."""
    import shutil
    import subprocess

    from orchestrator.launchers.errors import LaunchError
    from orchestrator.launchers.kubernetes import K8sOptions, SecretRef, render_manifests, to_yaml
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(job, overrides, check_files=False)  # the files live on the cluster
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    refs = []
    for item in secrets:
        env, _, ref = item.partition("=")
        secret, _, key = ref.partition(":")
        if not (env and secret and key):
            err_console.print(f"[red]✗[/red] --secret {item!r}: write ENV=SECRET:KEY, e.g. HF_TOKEN=hf-token:token")
            return ExitCode.INVALID
        refs.append(SecretRef(env, secret, key))
    options = K8sOptions(image=image, namespace=namespace, workers=workers, gpus_per_worker=gpus_per_worker,
                         pvc=pvc, cron=cron, **({"secrets": tuple(refs)} if refs else {}))
    try:
        text = to_yaml(render_manifests(spec, options))
    except LaunchError as err:
        return refuse(err.problems)
    if not apply:
        sys.stdout.write(text)
        return ExitCode.OK
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        err_console.print("[red]✗[/red] --apply needs kubectl on PATH; without --apply the manifests are printed")
        return ExitCode.FAILED
    return subprocess.run([kubectl, "apply", "-f", "-"], input=text, text=True).returncode


def cmd_launch_slurm(job: Path, overrides: list[str], nodes: int, gpus_per_node: int, cpus_per_node: int | None,
                     partition: str | None, time: str | None, account: str | None, port: int, run_dir: Path | None,
                     submit: bool) -> int:
    """Render the job as an sbatch script (Ray head + workers on the allocation, then ftctl run);
    print it, or submit it with --submit."""
    from orchestrator.launchers.slurm import LaunchError, SlurmOptions, render_sbatch, submit_sbatch
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.spec.paths import ftctl_home
    from orchestrator.pipeline import default_run_dir

    try:
        spec = load_spec(job, overrides)
    except SpecError as err:
        print_problems(job, err)
        return ExitCode.INVALID
    run_dir = (run_dir or default_run_dir(spec)).resolve()
    options = SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node,
                           partition=partition, time=time, account=account, port=port)
    try:
        script = render_sbatch(spec, job, overrides, run_dir, ftctl_home(), options)
        if not submit:
            sys.stdout.write(script)
            return ExitCode.OK
        job_id = submit_sbatch(script, run_dir)
    except LaunchError as err:
        return refuse(err.problems)
    console.print(f"Slurm job {job_id}: run dir {run_dir}; log {run_dir / 'slurm'}/{spec.name}-{job_id}.out")
    return ExitCode.OK


def cmd_demo_data(out_dir: Path) -> int:
    """Write the demo datasets (target task, held-out source tasks, classification) as JSONL."""
    from orchestrator.builtin.demo_data import write_demo_data

    written = write_demo_data(out_dir)
    for name, path in sorted(written.items()):
        console.print(f"  {name:<24} {path}")
    console.print(f"[green]✓[/green] wrote {len(written)} files to {out_dir}")
    return ExitCode.OK


def cmd_build_base() -> int:
    """Build (or find) the built-in tiny base model and print its per-task exact match."""
    from orchestrator.models.tiny.build import ensure_tiny_base
    import json

    with console.status("building builtin:tiny-base") as status:
        out = ensure_tiny_base(progress=lambda msg: status.update(f"building builtin:tiny-base: {msg}"))
    report = json.loads((out / "build_report.json").read_text())
    console.print(f"builtin:tiny-base at {out}")
    for task, value in report["exact_match"].items():
        console.print(f"  {task:<12} exact match {value:.3f}")
    console.print(f"  target task  exact match {report['target_exact_match']:.3f} (not pre-trained)")
    return ExitCode.OK


def refuse(problems: list[str]) -> int:
    """Say every problem with the command's options, one line each; exit 2."""
    for problem in problems:
        err_console.print(f"[red]✗[/red] {escape(problem)}", soft_wrap=True)
    return ExitCode.INVALID


def print_problems(job: Path, err: "Exception") -> None:
    problems = getattr(err, "problems", [])
    err_console.print(f"[red]✗[/red] {job}: {len(problems)} problem(s)")
    for p in problems:
        where = escape(p.path or "(job file)")
        hint = f"  [dim]{escape(p.hint)}[/dim]" if p.hint else ""
        err_console.print(f"  [bold]{where}[/bold]: {escape(p.message)}{hint}", soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="Fine-tuning control plane for LLMs on Ray: validate, run and measure forgetting.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help=cmd_validate.__doc__, description=cmd_validate.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")

    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--run-dir", type=Path, default=None, help="output dir (default runs/<name>-<timestamp>)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or embedded local Ray)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even when the checkpoint was saved under a job that differs in ways that break exactness")

    p = sub.add_parser("resume", help=cmd_resume.__doc__, description=cmd_resume.__doc__ + (
        " Exit 0 when the job finishes, 75 when it is preempted again, 1 when it fails, 2 for an invalid job."))
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR|ID",
                   help="the run dir of the job (resumed here, in the foreground), or a submitted job's ID "
                        "(re-queued on the controller)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--workers", type=int, default=None, help="resume a ddp job on this many workers, keeping the global "
                                                             "batch by changing grad_accum_steps")
    p.add_argument("--force", action="store_true", help="resume even when the job changed in ways that break exactness")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or embedded local Ray)")

    p = sub.add_parser("estimate", help=cmd_estimate.__doc__, description=cmd_estimate.__doc__ + (
        " Exit 0 when it fits (or no budget is known), 3 when it cannot fit, 2 for an invalid job,"
        " 1 when the model's architecture is unknown."))
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GiB",
                   help="memory per GPU (default 80 when gpus_per_worker > 0; on CPU: RAM per worker, no default)")

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__ + (
        " With --adapter, the base model and the adapted one are compared. Exit 0, or 4 when a"
        " task's drop exceeds --max-drop (or the job's gates)."))
    p.add_argument("--model", default=None, help="base model: builtin:tiny-base or a local dir (default: the job's)")
    p.add_argument("--adapter", type=Path, default=None, help="a PEFT adapter dir (a run's adapter/)")
    p.add_argument("--tasks", nargs="*", default=[], metavar="[NAME=]PATH", help="held-out task files (instruction rows)")
    p.add_argument("--job", type=Path, default=None, help="take the tasks (and gates) from this job's forgetting section")
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "loss", "perplexity"],
                   help="metric for --tasks (default exact_match)")
    p.add_argument("--max-examples", type=int, default=200, help="rows per task (default 200)")
    p.add_argument("--max-drop", type=float, default=None, help="gate: the largest allowed drop of any task")
    p.add_argument("--json", type=Path, default=None, dest="out", help="also write the values and report here")

    p = sub.add_parser("merge", help=cmd_merge.__doc__, description=cmd_merge.__doc__ + (
        " The merged model is compared with base + adapter(s) on a held-out batch and written only when the largest"
        " logit difference is within the tolerance. Exit 0 when merged, 1 when verification failed, 2 when the merge"
        " was refused (bad input, an adapter the base already carries, an existing --out)."))
    p.add_argument("--adapter", type=Path, action="append", required=True,
                   help="a PEFT adapter dir or a run dir holding adapter/ (repeat for a multi-adapter merge)")
    p.add_argument("--weight", type=float, action="append", default=None,
                   help="weight of the matching --adapter, in order (default 1.0 each)")
    p.add_argument("--base", default=None, help="base model dir or builtin:tiny-base (default: the adapter's recorded base)")
    p.add_argument("--method", default="linear", choices=["linear", "ties", "dare_linear", "dare_ties", "cat"],
                   help="how several adapters combine (default linear: the weighted sum of their updates)")
    p.add_argument("--density", type=float, default=None, help="ties/dare: fraction of each update kept (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="dare: seed of the random drops (default 0)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default auto: the base's stored dtype)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed |logit difference| (default by dtype: float32 1e-4)")
    p.add_argument("--shard-size", default="2GB", help="largest output shard (default 2GB)")
    p.add_argument("--tasks", nargs="*", default=[], metavar="[NAME=]PATH",
                   help="report these tasks' metric on the base, each adapter alone and the merged model")
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "loss", "perplexity"],
                   help="metric for --tasks (default exact_match)")
    p.add_argument("--max-examples", type=int, default=200, help="rows per task (default 200)")
    p.add_argument("--heldout", type=Path, default=None,
                   help="held-out instruction rows: the verification batch, and the qlora quantisation gap's data")
    p.add_argument("--job", type=Path, default=None,
                   help="the job the adapter was trained by: its qlora settings, data.eval and forgetting tasks "
                        "(default: the adapter's run dir job.yaml, for the first two)")
    p.add_argument("--quantized", default=None, choices=["nf4", "fp4"],
                   help="the adapter was trained on a 4-bit base of this type (qlora) and no job file says so")
    p.add_argument("--out", type=Path, required=True, help="new dir for the merged model")
    p.add_argument("--json", type=Path, default=None, help="also write the merge manifest here")

    p = sub.add_parser("submit", help=cmd_submit.__doc__, description=cmd_submit.__doc__ + (
        " Exit 0 when queued (or, with --wait, succeeded), 2 for an invalid job, 3 when it can never fit the cluster."))
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0); FIFO within a priority")
    p.add_argument("--team", default="", help="team the job counts against for quotas")
    p.add_argument("--wait", action="store_true", help="wait for the job to end; exit by its final state")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or the local cluster)")

    p = sub.add_parser("list", help=cmd_list.__doc__, description=cmd_list.__doc__)
    p.add_argument("--state", action="append", default=[], help="only jobs in this state (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="at most this many")
    p.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    p.add_argument("--address", default=None, help="Ray address")

    p = sub.add_parser("status", help=cmd_status.__doc__, description=cmd_status.__doc__)
    p.add_argument("job_id", help="job ID (from submit or list)")
    p.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    p.add_argument("--address", default=None, help="Ray address")

    p = sub.add_parser("logs", help=cmd_logs.__doc__, description=cmd_logs.__doc__)
    p.add_argument("job_id", help="job ID")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument("--address", default=None, help="Ray address")

    p = sub.add_parser("cancel", help=cmd_cancel.__doc__, description=cmd_cancel.__doc__)
    p.add_argument("job_id", help="job ID")
    p.add_argument("--address", default=None, help="Ray address")

    p = sub.add_parser("controller", help=cmd_controller.__doc__, description=cmd_controller.__doc__)
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--address", default=None, help="Ray address (start: a local head is started when none runs)")
    p.add_argument("--num-cpus", type=int, default=None, help="start: CPUs of the local head it starts")
    p.add_argument("--port", type=int, default=None,
                   help="start: port of the local head it starts (default 6379; pick another when that one is taken)")
    p.add_argument("--quota", action="append", default=[], metavar="TEAM=CPUS[:GPUS]",
                   help="start: the most a team's running jobs may hold together (repeatable)")

    launch = sub.add_parser("launch", help="Render (and submit) the job for a cluster scheduler.",
                            description="Render (and submit) the job for a cluster scheduler.")
    targets = launch.add_subparsers(dest="target", metavar="TARGET", required=True)
    p = targets.add_parser("slurm", help=cmd_launch_slurm.__doc__, description=cmd_launch_slurm.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-node", type=int, default=None, help="default: enough for the job's workers")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="time limit, e.g. 04:00:00 (the job checkpoints before it)")
    p.add_argument("--account", default=None)
    p.add_argument("--port", type=int, default=0, help="Ray head port (default: a free one, chosen at start)")
    p.add_argument("--run-dir", type=Path, default=None, help="default runs/<name>-<timestamp> (on a shared file system)")
    p.add_argument("--submit", action="store_true", help="sbatch it (default: print the script)")

    p = targets.add_parser("k8s", help=cmd_launch_k8s.__doc__, description=cmd_launch_k8s.__doc__)
    p.add_argument("job", type=Path, help="job file (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override spec fields")
    p.add_argument("--image", default="ftctl:latest", help="container image with ftctl installed")
    p.add_argument("--namespace", default="default")
    p.add_argument("--workers", type=int, default=None, help="worker pods (default: resources.workers)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="default: resources.gpus_per_worker")
    p.add_argument("--pvc", default="ftctl-runs", help="PersistentVolumeClaim for run dirs and checkpoints")
    p.add_argument("--cron", default=None, help='a schedule such as "0 3 * * *": render a RayCronJob')
    p.add_argument("--secret", action="append", default=[], metavar="ENV=SECRET:KEY",
                   help="an env var from a Secret key (default HF_TOKEN=hf-token:token; repeatable)")
    p.add_argument("--apply", action="store_true", help="pipe the manifests to kubectl apply")

    p = sub.add_parser("demo-data", help=cmd_demo_data.__doc__, description=cmd_demo_data.__doc__)
    p.add_argument("out_dir", type=Path, help="directory to write JSONL files into")

    sub.add_parser("build-base", help=cmd_build_base.__doc__, description=cmd_build_base.__doc__)
    from orchestrator.cli.refresh import add_parsers

    COMMANDS.update(add_parsers(sub))
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": lambda a: cmd_validate(a.job, a.overrides),
    "run": lambda a: cmd_run(a.job, a.overrides, a.run_dir, a.address, a.force_resume),
    "resume": lambda a: cmd_resume(a.run_dir, a.overrides, a.workers, a.force, a.address),
    "estimate": lambda a: cmd_estimate(a.job, a.overrides, a.gpu_memory),
    "eval": lambda a: cmd_eval(a.model, a.adapter, a.tasks, a.job, a.metric, a.max_examples, a.max_drop, a.out),
    "merge": cmd_merge,
    "launch": lambda a: {
        "k8s": lambda: cmd_launch_k8s(a.job, a.overrides, a.image, a.namespace, a.workers, a.gpus_per_worker,
                                      a.pvc, a.cron, a.secret, a.apply),
        "slurm": lambda: cmd_launch_slurm(a.job, a.overrides, a.nodes, a.gpus_per_node, a.cpus_per_node, a.partition,
                                          a.time, a.account, a.port, a.run_dir, a.submit),
    }[a.target](),
    "submit": lambda a: cmd_submit(a.job, a.overrides, a.priority, a.team, a.address, a.wait),
    "list": lambda a: cmd_list(a.state, a.limit, a.address, a.as_json),
    "status": lambda a: cmd_status(a.job_id, a.address, a.as_json),
    "logs": lambda a: cmd_logs(a.job_id, a.follow, a.address),
    "cancel": lambda a: cmd_cancel(a.job_id, a.address),
    "controller": lambda a: cmd_controller(a.action, a.address, a.num_cpus, a.quota, a.port),
    "demo-data": lambda a: cmd_demo_data(a.out_dir),
    "build-base": lambda a: cmd_build_base(),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.OK
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a last guard: users get a sentence, not a traceback
        if args.command == "validate":
            err_console.print(f"[red]✗[/red] could not validate {args.job}: {exc}")
            return ExitCode.INVALID
        raise

