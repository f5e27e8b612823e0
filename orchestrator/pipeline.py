"""A job, from its validated spec to its artifacts: prepare -> train -> report -> merge -> register.

    prepare   training.prepare.prepare_job     JobSpec -> WorkerConfig (model, data, tasks, baseline)
    resume    training.resume.choose_resume    which checkpoint it starts from
    train     training.driver.train_on_ray     WorkerConfig -> WorkerResult (Ray, the per-worker loop)
    repair    forgetting.repair.repair_run     adapter/ or model/ -> the weights at the largest alpha in
                                               [0, 1] that keeps every source task within its max_drop
                                               (forgetting.repair; the trained ones kept as *.unrepaired/)
    report    forgetting.report.report_run     WorkerResult -> forgetting.json/.png and the table
    merge     merging.run.merge_run            adapter/ -> merged/ (merge.enabled; a failure fails the job
                                               only with merge.required)
    register  refresh.register.register_run    adapter/ -> a registry version, gated (promotion.auto)

Every step is a function of the package that owns it; this module only calls them in order,
writes summary.json (a RunSummary) and says how the job ended.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from orchestrator.exitcodes import ExitCode
from orchestrator.forgetting.gates import trip_text
from orchestrator.forgetting.repair import summary_block
from orchestrator.rundir import RunDir
from orchestrator.spec.models import JobSpec
from orchestrator.summary import RunSummary


def default_run_dir(spec: JobSpec) -> Path:
    return Path("runs") / f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_job(spec: JobSpec, run_dir: Path | None = None, address: str | None = None,
            console: Console | None = None, force_resume: bool = False, job_id: str | None = None,
            store: str | None = None) -> int:
    """Run one job in the foreground; returns the process exit code. `job_id` and `store`:
    the controller's id of the job and the registry's SQLite file (default: $FTCTL_REGISTRY,
    else $FTCTL_HOME/controller/jobs.db)."""
    from orchestrator.training.driver import Preemption, train_on_ray
    from orchestrator.training.errors import JobFailed
    from orchestrator.training.prepare import prepare_job
    from orchestrator.training.resume import choose_resume, restarts

    console = console or Console()
    run = RunDir((run_dir or default_run_dir(spec)).resolve())
    run.root.mkdir(parents=True, exist_ok=True)
    for leftover in (run.worker_result, run.worker_status, run.preempt):
        leftover.unlink(missing_ok=True)
    run.job.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    console.print(f"run dir: {run.root}")
    started = time.time()
    preemption = Preemption(run.preempt, spec.checkpoint.sigterm_grace_s, console)
    config = None
    try:
        config = prepare_job(spec, run, console)
        resume_from = choose_resume(spec, run, config.data.train_fingerprint, console, force_resume)
        config = config.with_resume(resume_from, job_id, store)
        result = train_on_ray(spec, config, run, address, console, preemption)
    except JobFailed as err:
        _write(run, RunSummary(spec.name, "failed", error=str(err),
                               restarts=restarts(run, config.job_token if config else None)), started)
        console.print(f"[red]✗ job failed:[/red] {err}")
        return ExitCode.FAILED
    if result.preempted:
        _write(run, RunSummary(spec.name, "preempted", steps=result.steps, checkpoint=result.checkpoint,
                               preemption=preemption.report(), restarts=restarts(run, config.job_token)), started)
        console.print(f"[yellow]preempted[/yellow] at step {result.steps}; checkpoint {result.checkpoint}; "
                      f"continue with: ftctl resume {job_id or run.root}")
        return ExitCode.PREEMPTED
    summary = finish(spec, run, config, result, started, console)
    return {"succeeded": ExitCode.OK, "stopped_by_gate": ExitCode.GATE}.get(summary.status, ExitCode.FAILED)


def finish(spec: JobSpec, run: RunDir, config, result, started: float, console: Console) -> RunSummary:
    """report -> merge -> register, then summary.json and the closing lines."""
    from orchestrator.forgetting.report import report_run
    from orchestrator.models.build import load_tokenizer
    from orchestrator.refresh.register import register_run
    from orchestrator.training.resume import restarts

    artifacts = {"checkpoints": str(run.checkpoints), "metrics": str(run.metrics)}
    artifact = run.artifact(spec.method.kind)
    if artifact.is_dir():
        artifacts[RunDir.artifact_key(spec.method.kind)] = str(artifact)
        # The artifact loads on its own: tokenizer beside the weights.
        load_tokenizer(config.model_dir, spec.model).save_pretrained(str(artifact))
    gate = result.gate
    kept = gate.get("kept_step") if gate else None
    status = "stopped_by_gate" if gate and (gate["action"] == "stop" or kept is None) else "succeeded"
    repaired, error = None, None
    if spec.forgetting.repair is not None and artifact.is_dir():
        repaired, error = repair_step(spec, run, config, result, console)
        if error:
            status = "failed"
        else:
            artifacts[RunDir.artifact_key(spec.method.kind) + "_unrepaired"] = repaired["unrepaired"]
    report = report_run(spec, run, result.forgetting_history, result.target_history, gate, result.eval_base,
                        result.final_eval, console, result.kl_history, repaired)
    if report is not None:
        artifacts["forgetting"] = str(run.forgetting_json)
    merge = None
    if spec.merge.enabled and status == "succeeded" and "adapter" in artifacts:
        merge, error = merge_step(spec, run, config, console)
        if error:
            status = "failed"
        elif "path" in merge:
            artifacts["merged"] = merge["path"]
    summary = RunSummary(
        name=spec.name, status=status, error=error, world_size=result.world_size, steps=result.steps,
        samples_seen=result.samples_seen, tokens_seen=result.tokens_seen, final_loss=result.final_loss,
        final_eval=result.final_eval, train_seconds=round(result.train_seconds, 3), params=result.params,
        engine=result.engine or None, resumed_from=config.resume_from, restarts=restarts(run, config.job_token), checkpoint=result.checkpoint,
        mirror_errors=result.mirror_errors, forgetting=report["summary"] if report else None, forgetting_gate=gate,
        negative_transfer=report["negative_transfer"] if report else None, **forgetting_cost(result),
        baseline_cached=result.baseline_cached, repair=summary_block(repaired) if repaired else None, merge=merge,
        artifacts=artifacts)
    if status == "succeeded" and "adapter" in artifacts:
        promotion = register_run(spec, run, summary.to_json(), config.job_id, config.store, console)
        summary = _replace(summary, promotion=promotion)
        if promotion.get("error"):
            summary = _replace(summary, status="failed", error=promotion["error"])
    summary = _write(run, summary, started)
    _say_how_it_ended(summary, report, console)
    console.print(f"  run dir: {run.root}")
    return summary


def repair_step(spec: JobSpec, run: RunDir, config, result, console: Console) -> tuple[dict[str, Any] | None,
                                                                                  str | None]:
    """The repair step (forgetting.repair): the repair's result, or the job's error when it could
    not run (the trained weights are then the artifact, untouched)."""
    from orchestrator.forgetting.repair import repair_run

    base = {k: v for k, v in result.forgetting_history[0].items() if k not in ("step", "trips")} \
        if result.forgetting_history else None
    try:
        return repair_run(spec, run.artifact(spec.method.kind), config.model_dir, list(config.tasks), config.target,
                          config.eval_cache, base, console), None
    except Exception as err:  # the trained weights stay the artifact; say why the repair did not happen
        error = f"repair: {type(err).__name__}: {' '.join(str(err).split())}"
        console.print(f"[red]✗[/red] {escape(error)}; the trained weights are kept as they are", soft_wrap=True)
        return None, error


def merge_step(spec: JobSpec, run: RunDir, config, console: Console) -> tuple[dict[str, Any], str | None]:
    """The merge step (merge.enabled): the summary's merge block, and the job's error when the
    merge failed and merge.required makes that fail the job. Otherwise a failed merge is a
    warning: training succeeded, so the job does too, with its adapter and without merged/."""
    from orchestrator.merging.run import merge_run

    merge = merge_run(spec, run, config.model_dir, config.eval_cache, console)
    error = merge.get("error")
    if not error:
        return merge, None
    if spec.merge.required:
        console.print(f"[red]✗[/red] {escape(error)}; the job fails (merge.required); its adapter is kept in "
                      f"{run.adapter}", soft_wrap=True)
        return merge, error
    console.print(f"[yellow]warning:[/yellow] {escape(error)}; the job succeeds with its adapter in {run.adapter} "
                  f"and no merged model (merge.required: true would fail it)", soft_wrap=True)
    return merge, None


def forgetting_cost(result) -> dict[str, float]:
    """Seconds spent evaluating forgetting (base model, during training, at the end) and
    their share of the training time proper (the step loop minus the evaluations inside it)."""
    evals = [*(result.forgetting_evals or []), *(getattr(result, "kl_history", None) or [])]
    total = sum(e["seconds"] for e in evals)
    inside = sum(e["seconds"] for e in evals if 0 < e["step"] < result.steps)
    training = max(result.train_seconds - inside, 1e-9)
    return {"forgetting_eval_seconds": round(total, 3), "forgetting_eval_share": round(total / training, 4)}


def _replace(summary: RunSummary, **changes) -> RunSummary:
    import dataclasses

    return dataclasses.replace(summary, **changes)


def _write(run: RunDir, summary: RunSummary, started: float) -> RunSummary:
    summary = _replace(summary, wall_seconds=round(time.time() - started, 3))
    summary.write(run.summary)
    return summary


def _say_how_it_ended(summary: RunSummary, report: dict | None, console: Console) -> None:
    final_eval = summary.final_eval or {}
    console.print(f"[green]✓[/green] {summary.name}: {summary.steps} steps on {summary.world_size} worker(s), "
                  f"final loss {summary.final_loss:.4f}"
                  + (f", eval loss {final_eval['eval_loss']:.4f}" if final_eval.get("eval_loss") is not None else "")
                  + (f", eval accuracy {final_eval['eval_accuracy']:.3f}"
                     if final_eval.get("eval_accuracy") is not None else "")
                  + (f", held-out reward accuracy {final_eval['eval_reward_accuracy']:.3f}"
                     if final_eval.get("eval_reward_accuracy") is not None else "")
                  + f", {summary.train_seconds:.1f}s training")
    if report and report.get("target"):
        tg = report["target"]
        console.print(f"  target task (data.eval) {tg['metric']}: base {tg['base']:.3f} -> {tg['final']:.3f}"
                      + (" [red](negative transfer: worse than the base model)[/red]" if tg["worse"] else ""))
    gate = summary.forgetting_gate
    if not gate:
        return
    kept = gate.get("kept_step")
    trips = "; ".join(trip_text(t) for t in gate["tripped"])
    if gate["action"] == "stop":
        console.print(f"[red]✗ forgetting gate stopped the job at step {gate['step']}:[/red] {trips}; "
                      f"no artifact was written (checkpoints are kept)")
    elif kept is not None:
        console.print(f"[yellow]forgetting gate tripped at step {gate['step']}:[/yellow] {trips}; rolled back: the "
                      f"artifact is the checkpoint of step {kept}, the latest that passed every gate")
    else:
        console.print(f"[red]✗ forgetting gate tripped at step {gate['step']}:[/red] {trips}; no checkpoint passed "
                      f"every gate, so there is nothing to roll back to and no artifact was written")
