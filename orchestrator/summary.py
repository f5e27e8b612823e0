"""summary.json: how a job ended, what it trained and measured, and where its artifacts are."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A job that trained to its end (succeeded, or stopped by a gate) reports every field; a
# failed or preempted one only what it knows.
ENDED = ("succeeded", "stopped_by_gate")


@dataclass(frozen=True)
class RunSummary:
    name: str
    status: str  # succeeded, failed, preempted, stopped_by_gate
    wall_seconds: float = 0.0
    error: str | None = None
    world_size: int | None = None
    steps: int | None = None
    samples_seen: int | None = None
    tokens_seen: int | None = None
    final_loss: float | None = None
    final_eval: dict[str, float] | None = None
    train_seconds: float | None = None
    params: dict[str, int] | None = None
    engine: str | None = None
    """Attention, kernels and compile the model was built with."""
    resumed_from: str | None = None
    restarts: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    preemption: dict[str, Any] | None = None
    mirror_errors: list[str] = field(default_factory=list)
    forgetting: dict[str, Any] | None = None
    forgetting_gate: dict[str, Any] | None = None
    negative_transfer: Any = None
    forgetting_eval_seconds: float | None = None
    forgetting_eval_share: float | None = None
    baseline_cached: bool = False
    repair: dict[str, Any] | None = None
    """forgetting.repair / ftctl repair: the alpha chosen and why (the curve is in forgetting.json)."""
    merge: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    promotion: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        wall = out.pop("wall_seconds")
        if self.status in ENDED:
            for optional in ("error", "preemption", "promotion", "repair"):
                if out[optional] is None:
                    del out[optional]
        else:
            kept = ("name", "status", "restarts") + (("steps", "checkpoint", "preemption") if self.status == "preempted" else ())
            out = {k: v for k, v in out.items() if k in kept or v not in (None, [], {}, False)}
        return {**out, "wall_seconds": wall}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSummary":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)
