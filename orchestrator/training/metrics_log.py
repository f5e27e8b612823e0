"""metrics.jsonl (rank 0), and the same scalars to TensorBoard and MLflow when asked."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from orchestrator.checkpoint.compat import flatten_fields
from orchestrator.spec.models import JobSpec


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed (rank 0 only);
    the same scalars go to TensorBoard when tracking.tensorboard is on."""

    def __init__(self, path: Path, enabled: bool, keep_through: int, tensorboard_dir: Path | None = None, mlflow=None):
        """keep_through: the step training continues after; later records (written before a
        failure, and about to be redone) are dropped, so each step appears once."""
        self.path, self.enabled, self.last_loss, self.mlflow = path, enabled, None, mlflow
        self.tensorboard = None
        if enabled:
            kept = []
            if keep_through > 0 and path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut short by the failure
                        continue
                    if record.get("step", 0) <= keep_through:
                        kept.append(line + "\n")
                        self.last_loss = record.get("loss", self.last_loss)
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            self.last_loss = record["loss"]
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            if self.tensorboard is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.tensorboard.add_scalar(f"train/{key}", value, record["step"])
                self.tensorboard.flush()
            if self.mlflow is not None:
                numbers = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
                self.mlflow.log_metrics(numbers, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def mlflow_run(spec: JobSpec, tracking_uri: str, run_name: str):
    """Start an MLflow run on rank 0 with the resolved spec as flat params; returns the module."""
    if tracking_uri.startswith("file:"):
        # MLflow keeps the local file store working but asks for an explicit opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(spec.tracking.experiment or spec.name)
    mlflow.start_run(run_name=run_name)
    flat = flatten_fields(spec.model_dump(mode="json"))
    # MLflow keys allow no brackets: forgetting.tasks[0].name -> forgetting.tasks.0.name
    mlflow.log_params({re.sub(r"\[(\d+)\]", r".\1", k): str(v)[:500] for k, v in flat.items()})
    return mlflow
