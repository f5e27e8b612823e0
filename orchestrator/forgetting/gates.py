"""Forgetting gates: pure decisions over measured values.

A gate is a task's largest allowed drop versus the base model, in the metric's own units
(`forgetting.tasks[i].max_drop`, else `forgetting.max_drop`). A drop is a worsening in the
metric's direction (lower exact match or accuracy, higher loss or perplexity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.forgetting.metrics import change
from orchestrator.forgetting.tasks import task_metric

KL = "kl"  # the live meter's name in gate trips (forgetting.max_kl)


@dataclass(frozen=True)
class Gate:
    """A task's bound on forgetting: its metric may drop from the base model's value by at most max_drop."""

    task: str
    metric: str
    max_drop: float


@dataclass(frozen=True)
class Trip:
    """A gate that a measurement broke."""

    task: str
    metric: str
    base: float
    value: float
    drop: float
    max_drop: float
    step: int

    def message(self) -> str:
        if self.metric == KL:
            return f"{trip_text(self.as_dict())} at step {self.step}"
        return (f"{self.task} {self.metric} {self.base:.3f} -> {self.value:.3f} at step {self.step} "
                f"(drop {self.drop:.3f} > max_drop {self.max_drop:g})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trip_text(trip: dict[str, Any]) -> str:
    """One trip in words (a Trip.as_dict(), as summaries and forgetting.json keep them)."""
    if trip["metric"] == KL:
        return f"KL to the base {trip['value']:.4f} > max_kl {trip['max_drop']:g}"
    return (f"{trip['task']} {trip['metric']} {trip['base']:.3f} -> {trip['value']:.3f} "
            f"(drop {trip['drop']:.3f} > max_drop {trip['max_drop']:g})")


def gates_of(forgetting) -> list[Gate]:
    """The gates a job's forgetting section sets (tasks without a threshold have none)."""
    out = []
    for task in forgetting.tasks:
        limit = task.max_drop if task.max_drop is not None else forgetting.max_drop
        if limit is not None:
            out.append(Gate(task.name, task_metric(task), float(limit)))
    return out


def check_gates(gates: list[Gate], base: dict[str, float], current: dict[str, float], step: int) -> list[Trip]:
    """Every gate the `current` values break against `base`. A drop equal to max_drop passes."""
    trips = []
    for gate in gates:
        if gate.task not in base or gate.task not in current:
            continue
        drop = float(change(gate.metric, base[gate.task], current[gate.task])["drop"])
        if drop > gate.max_drop + 1e-12:
            trips.append(Trip(gate.task, gate.metric, base[gate.task], current[gate.task], drop, gate.max_drop, step))
    return trips


def check_kl_gate(max_kl: float | None, kl: float, step: int) -> list[Trip]:
    """The KL gate as a trip: KL(tuned || base) is 0 for the base model, so the KL itself is
    the drop."""
    if max_kl is None or kl <= max_kl + 1e-12:
        return []
    return [Trip(KL, KL, 0.0, kl, kl, max_kl, step)]


def latest_passing_step(gates: list[Gate], history: list[dict[str, Any]], candidate_steps: list[int],
                        kl_history: list[dict[str, Any]] | None = None, max_kl: float | None = None) -> int | None:
    """The latest of `candidate_steps` (steps with a checkpoint) at which every gate was
    measured and passed: the task gates on `history` (history[0] is the base model), the KL
    gate on `kl_history`. None when there is none."""
    checks = []
    if gates:
        if not history:
            return None
        base = {k: v for k, v in history[0].items() if k != "step"}
        evaluated = {h["step"]: h for h in history[1:]}
        checks.append(lambda s: s in evaluated and not check_gates(gates, base, evaluated[s], s))
    if max_kl is not None:
        kls = {h["step"]: h["kl"] for h in kl_history or []}
        checks.append(lambda s: s in kls and not check_kl_gate(max_kl, kls[s], s))
    if not checks:
        return None
    passing = [s for s in candidate_steps if all(check(s) for check in checks)]
    return max(passing) if passing else None
