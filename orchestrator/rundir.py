"""The run dir: the one place its files and folders are named.

    job.yaml                 the resolved job
    metrics.jsonl            one JSON object per logged step
    checkpoints/step-<8 digits>/
    attempts.jsonl, workers/ each start of the worker group; each rank's pid and host
    adapter/ or model/       the trained artifact
    merged/                  with merge.enabled
    forgetting.json/.png     the forgetting report
    promotion.json           the registered adapter version and its gates
    worker_status.json       rank 0's phase and step, while it trains
    worker_result.json       rank 0's result, read by the driver
    summary.json             the job's outcome
    driver.log, slurm/, ray/, tensorboard/, PREEMPT
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ADAPTER_METHODS = ("lora", "qlora")


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    job = property(lambda self: self.root / "job.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    attempts = property(lambda self: self.root / "attempts.jsonl")
    workers = property(lambda self: self.root / "workers")
    adapter = property(lambda self: self.root / "adapter")
    model = property(lambda self: self.root / "model")
    merged = property(lambda self: self.root / "merged")
    forgetting_json = property(lambda self: self.root / "forgetting.json")
    forgetting_png = property(lambda self: self.root / "forgetting.png")
    promotion = property(lambda self: self.root / "promotion.json")
    worker_status = property(lambda self: self.root / "worker_status.json")
    worker_result = property(lambda self: self.root / "worker_result.json")
    summary = property(lambda self: self.root / "summary.json")
    driver_log = property(lambda self: self.root / "driver.log")
    slurm = property(lambda self: self.root / "slurm")
    ray = property(lambda self: self.root / "ray")
    tensorboard = property(lambda self: self.root / "tensorboard")
    preempt = property(lambda self: self.root / "PREEMPT")  # written by the driver on SIGTERM

    def worker(self, rank: int) -> Path:
        return self.workers / f"rank-{rank:05d}.json"

    def artifact(self, method_kind: str) -> Path:
        """Where the trained weights go: adapter/ for lora and qlora, model/ otherwise."""
        return self.adapter if method_kind in ADAPTER_METHODS else self.model

    @staticmethod
    def artifact_key(method_kind: str) -> str:
        """The artifact's name in summary.json's "artifacts"."""
        return "adapter" if method_kind in ADAPTER_METHODS else "model"
