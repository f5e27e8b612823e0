"""Whether a job may resume a checkpoint exactly: the spec it was saved under versus now.

Pure functions over the resolved specs (as JSON dicts). A difference breaks exact resume
unless it touches only what does not change the training math:
- bookkeeping: name, checkpoint.*, tracking.*, merge.*, forgetting.* (evaluation only),
  data.eval, training.log_every_steps, training.eval_every_steps, per-worker CPUs/GPUs;
- for ddp, the worker count, per-device batch and accumulation, as long as their product
  (the global batch) stays the same: the data order does not depend on the worker count.
"""

from __future__ import annotations

from typing import Any

HARMLESS_PREFIXES = ("name", "checkpoint.", "tracking.", "merge.", "forgetting.", "data.eval",
                     "training.log_every_steps", "training.eval_every_steps",
                     "resources.cpus_per_worker", "resources.gpus_per_worker")
BATCH_SHAPE = ("resources.workers", "training.per_device_batch_size", "training.grad_accum_steps")


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines 'field: old -> new' for each difference that breaks exact resume."""
    old, new = flatten_fields(saved), flatten_fields(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(HARMLESS_PREFIXES) or key in BATCH_SHAPE:
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"{key}: {_show(old.get(key, '<unset>'))} -> {_show(new.get(key, '<unset>'))}")
    if any(old.get(k) != new.get(k) for k in BATCH_SHAPE):
        strategy = new.get("resources.strategy")
        if strategy != "ddp" and old.get("resources.workers") != new.get("resources.workers"):
            lines.append(f"resources.workers: {old.get('resources.workers')} -> {new.get('resources.workers')} "
                         f"({strategy} state is partitioned per worker; only ddp resumes on another worker count)")
        elif _global_batch(old) != _global_batch(new):
            lines.append(f"global batch (workers x per_device_batch_size x grad_accum_steps): "
                         f"{_global_batch(old)} -> {_global_batch(new)}")
    return lines


def keep_global_batch(saved: dict[str, Any], workers: int) -> dict[str, int] | None:
    """training.grad_accum_steps that keeps the saved global batch on `workers` workers
    with the saved per-device batch; None when it does not divide."""
    flat = flatten_fields(saved)
    per_step = workers * flat["training.per_device_batch_size"]
    total = _global_batch(flat)
    if total % per_step:
        return None
    return {"resources.workers": workers, "training.grad_accum_steps": total // per_step}


def _global_batch(flat: dict[str, Any]) -> int:
    return int(flat["resources.workers"]) * int(flat["training.per_device_batch_size"]) \
        * int(flat["training.grad_accum_steps"])


def flatten_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b[0].c": value, ...} for a nested spec dict."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten_fields(value, f"{prefix}{key}."))
        return out if data else {prefix[:-1]: {}}
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten_fields(value, f"{prefix[:-1]}[{i}]."))
        return out if data else {prefix[:-1]: []}
    return {prefix[:-1]: data}


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
