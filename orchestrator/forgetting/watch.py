"""Forgetting during training: the base model's values, each evaluation, and the gates.

Every rank calls the same methods at the same steps; evaluation is sharded across the
ranks and the values are all-reduced, so every rank sees the same numbers and takes the
same gate decision without further communication. The watch owns its histories; a
checkpoint stores `state_dict()` and a resumed run hands it back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.forgetting.gates import Trip, check_gates, check_kl_gate, gates_of
from orchestrator.forgetting.tasks import TARGET, PreparedTask
from orchestrator.jsonfile import write_json

Evaluate = Callable[[list[PreparedTask]], dict[str, float]]
STATE_KEYS = ("forgetting_history", "target_history", "forgetting_evals", "baseline_cached",
              "kl_history")  # of state_dict()


class ForgettingWatch:
    def __init__(self, spec, tasks: list[PreparedTask], target: PreparedTask | None, evaluate: Evaluate, rank: int,
                 baseline_cache: Path | None = None, cached_baseline: dict[str, Any] | None = None,
                 saved: dict[str, Any] | None = None, kl_meter=None):
        """`cached_baseline`: read by the driver, so every rank takes the same branch.
        `saved`: a resumed checkpoint's state_dict(). `kl_meter`: a KLMeter
        (forgetting.kl_every_steps), or None."""
        self.tasks, self.target = tasks, [target] if target is not None else []
        self.gates = gates_of(spec.forgetting)
        self.every = spec.forgetting.every_steps
        self.evaluate_fn, self.rank = evaluate, rank
        self.cache, self.cached = baseline_cache, cached_baseline
        saved = saved or {}
        self.history: list[dict[str, Any]] = list(saved.get("forgetting_history") or [])
        self.target_history: list[dict[str, Any]] = list(saved.get("target_history") or [])
        self.evals: list[dict[str, Any]] = list(saved.get("forgetting_evals") or [])  # step and seconds of each
        self.baseline_cached = bool(saved.get("baseline_cached", False))
        self.kl_meter, self.kl_every, self.max_kl = kl_meter, spec.forgetting.kl_every_steps, spec.forgetting.max_kl
        self.kl_history: list[dict[str, Any]] = list(saved.get("kl_history") or [])  # [{"step", "kl", "seconds"}]

    def state_dict(self) -> dict[str, Any]:
        return dict(zip(STATE_KEYS, (self.history, self.target_history, self.evals, self.baseline_cached,
                                     self.kl_history)))

    def kl_due(self, step: int, total_steps: int) -> bool:
        return self.kl_meter is not None and (step == total_steps or step % self.kl_every == 0)

    def measure_kl(self, step: int) -> tuple[dict[str, float], list[Trip]]:
        """The meter at `step`, as a tracker scalar, and its gate (forgetting.max_kl) if broken."""
        started = time.perf_counter()
        kl = self.kl_meter.measure()
        entry: dict[str, Any] = {"step": step, "kl": kl, "seconds": round(time.perf_counter() - started, 4)}
        trips = check_kl_gate(self.max_kl, kl, step)
        if trips:
            entry["trips"] = [t.as_dict() for t in trips]
        self.kl_history.append(entry)
        return {"forgetting/kl": kl}, trips

    def due(self, step: int, total_steps: int) -> bool:
        """Every `every_steps` and at the last step (whose record then carries the values)."""
        return bool((self.tasks or self.target) and (step == total_steps or (self.every and step % self.every == 0)))

    def baseline(self) -> None:
        """The base model's values (step 0): from the cache when this base, these tasks and
        these evaluation settings were measured before; else measured and cached."""
        if not self.tasks and not self.target:
            return
        cached = self._usable_cache()
        if cached is not None:
            if self.tasks:
                self.history.append({"step": 0, **cached["tasks"]})
            if cached.get("target") is not None:
                self.target_history.append({"step": 0, "value": cached["target"]})
            self.baseline_cached = True
            return
        self._measure(0)
        if self.rank == 0 and self.cache is not None:
            target = self.target_history[0]["value"] if self.target_history else None
            tasks = {k: v for k, v in self.history[0].items() if k != "step"} if self.tasks else {}
            write_json(self.cache, {"tasks": tasks, "target": target, "created_at": time.time()})

    def evaluate(self, step: int) -> tuple[dict[str, float], list[Trip]]:
        """Measure at `step`; returns the values as tracker scalars and the gates broken."""
        values = self._measure(step)
        base = {k: v for k, v in self.history[0].items() if k != "step"} if self.history else {}
        trips = check_gates(self.gates, base, values, step)
        if trips:
            self.history[-1]["trips"] = [t.as_dict() for t in trips]
        scalars = {f"forgetting/{name}": value for name, value in values.items()}
        if self.target_history and self.target_history[-1]["step"] == step:
            scalars["forgetting/target"] = self.target_history[-1]["value"]
        return scalars, trips

    def _measure(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        values = self.evaluate_fn(self.tasks) if self.tasks else {}
        if self.tasks:
            self.history.append({"step": step, **values})
        if self.target:
            self.target_history.append({"step": step, "value": self.evaluate_fn(self.target)[TARGET]})
        self.evals.append({"step": step, "seconds": round(time.perf_counter() - started, 4)})
        return values

    def _usable_cache(self) -> dict[str, Any] | None:
        data = self.cached
        if not data or set(data.get("tasks", {})) != {t.name for t in self.tasks}:
            return None
        if self.target and data.get("target") is None:
            return None
        return data
