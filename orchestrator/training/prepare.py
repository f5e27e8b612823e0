"""Prepare a job on the driver: everything the workers need, as one WorkerConfig.

The base model is resolved (the built-in one built on first use) and checked, the data
tokenised once (workers load the cached result), the forgetting tasks prepared, and the
base model's cached values looked up. Nothing here starts Ray.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from rich.console import Console

from orchestrator.forgetting.baseline import baseline_cache_file, read_baseline
from orchestrator.forgetting.tasks import prepare_tasks, target_task
from orchestrator.rundir import RunDir
from orchestrator.spec.hashing import spec_hash
from orchestrator.spec.models import JobSpec
from orchestrator.training.errors import JobFailed
from orchestrator.training.worker_io import DataStats, WorkerConfig


def prepare_job(spec: JobSpec, run: RunDir, console: Console) -> WorkerConfig:
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
            model_dir = resolve_model_dir(spec.model, progress=lambda m: status.update(f"{spec.model.path}: {m}"))
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
            tasks = prepare_tasks(spec, tokenizer)
            target = target_task(spec)
    except (ModelError, DataError) as err:
        raise JobFailed(str(err)) from None
    s = train.stats
    console.print(f"data: {s.rows_used} training rows ({s.rows_skipped} skipped, {s.truncated} truncated"
                  + (f", packed into {s.packed_rows} rows" if spec.data.packing else "")
                  + f"), fingerprint {train.fingerprint[:12]}")
    for example in s.skipped_examples:
        console.print(f"  skipped: {example}")
    _check_fits(spec, train, evaluation)
    cache = baseline_cache_file(spec, model_dir, tasks, target)
    return WorkerConfig(
        spec=spec.model_dump(mode="json"), spec_hash=spec_hash(spec), job_token=uuid.uuid4().hex[:12],
        run_dir=str(run.root), model_dir=str(model_dir), train_cache=str(train.cache_dir),
        eval_cache=str(evaluation.cache_dir) if evaluation else None,
        data=DataStats(train_fingerprint=train.fingerprint, rows=s.rows_used, skipped=s.rows_skipped,
                       truncated=s.truncated,
                       eval_rows=s.rows_used if evaluation is None else evaluation.stats.rows_used),
        tasks=tuple(tasks), target=target, baseline_cache=str(cache), baseline=read_baseline(cache),
        mlflow_tracking_uri=mlflow_tracking_uri(spec))


def _check_fits(spec: JobSpec, train, evaluation) -> None:
    """Data that cannot train this job: labels beyond the head, fewer rows than a batch."""
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


def mlflow_tracking_uri(spec: JobSpec) -> str:
    """tracking.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlruns made absolute
    (workers run in other directories)."""
    uri = spec.tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return (Path("mlruns").resolve()).as_uri()
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    return uri
