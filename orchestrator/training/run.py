"""`ftctl run`: prepare a job on the driver, train it on Ray Train, write the run dir.

The driver resolves the base model, tokenises the data once (workers load the cached
result), picks the checkpoint to resume from (refusing one saved under a spec that would
not resume exactly), starts or joins Ray, runs `TorchTrainer` with `resources.workers`
workers, shows progress by following metrics.jsonl, and writes summary.json and the
forgetting report.

Failures: Ray restarts the worker group up to checkpoint.max_failures times and each
start resumes from the latest good checkpoint (attempts.jsonl, summary.json "restarts").
Preemption: on SIGTERM the driver asks the workers to commit a checkpoint at the end of
their current step, waits up to checkpoint.sigterm_grace_s, and exits with code 75,
meaning "resume me" (`ftctl resume RUN_DIR`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator.spec.models import DataSourceSpec, JobSpec

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_GATE = 4  # a forgetting gate stopped the job, or no checkpoint passed it to roll back to
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; resume me


class JobFailed(Exception):
    """A job could not run; the message says why and what to do."""


def spec_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def mlflow_tracking_uri(spec: JobSpec) -> str:
    """tracking.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlruns made absolute
    (workers run in other directories)."""
    uri = spec.tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return (Path("mlruns").resolve()).as_uri()
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    return uri


def default_run_dir(spec: JobSpec) -> Path:
    return Path("runs") / f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_job(spec: JobSpec, run_dir: Path | None = None, address: str | None = None,
            console: Console | None = None, force_resume: bool = False, job_id: str | None = None,
            store: str | None = None) -> int:
    """Run one job in the foreground; returns the process exit code. `job_id` and `store`:
    the controller's id of the job and its JobStore file, where the adapter registry is
    (default: $FTCTL_HOME/controller/jobs.db)."""
    from orchestrator.training.loop import PREEMPT_FILE

    console = console or Console()
    run_dir = (run_dir or default_run_dir(spec)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ("worker_result.json", "worker_status.json", PREEMPT_FILE):
        (run_dir / leftover).unlink(missing_ok=True)
    (run_dir / "job.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    console.print(f"run dir: {run_dir}")
    started = time.time()
    preemption = _Preemption(run_dir / PREEMPT_FILE, spec.checkpoint.sigterm_grace_s, console)
    try:
        config = prepare_job(spec, run_dir, console)
        config.update(job_id=job_id, store=store)
        config["resume_from"] = choose_resume(spec, run_dir, config, console, force_resume)
        result = train_on_ray(spec, config, run_dir, address, console, preemption)
    except JobFailed as err:
        _write_summary(run_dir, spec, {"status": "failed", "error": str(err),
                                       "restarts": restarts(run_dir, config.get("job_token")) if "config" in locals() else []},
                       started)
        console.print(f"[red]✗ job failed:[/red] {err}")
        return EXIT_FAILED
    if result.get("preempted"):
        _write_summary(run_dir, spec, {"status": "preempted", "steps": result.get("steps"),
                                       "checkpoint": result.get("checkpoint"), "preemption": preemption.report(),
                                       "restarts": restarts(run_dir, config["job_token"])}, started)
        console.print(f"[yellow]preempted[/yellow] at step {result.get('steps')}; checkpoint {result.get('checkpoint')}; "
                      f"continue with: ftctl resume {job_id or run_dir}")
        return EXIT_PREEMPTED
    summary = finish_job(spec, run_dir, result, started, console, config)
    return {"succeeded": EXIT_OK, "stopped_by_gate": EXIT_GATE}.get(summary["status"], EXIT_FAILED)


class _Preemption:
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


def choose_resume(spec: JobSpec, run_dir: Path, config: dict[str, Any], console: Console,
                  force: bool = False) -> str | None:
    """The checkpoint this run starts from (None: fresh), verified, and refused with the
    differences when it was saved under a spec or data that would not resume exactly."""
    from orchestrator.checkpoint.compat import resume_differences
    from orchestrator.checkpoint.store import (CheckpointError, latest_complete_checkpoint, list_checkpoints,
                                               read_trainer_state, restore_replaced, verify_training_checkpoint)

    value = spec.checkpoint.resume
    if value == "never":
        return None
    checkpoints = run_dir / "checkpoints"
    if value == "auto":
        if checkpoints.is_dir():
            restore_replaced(checkpoints)
        info = latest_complete_checkpoint(checkpoints, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"),
                                          verify=verify_training_checkpoint)
        if info is None and spec.checkpoint.storage:
            from orchestrator.checkpoint.remote import Mirror

            with console.status(f"looking for checkpoints in {spec.checkpoint.storage}"):
                mirror = Mirror(spec.checkpoint.storage, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"))
                fetched = mirror.fetch_latest(checkpoints)
                mirror.close()
            info = verify_training_checkpoint(fetched) if fetched else None
        if info is None:
            broken = list_checkpoints(checkpoints)
            if broken:
                raise JobFailed(f"none of the {len(broken)} checkpoints in {checkpoints} is usable (see above); nothing was "
                                f"deleted. Start over with checkpoint.resume=never, or point checkpoint.resume at one")
            return None
    else:
        try:
            info = verify_training_checkpoint(Path(value))
        except CheckpointError as err:
            raise JobFailed(f"checkpoint.resume={value}: {err}") from None
    saved = read_trainer_state(info.path)
    problems = resume_differences(saved["spec"], config["spec"])
    if saved.get("data_fingerprint") != config["data"]["train_fingerprint"]:
        problems.append(f"training data fingerprint: {str(saved.get('data_fingerprint'))[:12]} -> "
                        f"{config['data']['train_fingerprint'][:12]} (the files or their preprocessing changed)")
    if problems and not force:
        raise JobFailed(f"{info.path.name} was saved under a job that differs in ways that break exact resume:\n  "
                        + "\n  ".join(problems) + "\nrevert them, or resume anyway with --force (the run then "
                        "continues from the saved step with the new settings)")
    for line in problems:
        console.print(f"[yellow]resuming despite:[/yellow] {line}")
    console.print(f"resuming from {info.path.name} (step {info.step})")
    return str(info.path)


def restarts(run_dir: Path, job_token: str | None) -> list[dict[str, Any]]:
    """Each restart of the worker group during this job, with the step it resumed from."""
    from orchestrator.training.loop import ATTEMPTS_FILE

    log = run_dir / ATTEMPTS_FILE
    if job_token is None or not log.is_file():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [{"attempt": e["attempt"], "resumed_from": e["resumed_from"], "resumed_step": e["resumed_step"],
             "world_size": e["world_size"], "started_at": e["started_at"]}
            for e in entries if e.get("job") == job_token and e["attempt"] > 0]


# --------------------------------------------------------------------------- prepare


def prepare_job(spec: JobSpec, run_dir: Path, console: Console) -> dict[str, Any]:
    """Everything the workers need, as plain values: model dir, data caches, eval rows."""
    import datasets
    import transformers

    from orchestrator.data.errors import DataError
    from orchestrator.data.pipeline import mix_replay, prepare_dataset
    from orchestrator.models.build import (ModelError, check_method_fits_model, check_weights, load_tokenizer,
                                           resolve_model_dir)

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        with console.status(f"resolving model {spec.model.path}") as status:
            model_dir = resolve_model_dir(spec.model, progress=lambda m: status.update(f"building {spec.model.path}: {m}"))
            check_weights(model_dir)
            tokenizer = load_tokenizer(model_dir, spec.model)
            check_method_fits_model(spec, model_dir)
        with console.status("preparing data"):
            train = prepare_dataset(spec.data.train, spec.data, tokenizer)
            if spec.data.replay is not None:
                replay = [prepare_dataset(source, spec.data, tokenizer) for source in spec.data.replay.sources]
                plain_rows = len(train.dataset)
                train = mix_replay(train, replay, spec.data.replay.ratio, spec.training.seed)
                console.print(f"replay: {len(train.dataset) - plain_rows} source-task rows mixed into "
                              f"{plain_rows} training rows (ratio {spec.data.replay.ratio:g})")
            evaluation = prepare_dataset(spec.data.eval, spec.data, tokenizer) if spec.data.eval else None
            forgetting = [_forgetting_task(task, spec, tokenizer) for task in spec.forgetting.tasks]
    except (ModelError, DataError) as err:
        raise JobFailed(str(err)) from None
    s = train.stats
    console.print(f"data: {s.rows_used} training rows ({s.rows_skipped} skipped, {s.truncated} truncated"
                  + (f", packed into {s.packed_rows} rows" if spec.data.packing else "") + f"), fingerprint {train.fingerprint[:12]}")
    for example in s.skipped_examples:
        console.print(f"  skipped: {example}")
    if spec.method.kind == "head":
        labels = [train.stats.max_label] + ([evaluation.stats.max_label] if evaluation else [])
        top = max(x for x in labels if x is not None)
        if top >= spec.method.head.num_labels:
            raise JobFailed(f"the data has label {top} but method.head.num_labels={spec.method.head.num_labels}; "
                            f"labels must be 0..{spec.method.head.num_labels - 1} (raise num_labels)")
    global_batch = spec.resources.workers * spec.training.per_device_batch_size * spec.training.grad_accum_steps
    if len(train.dataset) < global_batch:
        raise JobFailed(f"{len(train.dataset)} training rows cannot fill one global batch of {global_batch} "
                        f"(workers x per_device_batch_size x grad_accum_steps); lower the batch or add data")
    target = ({"name": "target", "metric": "exact_match", "rows": answer_rows(spec.data.eval, 200)}
              if spec.data.eval is not None and spec.data.eval.format == "instruction" else None)
    cache = baseline_cache_file(spec, model_dir, forgetting, target)
    baseline = None
    if cache.is_file():
        try:
            baseline = json.loads(cache.read_text())
        except ValueError:
            baseline = None
    return {
        "spec": spec.model_dump(mode="json"),
        "spec_hash": spec_hash(spec),
        "job_token": uuid.uuid4().hex[:12],
        "baseline_cache": str(cache),
        "baseline": baseline,
        "mlflow_tracking_uri": mlflow_tracking_uri(spec),
        "run_dir": str(run_dir),
        "model_dir": str(model_dir),
        "train_cache": str(train.cache_dir),
        "eval_cache": str(evaluation.cache_dir) if evaluation else None,
        "forgetting": forgetting,
        "target": target,
        "data": {"train_fingerprint": train.fingerprint, "rows": s.rows_used, "skipped": s.rows_skipped,
                 "truncated": s.truncated, "eval_rows": s.rows_used if evaluation is None else evaluation.stats.rows_used},
    }


def baseline_cache_file(spec: JobSpec, model_dir: Path, forgetting: list[dict[str, Any]],
                        target: dict[str, Any] | None) -> Path:
    """Where the base model's values on these tasks are cached: keyed by the base model's
    content hash, each task's rows (or prepared data) and the settings evaluation depends on."""
    from orchestrator.digest import tree_digest
    from orchestrator.spec.paths import ftctl_home

    def rows_id(entry: dict[str, Any]) -> Any:
        if "rows" in entry:
            return hashlib.sha256(json.dumps(entry["rows"], sort_keys=True).encode()).hexdigest()
        return Path(entry["cache_dir"]).name  # the prepared data's fingerprint

    home = ftctl_home()
    key = {
        "model": tree_digest(Path(model_dir), home / "digests.json"),
        "revision": spec.model.revision, "dtype": spec.model.dtype, "precision": spec.training.precision,
        "device": "gpu" if spec.resources.gpus_per_worker > 0 else "cpu",  # dtype auto loads differently there
        "quantization": spec.method.quantization.model_dump(mode="json")
        if spec.method.kind == "qlora" and spec.method.quantization else None,
        "max_seq_len": spec.data.max_seq_len,
        "tasks": [[e["name"], e["metric"], rows_id(e)] for e in forgetting],
        "target": rows_id(target) if target else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return home / "baselines" / f"{digest}.json"


def _forgetting_task(task, spec: JobSpec, tokenizer) -> dict[str, Any]:
    from orchestrator.data.pipeline import prepare_dataset

    source = DataSourceSpec(path=task.path, format=task.format, max_examples=task.max_examples)
    entry: dict[str, Any] = {"name": task.name, "metric": task.metric}
    if task.metric == "exact_match":
        entry["rows"] = answer_rows(source, task.max_examples or 200)
    else:
        unpacked = spec.data.model_copy(update={"packing": False})  # one example per row for evaluation
        entry["cache_dir"] = str(prepare_dataset(source, unpacked, tokenizer).cache_dir)
    return entry


def answer_rows(source: DataSourceSpec, limit: int) -> list[dict[str, str]]:
    """Up to `limit` {prompt, response} rows for exact-match evaluation (bad rows skipped;
    the training data pipeline has already reported them)."""
    from orchestrator.data.sources import open_source

    cols = source.columns
    rows: list[dict[str, str]] = []
    for row in open_source(source).read_rows():
        values = row.values or {}
        if isinstance(values.get(cols.prompt), str) and isinstance(values.get(cols.response), str):
            rows.append({"prompt": values[cols.prompt], "response": values[cols.response]})
            if len(rows) >= limit:
                break
    return rows


# ------------------------------------------------------------------------------ train


def train_on_ray(spec: JobSpec, config: dict[str, Any], run_dir: Path, address: str | None,
                 console: Console, preemption: _Preemption | None = None) -> dict[str, Any]:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.training.loop import train_loop_per_worker

    r = spec.resources
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        with console.status("starting Ray" if not address else f"connecting to Ray at {address}"):
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                needed = max(os.cpu_count() or 1, int(r.workers * r.cpus_per_worker) + 1)
                ray.init(num_cpus=needed, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker=resources, placement_strategy=r.placement.upper()),
        run_config=RunConfig(name=f"{spec.name}-{config['spec_hash'][:8]}", storage_path=str(run_dir / "ray"),
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
        _follow_progress(thread, run_dir, spec, console, preemption)
        if preemption is not None and preemption.expired() and thread.is_alive():
            # The workers did not commit in time: stop them; the latest committed checkpoint stands.
            ray.shutdown()
            return {"preempted": True, "steps": None, "checkpoint": _latest_committed(run_dir)}
        thread.join()
    if "error" in outcome:
        raise JobFailed(_failure_cause(outcome["error"]))
    result_file = run_dir / "worker_result.json"
    if not result_file.is_file():
        raise JobFailed("training ended without a result from rank 0; see the Ray logs under " + str(run_dir / "ray"))
    return json.loads(result_file.read_text())


def _latest_committed(run_dir: Path) -> str | None:
    from orchestrator.checkpoint.store import latest_complete_checkpoint

    info = latest_complete_checkpoint(run_dir / "checkpoints", warn=lambda _m: None)
    return str(info.path) if info else None


def _follow_progress(thread: threading.Thread, run_dir: Path, spec: JobSpec, console: Console,
                     preemption: _Preemption | None = None) -> None:
    metrics, status_file = run_dir / "metrics.jsonl", run_dir / "worker_status.json"
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


# ----------------------------------------------------------------------------- finish


def finish_job(spec: JobSpec, run_dir: Path, result: dict[str, Any], started: float, console: Console,
               config: dict[str, Any]) -> dict[str, Any]:
    from orchestrator.forgetting.report import build_forgetting_report, write_forgetting_report
    from orchestrator.models.build import load_tokenizer

    artifacts = {"checkpoints": str(run_dir / "checkpoints"), "metrics": str(run_dir / "metrics.jsonl")}
    artifact = run_dir / ("adapter" if spec.method.kind in ("lora", "qlora") else "model")
    if artifact.is_dir():
        artifacts["adapter" if spec.method.kind in ("lora", "qlora") else "model"] = str(artifact)
        # The artifact loads on its own: tokenizer beside the weights.
        load_tokenizer(config["model_dir"], spec.model).save_pretrained(str(artifact))
    forgetting, report = None, None
    gate = result.get("gate")
    kept = gate.get("kept_step") if gate else None
    if result.get("forgetting_history") or result.get("target_history"):
        report = build_forgetting_report(spec, result.get("forgetting_history") or [], result.get("target_history"),
                                         final_step=kept if gate and gate["action"] == "rollback" else None,
                                         eval_base=result.get("eval_base"), eval_final=result.get("final_eval"))
        write_forgetting_report(report, run_dir)
        artifacts["forgetting"] = str(run_dir / "forgetting.json")
        forgetting = report["summary"]
        _print_forgetting(report, console)
    status = "succeeded"
    if gate and (gate["action"] == "stop" or kept is None):
        status = "stopped_by_gate"
    merge = None
    if spec.merge.enabled and status == "succeeded" and "adapter" in artifacts:
        merge = merge_after_training(spec, run_dir, config, console)
        if merge.get("error"):
            status = "failed"
        else:
            artifacts["merged"] = merge["path"]
    summary = {
        "status": status,
        "world_size": result["world_size"],
        "steps": result["steps"],
        "samples_seen": result["samples_seen"],
        "tokens_seen": result["tokens_seen"],
        "final_loss": result["final_loss"],
        "final_eval": result.get("final_eval"),
        "train_seconds": round(result["train_seconds"], 3),
        "params": result["params"],
        "resumed_from": config.get("resume_from"),
        "restarts": restarts(run_dir, config["job_token"]),
        "checkpoint": result.get("checkpoint"),
        "mirror_errors": result.get("mirror_errors") or [],
        "forgetting": forgetting,
        "forgetting_gate": gate,
        "negative_transfer": report["negative_transfer"] if report else None,
        **forgetting_cost(result),
        "baseline_cached": result.get("baseline_cached", False),
        "merge": merge,
        **({"error": merge["error"]} if merge and merge.get("error") else {}),
        "artifacts": artifacts,
    }
    if status == "succeeded" and "adapter" in artifacts:
        summary["promotion"] = register_adapter(spec, run_dir, summary, config, console)
        if summary["promotion"].get("error"):
            summary.update(status="failed", error=summary["promotion"]["error"])
    _write_summary(run_dir, spec, summary, started)
    loss = summary["final_loss"]
    console.print(f"[green]✓[/green] {spec.name}: {summary['steps']} steps on {summary['world_size']} worker(s), "
                  f"final loss {loss:.4f}" + (f", eval loss {result['final_eval']['eval_loss']:.4f}"
                                              if result.get("final_eval", {}).get("eval_loss") is not None else "")
                  + (f", eval accuracy {result['final_eval']['eval_accuracy']:.3f}"
                     if result.get("final_eval", {}).get("eval_accuracy") is not None else "")
                  + f", {summary['train_seconds']:.1f}s training")
    if report and report.get("target"):
        tg = report["target"]
        console.print(f"  target task (data.eval) {tg['metric']}: base {tg['base']:.3f} -> {tg['final']:.3f}"
                      + (" [red](negative transfer: worse than the base model)[/red]" if tg["worse"] else ""))
    if gate:
        trips = "; ".join(f"{t['task']} {t['metric']} {t['base']:.3f} -> {t['value']:.3f} (drop {t['drop']:.3f} > "
                          f"{t['max_drop']:g})" for t in gate["tripped"])
        if gate["action"] == "stop":
            console.print(f"[red]✗ forgetting gate stopped the job at step {gate['step']}:[/red] {trips}; "
                          f"no artifact was written (checkpoints are kept)")
        elif kept is not None:
            console.print(f"[yellow]forgetting gate tripped at step {gate['step']}:[/yellow] {trips}; rolled back: the "
                          f"artifact is the checkpoint of step {kept}, the latest that passed every gate")
        else:
            console.print(f"[red]✗ forgetting gate tripped at step {gate['step']}:[/red] {trips}; no checkpoint passed "
                          f"every gate, so there is nothing to roll back to and no artifact was written")
    console.print(f"  run dir: {run_dir}")
    return summary


def register_adapter(spec: JobSpec, run_dir: Path, summary: dict[str, Any], config: dict[str, Any],
                     console: Console) -> dict[str, Any]:
    """Register the adapter as a new version in the registry; with promotion.auto, gate and
    maybe promote it. A registry that cannot be written fails the job (the adapter stays)."""
    import sqlite3

    from orchestrator.models.build import ModelError
    from orchestrator.refresh.promote import open_registry, register_and_judge
    from orchestrator.refresh.registry import RegistryError

    try:
        block = register_and_judge(spec, run_dir, summary, config.get("job_id"), open_registry(config.get("store")),
                                   progress=lambda m: console.print(f"  {m}"))
    except (RegistryError, sqlite3.Error, ModelError, OSError, ValueError, RuntimeError) as err:
        console.print(f"[red]✗ registering the adapter failed:[/red] {err}")
        return {"error": f"registering the adapter failed: {err}"}
    assert block is not None  # a succeeded lora/qlora job with an adapter always registers
    line = f"  adapter {block['adapter']} v{block['version']}"
    if block["verdict"] == "promoted":
        console.print(f"{line}: [green]promoted[/green] ({block['reason']})")
    elif block["verdict"] == "rejected":
        console.print(f"{line}: [red]not promoted[/red]: {block['reason']}")
    else:
        console.print(f"{line}: registered (promote it with `ftctl adapters promote {block['adapter']} "
                      f"{block['version']}`)")
    return block


def merge_after_training(spec: JobSpec, run_dir: Path, config: dict[str, Any], console: Console) -> dict[str, Any]:
    """merge.enabled: merge the adapter into the base, verify, write merged/. The summary's
    "merge" block; with "error" when the merge was refused or failed verification (the
    adapter is kept either way)."""
    import shutil

    from orchestrator.merging.export import MergeRequest, MergeVerificationFailed, gap_line, merge_and_verify
    from orchestrator.merging.merge import MergeError

    out = run_dir / "merged"
    shutil.rmtree(out, ignore_errors=True)  # an earlier attempt's merge of an earlier adapter
    request = MergeRequest(
        adapters=[run_dir / "adapter"], base=config["model_dir"], out=out, dtype=spec.merge.dtype,
        tolerance=spec.merge.tolerance, shard_size=spec.merge.shard_size,
        quantization=spec.method.quantization.model_dump(mode="json") if spec.method.kind == "qlora" else None,
        heldout=heldout_batches(config, spec), device="cuda" if spec.resources.gpus_per_worker > 0 else "cpu")
    try:
        with console.status("merging the adapter into the base model") as status:
            manifest = merge_and_verify(request, progress=status.update)
    except MergeVerificationFailed as err:
        console.print(f"[red]✗ merge:[/red] {err}; the adapter is kept in {run_dir / 'adapter'}")
        return {"error": f"merge: {err}", "verification": err.report["verification"]}
    except MergeError as err:
        console.print(f"[red]✗ merge:[/red] {err}")
        return {"error": f"merge: {err}"}
    v = manifest["verification"]
    console.print(f"merged: {out} ({manifest['output_dtype']}, {len(manifest['merge']['shards'])} shard(s)); "
                  f"max |logit difference| vs base + adapter {v['max_abs_logit_diff']:.2e} <= {v['tolerance']:g}")
    gap = manifest.get("quantisation_gap")
    if gap:
        console.print(f"  {gap_line(gap)}")
    return {"path": str(out), "verification": v, "quantisation_gap": gap, "seconds": manifest["seconds"],
            "shards": manifest["merge"]["shards"], "output_dtype": manifest["output_dtype"]}


def heldout_batches(config: dict[str, Any], spec: JobSpec) -> list[dict] | None:
    """The first prepared data.eval rows, collated: the merge's probe and held-out set."""
    if not config.get("eval_cache"):
        return None
    from orchestrator.data.pipeline import load_prepared
    from orchestrator.merging.inputs import first_batches
    from orchestrator.models.build import load_tokenizer

    pad_id = int(load_tokenizer(config["model_dir"], spec.model).pad_token_id)
    return first_batches(load_prepared(Path(config["eval_cache"])), pad_id) or None


def forgetting_cost(result: dict[str, Any]) -> dict[str, float]:
    """Seconds spent evaluating forgetting (base model, during training, at the end) and
    their share of the training time proper (the step loop minus the evaluations inside it)."""
    evals = result.get("forgetting_evals") or []
    total = sum(e["seconds"] for e in evals)
    inside = sum(e["seconds"] for e in evals if 0 < e["step"] < result["steps"])
    training = max(result["train_seconds"] - inside, 1e-9)
    return {"forgetting_eval_seconds": round(total, 3), "forgetting_eval_share": round(total / training, 4)}


def _write_summary(run_dir: Path, spec: JobSpec, summary: dict[str, Any], started: float) -> None:
    summary = {"name": spec.name, **summary, "wall_seconds": round(time.time() - started, 3)}
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "summary.json")


def _print_forgetting(report: dict[str, Any], console: Console) -> None:
    from orchestrator.forgetting.report import forgetting_table

    console.print(forgetting_table(report))
