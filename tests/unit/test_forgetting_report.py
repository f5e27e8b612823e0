import io
import json

import pytest
from rich.console import Console

from orchestrator.forgetting.metrics import change
from orchestrator.forgetting.report import (_relative, build_forgetting_report, forgetting_table,
                                            write_forgetting_report)
from orchestrator.spec import resolve_spec


def test_direction_of_worse_depends_on_metric():
    assert change("exact_match", 0.9, 0.7)["worse"] is True
    assert change("exact_match", 0.7, 0.9)["worse"] is False
    assert change("loss", 1.0, 1.5)["worse"] is True
    assert change("perplexity", 3.0, 2.0)["worse"] is False
    c = change("exact_match", 0.8, 0.6)
    assert c["delta"] == pytest.approx(-0.2) and c["drop"] == pytest.approx(0.2)
    assert c["relative_delta"] == pytest.approx(-0.25)


def test_report_has_base_evals_final_and_summary(tmp_path):
    spec = resolve_spec({"name": "t", "data": {"train": {"path": "x.jsonl"}},
                         "forgetting": {"tasks": [{"name": "a", "path": "a.jsonl", "metric": "exact_match"},
                                                  {"name": "b", "path": "b.jsonl", "metric": "loss"}]}},
                        check_files=False)
    history = [{"step": 0, "a": 0.9, "b": 1.0}, {"step": 10, "a": 0.8, "b": 0.9}, {"step": 20, "a": 0.5, "b": 0.8}]
    report = build_forgetting_report(spec, history)
    a = report["tasks"]["a"]
    assert (a["base"], a["final"], a["worse"]) == (0.9, 0.5, True)
    assert [e["step"] for e in a["evals"]] == [0, 10, 20]
    assert report["tasks"]["b"]["worse"] is False
    assert report["summary"]["tasks_worse"] == ["a"]
    assert report["summary"]["largest_drop"]["task"] == "a"
    write_forgetting_report(report, tmp_path / "forgetting.json", tmp_path / "forgetting.png")
    assert json.loads((tmp_path / "forgetting.json").read_text())["tasks"]["a"]["final"] == 0.5
    assert (tmp_path / "forgetting.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- helpers


def spec_with(tasks: list[dict], max_drop: float | None = None):
    return resolve_spec({"name": "t", "data": {"train": {"path": "x.jsonl"}},
                         "forgetting": {"tasks": [{"path": f"{t['name']}.jsonl", **t} for t in tasks],
                                        "max_drop": max_drop}},
                        check_files=False)


def render(table) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()


def row_of(text: str, first_cell: str) -> str:
    lines = [line for line in text.splitlines() if line.strip("│ ").startswith(first_cell)]
    assert len(lines) == 1, text
    return lines[0]


ONE_TASK = [{"name": "a", "metric": "exact_match"}]


# ---------------------------------------------------------------------- target task


def test_target_history_gives_the_target_curve_and_negative_transfer():
    target = [{"step": 0, "value": 0.6}, {"step": 10, "value": 0.7}, {"step": 20, "value": 0.4}]
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}, {"step": 20, "a": 0.5}],
                                     target_history=target)
    t = report["target"]
    assert t["metric"] == "exact_match"
    assert [e["step"] for e in t["evals"]] == [0, 10, 20]
    assert (t["base"], t["final"]) == (0.6, 0.4)
    assert t["delta"] == pytest.approx(-0.2)
    assert report["negative_transfer"] is True and report["summary"]["negative_transfer"] is True


def test_target_that_improved_is_not_negative_transfer():
    target = [{"step": 0, "value": 0.2}, {"step": 20, "value": 0.9}]
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}], target_history=target)
    assert report["target"]["worse"] is False
    assert report["negative_transfer"] is False


def test_without_target_history_negative_transfer_comes_from_eval_loss():
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}],
                                     eval_base={"eval_loss": 1.0}, eval_final={"eval_loss": 1.3, "step": 20})
    t = report["target"]
    assert (t["metric"], t["base"], t["final"], t["evals"]) == ("loss", 1.0, 1.3, [])
    assert t["worse"] is True and report["negative_transfer"] is True
    better = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}],
                                     eval_base={"eval_loss": 1.0}, eval_final={"eval_loss": 0.4})
    assert better["negative_transfer"] is False


def test_no_target_measurement_means_negative_transfer_unknown():
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}],
                                     eval_base={"eval_loss": 1.0}, eval_final={"step": 20})
    assert report["target"] is None
    assert report["negative_transfer"] is None and report["summary"]["negative_transfer"] is None


def test_after_a_rollback_the_final_eval_loss_is_not_used_for_the_target():
    # eval_final was measured on the last model, not on the kept (rolled-back) step.
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.5}, {"step": 10, "a": 0.5}],
                                     final_step=10, eval_base={"eval_loss": 1.0}, eval_final={"eval_loss": 3.0})
    assert report["target"] is None


# ----------------------------------------------------------------- final step, gates


def test_final_step_picks_the_rollback_steps_values():
    history = [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.85}, {"step": 20, "a": 0.3}]
    target = [{"step": 0, "value": 0.1}, {"step": 10, "value": 0.5}, {"step": 20, "value": 0.7}]
    report = build_forgetting_report(spec_with(ONE_TASK), history, target_history=target, final_step=10)
    a = report["tasks"]["a"]
    assert (a["final_step"], a["final"]) == (10, 0.85)
    assert a["drop"] == pytest.approx(0.05)
    assert [e["step"] for e in a["evals"]] == [0, 10, 20]  # the curve still shows every evaluation
    assert report["target"]["final"] == 0.5
    # Without final_step the last evaluation is final.
    assert build_forgetting_report(spec_with(ONE_TASK), history)["tasks"]["a"]["final"] == 0.3


def test_gates_tripped_are_collected_from_the_history():
    trip_a = {"task": "a", "metric": "exact_match", "base": 0.9, "value": 0.5, "drop": 0.4, "max_drop": 0.1,
              "step": 10}
    trip_b = {**trip_a, "value": 0.2, "drop": 0.7, "step": 20}
    history = [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.5, "trips": [trip_a]}, {"step": 20, "a": 0.2,
                                                                                 "trips": [trip_b]}]
    report = build_forgetting_report(spec_with(ONE_TASK, max_drop=0.1), history)
    assert report["summary"]["gates_tripped"] == [trip_a, trip_b]
    clean = build_forgetting_report(spec_with(ONE_TASK, max_drop=0.1), [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.9}])
    assert clean["summary"]["gates_tripped"] == []


def test_each_task_reports_its_own_max_drop_and_whether_it_passed():
    spec = spec_with([{"name": "a", "metric": "exact_match", "max_drop": 0.05},
                      {"name": "b", "metric": "loss"},
                      {"name": "c", "metric": "exact_match", "max_drop": 0.5}], max_drop=0.2)
    history = [{"step": 0, "a": 0.9, "b": 1.0, "c": 0.8}, {"step": 10, "a": 0.8, "b": 1.2, "c": 0.3}]
    tasks = build_forgetting_report(spec, history)["tasks"]
    assert (tasks["a"]["max_drop"], tasks["a"]["passed"]) == (0.05, False)
    assert (tasks["b"]["max_drop"], tasks["b"]["passed"]) == (0.2, True)  # drop 0.2 == limit: passes
    assert (tasks["c"]["max_drop"], tasks["c"]["passed"]) == (0.5, True)


def test_tasks_without_a_gate_have_no_max_drop_or_passed():
    report = build_forgetting_report(spec_with(ONE_TASK), [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.1}])
    assert "max_drop" not in report["tasks"]["a"] and "passed" not in report["tasks"]["a"]


def test_a_task_never_evaluated_is_left_out():
    spec = spec_with([{"name": "a", "metric": "exact_match"}, {"name": "b", "metric": "loss"}])
    report = build_forgetting_report(spec, [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.8}])
    assert list(report["tasks"]) == ["a"]
    assert report["summary"]["tasks"] == 1


# ------------------------------------------------------------------- table and plot


def test_table_shows_relative_change_and_na_when_base_is_zero():
    spec = spec_with([{"name": "zero", "metric": "exact_match", "max_drop": 0.1},
                      {"name": "half", "metric": "exact_match", "max_drop": 0.01}])
    history = [{"step": 0, "zero": 0.0, "half": 0.5}, {"step": 10, "zero": 0.2, "half": 0.25}]
    report = build_forgetting_report(spec, history, target_history=[{"step": 0, "value": 0.5},
                                                                    {"step": 10, "value": 0.4}])
    text = render(forgetting_table(report))
    zero = row_of(text, "zero")
    assert "n/a" in zero and "%" not in zero
    assert "+0.200" in zero and "worse" not in zero and "ok (max drop 0.1)" in zero
    half = row_of(text, "half")
    assert "-50.0%" in half and "-0.250 worse" in half and "tripped (max drop 0.01)" in half
    target = row_of(text, "target")
    assert "-20.0%" in target and "negative transfer" in target


def test_relative_is_na_only_for_a_zero_base():
    assert _relative({"base": 0.0, "relative_delta": 0.0}) == "n/a"
    assert _relative({"base": 2.0, "relative_delta": 0.25}) == "+25.0%"


def test_png_is_written_with_the_target_curve(tmp_path):
    history = [{"step": 0, "a": 0.9}, {"step": 10, "a": 0.8}, {"step": 20, "a": 0.7}]
    target = [{"step": 0, "value": 0.1}, {"step": 10, "value": 0.6}, {"step": 20, "value": 0.8}]
    with_target = build_forgetting_report(spec_with(ONE_TASK), history, target_history=target)
    without = build_forgetting_report(spec_with(ONE_TASK), history)
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    write_forgetting_report(with_target, tmp_path / "with" / "forgetting.json", tmp_path / "with" / "forgetting.png")
    write_forgetting_report(without, tmp_path / "without" / "forgetting.json", tmp_path / "without" / "forgetting.png")
    png = (tmp_path / "with" / "forgetting.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert png != (tmp_path / "without" / "forgetting.png").read_bytes()  # the target curve was drawn
    saved = json.loads((tmp_path / "with" / "forgetting.json").read_text())
    assert [e["value"] for e in saved["target"]["evals"]] == [0.1, 0.6, 0.8]
