"""Forgetting during training: the base model's values, each evaluation, and the gates.

Every rank calls the same methods at the same steps; evaluation is sharded across the
ranks and the values are all-reduced, so every rank sees the same numbers and takes the
same gate decision without further communication.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.jsonfile import write_json
from orchestrator.forgetting.gates import Trip, check_gates, gates_of
from orchestrator.training.evaluation import evaluate_forgetting


class ForgettingWatch:
    def __init__(self, spec, config: dict[str, Any], state: dict[str, Any], evaluate_args: tuple, rank: int):
        self.tasks = config.get("forgetting", [])
        self.target = [config["target"]] if config.get("target") else []
        self.gates = gates_of(spec.forgetting)
        self.every = spec.forgetting.every_steps
        self.cache = Path(config["baseline_cache"]) if config.get("baseline_cache") else None
        self.config_baseline = config.get("baseline")
        self.state, self.args, self.rank = state, evaluate_args, rank
        state.setdefault("forgetting_history", [])
        state.setdefault("target_history", [])
        state.setdefault("forgetting_evals", [])  # step and seconds of each evaluation
        state.setdefault("baseline_cached", False)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state["forgetting_history"]

    @property
    def target_history(self) -> list[dict[str, Any]]:
        return self.state["target_history"]

    def due(self, step: int, total_steps: int) -> bool:
        """Every `every_steps` and at the last step (whose record then carries the values)."""
        return bool((self.tasks or self.target) and (step == total_steps or (self.every and step % self.every == 0)))

    def baseline(self) -> None:
        """The base model's values (step 0): from the cache when this base, these tasks and
        these evaluation settings were measured before; else measured and cached."""
        if not self.tasks and not self.target:
            return
        cached = self._cached_baseline()
        if cached is not None:
            if self.tasks:
                self.history.append({"step": 0, **cached["tasks"]})
            if cached.get("target") is not None:
                self.target_history.append({"step": 0, "value": cached["target"]})
            self.state["baseline_cached"] = True
            return
        self._measure(0)
        if self.rank == 0 and self.cache is not None:
            target = self.target_history[0]["value"] if self.target_history else None
            tasks = {k: v for k, v in self.history[0].items() if k != "step"} if self.tasks else {}
            write_json(self.cache, {"tasks": tasks,
                                     "target": target, "created_at": time.time()})

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
        values = evaluate_forgetting(*self.args[:2], self.tasks, *self.args[2:]) if self.tasks else {}
        if self.tasks:
            self.history.append({"step": step, **values})
        if self.target:
            value = evaluate_forgetting(*self.args[:2], self.target, *self.args[2:])["target"]
            self.target_history.append({"step": step, "value": value})
        self.state["forgetting_evals"].append({"step": step, "seconds": round(time.perf_counter() - started, 4)})
        return values

    def _cached_baseline(self) -> dict[str, Any] | None:
        # Read by the driver (config["baseline"]), so every rank takes the same branch.
        data = self.config_baseline
        if not data or set(data.get("tasks", {})) != {t["name"] for t in self.tasks}:
            return None
        if self.target and data.get("target") is None:
            return None
        return data
