"""What `ftctl merge` needs besides the adapters: the job an adapter came from (a qlora
adapter's 4-bit settings, its held-out data), held-out rows, and tasks to report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.merging.adapters import adapter_dir
from orchestrator.merging.export import MergeRequest
from orchestrator.merging.merge import MergeError
from orchestrator.rundir import RunDir


def run_job_file(adapter: Path) -> Path | None:
    """The job.yaml of the run an adapter dir belongs to (`<run>/adapter`), if any."""
    candidate = RunDir(adapter_dir(adapter).parent).job
    return candidate if candidate.is_file() else None


def build_request(*, adapters: list[Path], out: Path, base: str | None, weights: list[float] | None, method: str,
                  dtype: str, density: float | None, seed: int, tolerance: float | None, shard_size: str,
                  tasks: list[str], metric: str, max_examples: int | None, heldout: Path | None, job: Path | None,
                  quantized: str | None, progress=lambda _m: None) -> MergeRequest:
    """A MergeRequest with the job's (or the adapter's run's) qlora settings, held-out rows and tasks."""
    from orchestrator.spec import load_spec

    job_spec = None
    job_file = job or (run_job_file(adapters[0]) if len(adapters) == 1 else None)
    if job_file is not None:
        job_spec = load_spec(job_file, check_files=False)
    quantization = None
    if quantized is not None:
        quantization = {"quant_type": quantized, "double_quant": True, "compute_dtype": "bfloat16"}
    elif job_spec is not None and job_spec.method.kind == "qlora" and job_spec.method.quantization is not None:
        quantization = job_spec.method.quantization.model_dump(mode="json")
        progress(f"{job_file} trained a qlora adapter ({quantization['quant_type']}): the quantisation gap is measured")
    req = MergeRequest(adapters=adapters, out=out, base=base, weights=weights, method=method, dtype=dtype,
                       density=density, seed=seed, tolerance=tolerance, shard_size=shard_size, quantization=quantization)
    heldout_source = heldout
    if heldout_source is None and job_spec is not None and job_spec.data.eval is not None:
        heldout_source = job_spec.data.eval.path
    needs_tokenizer = heldout_source is not None or tasks or job is not None
    if not needs_tokenizer:
        return req
    import json

    from orchestrator.merging.export import resolve_base
    from orchestrator.models.build import load_tokenizer
    from orchestrator.spec.models import ModelSpec

    # Only the config: the weights are read (and hashed) once, by the merge itself.
    config_file = adapter_dir(adapters[0]) / "adapter_config.json"
    try:
        adapter_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot read {config_file} ({err}); pass a PEFT adapter dir") from None
    base_dir = resolve_base(base, adapter_config)
    tokenizer = load_tokenizer(str(base_dir), ModelSpec(path=str(base_dir)))
    if heldout_source is not None:
        req.heldout = heldout_rows(str(heldout_source), base_dir, tokenizer,
                                   job_spec.data.max_seq_len if job_spec else 512,
                                   job_spec.data.eval.format if job_spec and job_spec.data.eval and heldout is None
                                   else "instruction")
    if tasks or job is not None:
        from orchestrator.forgetting.standalone import eval_spec
        from orchestrator.forgetting.tasks import prepare_tasks

        spec = eval_spec(str(base_dir), tasks, job if not tasks else None, metric, max_examples, None)
        req.tasks = prepare_tasks(spec, tokenizer)
        req.tokenizer = tokenizer
    return req


def heldout_rows(path: str, base_dir: Path, tokenizer, max_seq_len: int, fmt: str,
                 rows: int = 64, batch_size: int = 16) -> list[dict[str, Any]]:
    """Up to `rows` rows of a data file, tokenized like training data and collated."""
    from orchestrator.data.errors import DataError
    from orchestrator.data.pipeline import load_prepared, prepare_dataset
    from orchestrator.spec import SpecError, resolve_spec

    try:
        spec = resolve_spec({"name": "merge-heldout", "model": {"path": str(base_dir)},
                             "data": {"train": {"path": path, "format": fmt}, "max_seq_len": max_seq_len}})
        prepared = prepare_dataset(spec.data.train, spec.data, tokenizer)
    except (SpecError, DataError) as err:
        raise MergeError(f"held-out data {path}: {err}") from None
    batches = first_batches(load_prepared(prepared.cache_dir), int(tokenizer.pad_token_id), rows, batch_size)
    if not batches:
        raise MergeError(f"held-out data {path} has no usable rows")
    return batches


def first_batches(dataset, pad_id: int, rows: int = 64, batch_size: int = 16) -> list[dict[str, Any]]:
    """The first `rows` rows of a prepared dataset, collated into batches."""
    from orchestrator.data.pipeline import collate

    picked = [dataset[i] for i in range(min(rows, len(dataset)))]
    return [collate(picked[i:i + batch_size], pad_id) for i in range(0, len(picked), batch_size)]
