"""What crosses the driver/worker boundary: the worker config in, rank 0's result out.

Both are frozen dataclasses with one JSON form each: the config travels through Ray as
`train_loop_config`, the result comes back as worker_result.json in the run dir.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from orchestrator.forgetting.tasks import PreparedTask


@dataclass(frozen=True)
class DataStats:
    train_fingerprint: str
    rows: int
    skipped: int
    truncated: int
    eval_rows: int


@dataclass(frozen=True)
class WorkerConfig:
    spec: dict[str, Any]  # the resolved JobSpec, as JSON
    spec_hash: str
    job_token: str  # this job's id in attempts.jsonl and checkpoints (a resumed run dir holds several)
    run_dir: str
    model_dir: str
    train_cache: str
    eval_cache: str | None
    data: DataStats
    tasks: tuple[PreparedTask, ...] = ()
    target: PreparedTask | None = None
    baseline_cache: str | None = None
    baseline: dict[str, Any] | None = None  # the cached base-model values, read by the driver
    mlflow_tracking_uri: str | None = None
    resume_from: str | None = None  # the driver's choice; a restart picks the latest good checkpoint
    job_id: str | None = None  # the controller's id of the job
    store: str | None = None  # the registry's SQLite file

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tasks"] = [t.to_json() for t in self.tasks]
        out["target"] = self.target.to_json() if self.target else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerConfig":
        return cls(**{**data, "data": DataStats(**data["data"]),
                      "tasks": tuple(PreparedTask.from_json(t) for t in data.get("tasks") or ()),
                      "target": PreparedTask.from_json(data["target"]) if data.get("target") else None})

    def with_resume(self, resume_from: str | None, job_id: str | None = None, store: str | None = None) -> "WorkerConfig":
        return dataclasses.replace(self, resume_from=resume_from, job_id=job_id, store=store)


@dataclass(frozen=True)
class WorkerResult:
    """Rank 0's account of the training (worker_result.json)."""

    world_size: int
    steps: int | None
    checkpoint: str | None
    preempted: bool = False
    samples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    forgetting_evals: list[dict[str, Any]] = field(default_factory=list)
    baseline_cached: bool = False
    final_loss: float | None = None
    final_eval: dict[str, float] = field(default_factory=dict)
    eval_base: dict[str, float] | None = None
    forgetting_history: list[dict[str, Any]] = field(default_factory=list)
    kl_history: list[dict[str, Any]] = field(default_factory=list)  # the KL meter: step, kl, seconds
    target_history: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    engine: str = ""  # attention, kernels and compile the model was built with
    resumed_from: str | None = None
    mirror_errors: list[str] = field(default_factory=list)
    gate: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
