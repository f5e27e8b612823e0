"""Promotion gates: a pure decision over measured values.

A new version is promoted only when every gate passes:
- target: its data.eval loss beats the previous promoted version's (the base model's for a
  first version) by more than `promotion.min_target_gain`;
- vs base: no source task dropped versus the original base model by more than its gate
  (`forgetting.tasks[i].max_drop`, else `forgetting.max_drop`), so drift cannot pile up
  over a chain of refreshes that each look harmless;
- vs previous: no source task dropped versus the previous promoted version by more than
  `promotion.max_drop_vs_previous` (default: the task's own gate).
All three models are measured in one pass, on the same rows, by the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.forgetting.gates import Gate
from orchestrator.forgetting.measure import Measured
from orchestrator.forgetting.metrics import change


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    value: float
    limit: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_gates(candidate: Measured, base: Measured, previous: Measured | None, gates: list[Gate],
                    min_target_gain: float, max_drop_vs_previous: float | None) -> list[GateResult]:
    """Every gate's result, in a fixed order: target, then each task versus base, then versus previous."""
    reference, ref_name = (previous, "previous") if previous is not None else (base, "base")
    gain = reference.target - candidate.target
    results = [GateResult("target", gain > min_target_gain, gain, min_target_gain,
                          f"eval loss {reference.target:.4f} ({ref_name}) -> {candidate.target:.4f}: gain {gain:.4f} "
                          f"{'>' if gain > min_target_gain else '<='} {min_target_gain:g}")]
    for gate in gates:
        results.append(_drop_gate(f"{gate.task} vs base", gate.metric, base.tasks, candidate.tasks, gate.task,
                                  gate.max_drop))
    if previous is not None:
        for gate in gates:
            limit = gate.max_drop if max_drop_vs_previous is None else max_drop_vs_previous
            results.append(_drop_gate(f"{gate.task} vs previous", gate.metric, previous.tasks, candidate.tasks,
                                      gate.task, limit))
    return results


def verdict(results: list[GateResult]) -> tuple[bool, str]:
    """(promote, reason): the reason names every gate that failed."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return True, f"all {len(results)} gates passed"
    return False, "; ".join(f"{r.gate}: {r.detail}" for r in failed)


def _drop_gate(name: str, metric: str, before: dict[str, float], after: dict[str, float], task: str,
               limit: float) -> GateResult:
    if task not in before or task not in after:
        return GateResult(name, False, float("nan"), limit, f"{task} was not measured")
    drop = float(change(metric, before[task], after[task])["drop"])
    passed = drop <= limit + 1e-12
    return GateResult(name, passed, drop, limit, f"{metric} {before[task]:.3f} -> {after[task]:.3f}: drop {drop:.3f} "
                                                 f"{'<=' if passed else '>'} {limit:g}")
