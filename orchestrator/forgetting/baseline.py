"""The base model's values on a job's tasks, measured once and cached.

The cache key is everything the values depend on: the base model's content hash, each
task's rows (or prepared data), and the settings evaluation runs under. A second job on the
same base and tasks, whatever it trains, starts from the cached values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from orchestrator.forgetting.tasks import PreparedTask
from orchestrator.spec.models import JobSpec


def baseline_cache_file(spec: JobSpec, model_dir: str | Path, tasks: list[PreparedTask],
                        target: PreparedTask | None) -> Path:
    """Where the base model's values on these tasks are cached."""
    from orchestrator.digest import tree_digest
    from orchestrator.spec.paths import ftctl_home

    home = ftctl_home()
    key = {
        "model": tree_digest(Path(model_dir), home / "digests.json"),
        "revision": spec.model.revision, "dtype": spec.model.dtype, "precision": spec.training.precision,
        "device": "gpu" if spec.resources.gpus_per_worker > 0 else "cpu",  # dtype auto loads differently there
        "quantization": spec.method.quantization.model_dump(mode="json")
        if spec.method.kind == "qlora" and spec.method.quantization else None,
        "max_seq_len": spec.data.max_seq_len,
        "tasks": [[t.name, t.metric, _rows_id(t)] for t in tasks],
        "target": _rows_id(target) if target else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return home / "baselines" / f"{digest}.json"


def read_baseline(path: Path) -> dict[str, Any] | None:
    """A cached baseline ({"tasks": {...}, "target": value}), or None when there is none
    (or it cannot be read: it is then measured again)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("tasks"), dict) else None


def _rows_id(task: PreparedTask) -> str:
    if task.lm_eval is not None:  # the task and its settings define what is measured
        return hashlib.sha256(json.dumps(task.lm_eval, sort_keys=True).encode()).hexdigest()
    if task.rows is not None:
        return hashlib.sha256(json.dumps(task.to_json()["rows"], sort_keys=True).encode()).hexdigest()
    if task.choices is not None:
        return hashlib.sha256(json.dumps(task.to_json()["choices"], sort_keys=True).encode()).hexdigest()
    return Path(task.cache_dir).name  # the prepared data's fingerprint
