"""Promotion gates: target gain, drops versus base and versus the previous promoted version,
and the verdict's reason. Values are binary fractions so the boundaries are exact."""

from __future__ import annotations

import math

from orchestrator.forgetting.gates import Gate
from orchestrator.refresh.gates import Measured, promotion_gates, verdict

EM = Gate("rev", "exact_match", 0.25)   # higher is better
LOSS = Gate("ppl", "loss", 0.25)         # lower is better


def by_name(results):
    return {r.gate: r for r in results}


# ------------------------------------------------------------------------- target


def test_target_gain_must_be_strictly_greater_than_the_minimum():
    base = Measured(2.0, {})
    equal = promotion_gates(Measured(1.5, {}), base, None, [], min_target_gain=0.5, max_drop_vs_previous=None)
    assert len(equal) == 1
    assert (equal[0].gate, equal[0].passed, equal[0].value, equal[0].limit) == ("target", False, 0.5, 0.5)
    assert "<=" in equal[0].detail
    better = promotion_gates(Measured(1.25, {}), base, None, [], min_target_gain=0.5, max_drop_vs_previous=None)
    assert (better[0].passed, better[0].value) == (True, 0.75)
    # with no minimum, no change is still not a gain
    same = promotion_gates(Measured(2.0, {}), base, None, [], min_target_gain=0.0, max_drop_vs_previous=None)
    assert (same[0].passed, same[0].value) == (False, 0.0)
    worse = promotion_gates(Measured(2.5, {}), base, None, [], min_target_gain=0.0, max_drop_vs_previous=None)
    assert (worse[0].passed, worse[0].value) == (False, -0.5)


def test_first_version_is_compared_with_base_later_ones_with_previous():
    base, previous = Measured(3.0, {}), Measured(2.0, {})
    candidate = Measured(1.75, {})
    first = promotion_gates(candidate, base, None, [], 0.5, None)[0]
    assert (first.passed, first.value) == (True, 1.25)
    assert "(base)" in first.detail
    later = promotion_gates(candidate, base, previous, [], 0.5, None)[0]
    assert (later.passed, later.value) == (False, 0.25)  # beats base by 1.25 but previous only by 0.25
    assert "(previous)" in later.detail


# ----------------------------------------------------------------------- vs base


def test_drop_versus_base_follows_the_metric_direction_and_equal_passes():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    gates = [EM, LOSS]

    at_limit = by_name(promotion_gates(Measured(1.0, {"rev": 0.5, "ppl": 1.25}), base, None, gates, 0.0, None))
    assert (at_limit["rev vs base"].passed, at_limit["rev vs base"].value) == (True, 0.25)
    assert (at_limit["ppl vs base"].passed, at_limit["ppl vs base"].value) == (True, 0.25)

    # exact match going down is a drop; loss going down is a gain
    down = by_name(promotion_gates(Measured(1.0, {"rev": 0.25, "ppl": 0.5}), base, None, gates, 0.0, None))
    assert (down["rev vs base"].passed, down["rev vs base"].value) == (False, 0.5)
    assert (down["ppl vs base"].passed, down["ppl vs base"].value) == (True, -0.5)

    # exact match going up is a gain; loss going up is a drop
    up = by_name(promotion_gates(Measured(1.0, {"rev": 1.0, "ppl": 1.5}), base, None, gates, 0.0, None))
    assert (up["rev vs base"].passed, up["rev vs base"].value) == (True, -0.25)
    assert (up["ppl vs base"].passed, up["ppl vs base"].value) == (False, 0.5)
    assert up["ppl vs base"].limit == 0.25
    assert ">" in up["ppl vs base"].detail


def test_without_previous_there_are_no_vs_previous_gates_and_the_order_is_fixed():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    cand = Measured(1.0, {"rev": 0.75, "ppl": 1.0})
    alone = promotion_gates(cand, base, None, [EM, LOSS], 0.0, None)
    assert [r.gate for r in alone] == ["target", "rev vs base", "ppl vs base"]
    with_prev = promotion_gates(cand, base, Measured(1.5, {"rev": 0.75, "ppl": 1.0}), [EM, LOSS], 0.0, None)
    assert [r.gate for r in with_prev] == ["target", "rev vs base", "ppl vs base", "rev vs previous",
                                           "ppl vs previous"]


# ------------------------------------------------------------------- vs previous


def test_vs_previous_uses_the_tasks_own_gate_when_no_separate_limit_is_set():
    base = Measured(2.0, {"rev": 1.0, "ppl": 0.5})
    previous = Measured(1.5, {"rev": 0.75, "ppl": 1.0})
    cand = Measured(1.0, {"rev": 0.5, "ppl": 1.25})          # 0.25 below previous on both
    r = by_name(promotion_gates(cand, base, previous, [EM, LOSS], 0.0, None))
    assert (r["rev vs previous"].passed, r["rev vs previous"].value, r["rev vs previous"].limit) == (True, 0.25, 0.25)
    assert (r["ppl vs previous"].passed, r["ppl vs previous"].value, r["ppl vs previous"].limit) == (True, 0.25, 0.25)
    # versus base the same candidate is 0.5 and 0.75 worse: those gates fail
    assert (r["rev vs base"].passed, r["rev vs base"].value) == (False, 0.5)
    assert (r["ppl vs base"].passed, r["ppl vs base"].value) == (False, 0.75)


def test_vs_previous_uses_max_drop_vs_previous_when_set():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    previous = Measured(1.5, {"rev": 0.75, "ppl": 1.0})
    cand = Measured(1.0, {"rev": 0.5, "ppl": 1.125})
    r = by_name(promotion_gates(cand, base, previous, [EM, LOSS], 0.0, max_drop_vs_previous=0.125))
    assert (r["rev vs previous"].passed, r["rev vs previous"].limit) == (False, 0.125)      # 0.25 > 0.125
    assert (r["ppl vs previous"].passed, r["ppl vs previous"].limit) == (True, 0.125)       # 0.125 == 0.125
    # the vs-base gates keep the task's own limit
    assert (r["rev vs base"].passed, r["rev vs base"].limit) == (True, 0.25)
    # 0 is a real limit (no drop at all), not "unset"
    strict = by_name(promotion_gates(cand, base, previous, [EM, LOSS], 0.0, max_drop_vs_previous=0.0))
    assert (strict["ppl vs previous"].passed, strict["ppl vs previous"].limit) == (False, 0.0)
    # a looser vs-previous limit lets through what the task's gate would not
    loose = by_name(promotion_gates(Measured(1.0, {"rev": 0.375, "ppl": 1.0}), base, previous, [EM, LOSS], 0.0,
                                    max_drop_vs_previous=0.5))
    assert (loose["rev vs previous"].passed, loose["rev vs previous"].value) == (True, 0.375)
    assert loose["rev vs base"].passed is False


def test_a_task_missing_from_the_measurements_fails_its_gate():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    cand = Measured(1.0, {"rev": 0.75})                       # ppl not measured on the candidate
    r = by_name(promotion_gates(cand, base, Measured(1.5, {"rev": 0.75}), [EM, LOSS], 0.0, None))
    assert r["rev vs base"].passed and r["rev vs previous"].passed
    for gate in ("ppl vs base", "ppl vs previous"):
        assert r[gate].passed is False
        assert math.isnan(r[gate].value)
        assert r[gate].detail == "ppl was not measured"
    # missing on the base side fails too
    r = by_name(promotion_gates(Measured(1.0, {"rev": 0.75, "ppl": 1.0}), Measured(2.0, {"ppl": 1.0}), None,
                                [EM, LOSS], 0.0, None))
    assert r["rev vs base"].passed is False
    assert r["ppl vs base"].passed is True


# ------------------------------------------------------------------------ verdict


def test_verdict_all_passed_counts_the_gates():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    results = promotion_gates(Measured(1.0, {"rev": 0.75, "ppl": 1.0}), base, Measured(1.5, {"rev": 0.75, "ppl": 1.0}),
                              [EM, LOSS], 0.0, None)
    assert verdict(results) == (True, "all 5 gates passed")
    assert verdict(promotion_gates(Measured(1.0, {}), base, None, [], 0.0, None)) == (True, "all 1 gates passed")


def test_verdict_lists_every_failed_gate_and_only_those():
    base = Measured(2.0, {"rev": 0.75, "ppl": 1.0})
    previous = Measured(1.5, {"rev": 0.75, "ppl": 1.0})
    cand = Measured(1.75, {"rev": 0.25})                       # target worse than previous; rev drops 0.5; ppl missing
    results = promotion_gates(cand, base, previous, [EM, LOSS], 0.0, None)
    promote, reason = verdict(results)
    assert promote is False
    failed = [r for r in results if not r.passed]
    assert [r.gate for r in failed] == ["target", "rev vs base", "ppl vs base", "rev vs previous", "ppl vs previous"]
    assert reason == "; ".join(f"{r.gate}: {r.detail}" for r in failed)
    for name in ("target:", "rev vs base:", "ppl vs base:", "rev vs previous:", "ppl vs previous:"):
        assert name in reason

    one = promotion_gates(Measured(1.0, {"rev": 0.25, "ppl": 1.0}), base, previous, [EM, LOSS], 0.0, None)
    promote, reason = verdict(one)
    assert promote is False
    assert reason.startswith("rev vs base: exact_match 0.750 -> 0.250: drop 0.500 > 0.25")
    assert "rev vs previous:" in reason
    assert "target" not in reason and "ppl" not in reason


def test_gate_results_serialise():
    r = promotion_gates(Measured(1.0, {}), Measured(2.0, {}), None, [], 0.5, None)[0]
    assert r.as_dict() == {"gate": "target", "passed": True, "value": 1.0, "limit": 0.5,
                           "detail": "eval loss 2.0000 (base) -> 1.0000: gain 1.0000 > 0.5"}
