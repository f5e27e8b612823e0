"""Forgetting gates: which tasks have one, when a drop trips it, and the rollback step."""

from __future__ import annotations

import pytest

from orchestrator.forgetting.gates import Gate, Trip, check_gates, gates_of, latest_passing_step
from orchestrator.forgetting.metrics import HIGHER_IS_BETTER, change
from orchestrator.spec.models import ForgettingSpec


def forgetting(max_drop=None, **task_limits):
    """A forgetting section; task_limits maps name -> (metric, max_drop or None)."""
    tasks = [{"name": name, "path": f"{name}.jsonl", "metric": metric, "max_drop": limit}
             for name, (metric, limit) in task_limits.items()]
    return ForgettingSpec.model_validate({"tasks": tasks, "max_drop": max_drop})


# ------------------------------------------------------------------------ gates_of


def test_task_max_drop_overrides_the_global_one():
    gates = gates_of(forgetting(0.1, a=("exact_match", 0.02), b=("loss", None)))
    assert gates == [Gate("a", "exact_match", 0.02), Gate("b", "loss", 0.1)]


def test_a_task_max_drop_of_zero_still_overrides_the_global_one():
    # 0 is a strict gate, not "unset": it must not fall back to the global limit.
    assert gates_of(forgetting(0.5, a=("accuracy", 0.0))) == [Gate("a", "accuracy", 0.0)]


def test_tasks_without_a_limit_have_no_gate():
    gates = gates_of(forgetting(None, a=("exact_match", None), b=("loss", 0.3)))
    assert gates == [Gate("b", "loss", 0.3)]
    assert gates_of(forgetting(None, a=("exact_match", None))) == []


# ---------------------------------------------------------------------- check_gates


def test_drop_exactly_equal_to_max_drop_passes():
    gates = [Gate("a", "exact_match", 0.25)]
    assert check_gates(gates, {"a": 0.75}, {"a": 0.5}, step=10) == []
    # Float noise around the limit (0.3 - 0.1 is not exactly 0.2) passes too.
    assert check_gates([Gate("a", "exact_match", 0.2)], {"a": 0.3}, {"a": 0.1}, step=10) == []


def test_drop_above_max_drop_trips_with_the_numbers_that_broke_it():
    trips = check_gates([Gate("a", "exact_match", 0.1)], {"a": 0.9}, {"a": 0.6}, step=40)
    assert len(trips) == 1
    trip = trips[0]
    assert (trip.task, trip.metric, trip.base, trip.value, trip.step) == ("a", "exact_match", 0.9, 0.6, 40)
    assert trip.drop == pytest.approx(0.3)
    assert trip.max_drop == 0.1
    assert "a exact_match 0.900 -> 0.600 at step 40" in trip.message()
    assert "max_drop 0.1" in trip.message()
    assert trip.as_dict()["drop"] == pytest.approx(0.3) and trip.as_dict()["task"] == "a"


def test_improvement_never_trips_even_with_a_zero_gate():
    gates = [Gate("a", "exact_match", 0.0), Gate("b", "loss", 0.0)]
    assert check_gates(gates, {"a": 0.5, "b": 2.0}, {"a": 0.9, "b": 1.0}, step=5) == []


@pytest.mark.parametrize("metric", ["loss", "perplexity"])
def test_for_loss_and_perplexity_higher_is_worse(metric):
    gate = [Gate("t", metric, 0.5)]
    assert check_gates(gate, {"t": 2.0}, {"t": 2.6}, step=1)[0].drop == pytest.approx(0.6)
    assert check_gates(gate, {"t": 2.0}, {"t": 1.0}, step=1) == []  # lower is better
    assert HIGHER_IS_BETTER[metric] is False
    assert change(metric, 2.0, 2.6)["worse"] is True


@pytest.mark.parametrize("metric", ["exact_match", "accuracy"])
def test_for_exact_match_and_accuracy_lower_is_worse(metric):
    gate = [Gate("t", metric, 0.05)]
    assert check_gates(gate, {"t": 0.8}, {"t": 0.7}, step=1)[0].drop == pytest.approx(0.1)
    assert check_gates(gate, {"t": 0.8}, {"t": 1.0}, step=1) == []
    assert HIGHER_IS_BETTER[metric] is True
    assert change(metric, 0.8, 0.7)["worse"] is True


def test_change_relative_is_zero_when_base_is_zero():
    c = change("loss", 0.0, 0.4)
    assert c["relative_delta"] == 0.0 and c["drop"] == pytest.approx(0.4) and c["worse"] is True
    assert change("loss", 1.0, 1.0)["worse"] is False  # no change is not worse


def test_a_missing_value_is_skipped():
    gates = [Gate("a", "exact_match", 0.0), Gate("b", "exact_match", 0.0)]
    # b has no base value, a has no current value: neither can be judged, so neither trips.
    assert check_gates(gates, {"a": 0.9}, {"b": 0.0}, step=3) == []
    trips = check_gates(gates, {"a": 0.9, "b": 0.9}, {"b": 0.1}, step=3)
    assert [t.task for t in trips] == ["b"]


def test_every_broken_gate_is_reported():
    gates = [Gate("a", "exact_match", 0.1), Gate("b", "loss", 0.1), Gate("c", "accuracy", 0.1)]
    trips = check_gates(gates, {"a": 0.9, "b": 1.0, "c": 0.5}, {"a": 0.5, "b": 1.5, "c": 0.5}, step=7)
    assert [t.task for t in trips] == ["a", "b"]
    assert all(isinstance(t, Trip) and t.step == 7 for t in trips)


# -------------------------------------------------------------- latest_passing_step


GATES = [Gate("a", "exact_match", 0.1)]
HISTORY = [
    {"step": 0, "a": 0.9},
    {"step": 100, "a": 0.85},  # passes
    {"step": 200, "a": 0.82},  # passes
    {"step": 300, "a": 0.5},   # trips
]


def test_latest_passing_step_is_the_newest_checkpoint_that_passed():
    assert latest_passing_step(GATES, HISTORY, [100, 200, 300]) == 200


def test_latest_passing_step_ignores_steps_without_an_evaluation():
    # 250 has a checkpoint but was never evaluated, so it is not known to pass.
    assert latest_passing_step(GATES, HISTORY, [100, 250, 300]) == 100
    assert latest_passing_step(GATES, HISTORY, [250]) is None


def test_latest_passing_step_ignores_steps_that_tripped():
    assert latest_passing_step(GATES, HISTORY, [300]) is None
    assert latest_passing_step(GATES, HISTORY, [100, 300]) == 100


def test_latest_passing_step_is_none_when_none_pass():
    history = [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.1}, {"step": 20, "a": 0.2}]
    assert latest_passing_step(GATES, history, [10, 20]) is None
    assert latest_passing_step(GATES, [], [10, 20]) is None
    assert latest_passing_step(GATES, HISTORY, []) is None


def test_latest_passing_step_does_not_count_the_base_model_as_a_candidate():
    # history[0] is the base model, not a checkpoint evaluation at step 0.
    assert latest_passing_step(GATES, [{"step": 0, "a": 0.9}], [0]) is None


def test_latest_passing_step_tolerates_a_trips_key_in_the_history():
    history = [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.85, "trips": []}]
    assert latest_passing_step(GATES, history, [10]) == 10
