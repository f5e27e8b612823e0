"""Forgetting tasks from lm-evaluation-harness: which task and metric, and bad input said clearly."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.forgetting import lm_eval
from orchestrator.forgetting.lm_eval import LmEvalError, read_metric
from orchestrator.forgetting.metrics import change, higher_is_better
from orchestrator.forgetting.tasks import PreparedTask
from orchestrator.spec.models import JobSpec, LmEvalTaskSpec

pytest.importorskip("lm_eval")


def write_task(folder, name="t_mc", metric_list=None, rows=4):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "choices": [str(i + 1), str(i + 2)], "answer": 0}) + "\n"
                            for i in range(rows)))
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
              "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "target_delimiter": "",
              "metric_list": metric_list or [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                             {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return folder


def job(**task) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "data": {"train": {"path": "builtin:demo/target_train.jsonl"}},
                                   "forgetting": {"tasks": [{"name": "t", **task}]}})


def test_a_local_task_reads_its_primary_metric_and_direction(tmp_path):
    write_task(tmp_path)
    prepared = lm_eval.prepare("t", LmEvalTaskSpec(task="t_mc", include_path=str(tmp_path), limit=3))
    assert prepared.metric == "acc" and higher_is_better("acc")
    assert prepared.lm_eval == {"task": "t_mc", "num_fewshot": None, "limit": 3, "include_path": str(tmp_path)}
    assert PreparedTask.from_json(json.loads(json.dumps(prepared.to_json()))) == prepared
    (tmp_path / "ppl").mkdir()
    # a metric ftctl does not know: its direction comes from the task's metric_list
    lower = write_task(tmp_path / "ppl", "t_dist", [{"metric": "edit_distance", "higher_is_better": False}])
    prepared = lm_eval.prepare("p", LmEvalTaskSpec(task="t_dist", include_path=str(lower)))
    assert prepared.metric == "edit_distance" and not higher_is_better(prepared.metric)
    assert change(prepared.metric, 10.0, 12.0)["drop"] == 2.0  # a higher distance is worse


def test_the_gate_reads_a_named_metric_instead(tmp_path):
    write_task(tmp_path)
    prepared = lm_eval.prepare("t", LmEvalTaskSpec(task="t_mc", include_path=str(tmp_path), metric="acc_norm"))
    assert prepared.metric == "acc_norm"


def test_an_unknown_task_is_refused_with_the_closest_name(tmp_path):
    write_task(tmp_path)
    with pytest.raises(LmEvalError, match=r"no task 't_mcc'.*did you mean 't_mc'"):
        lm_eval.manager_for("t_mcc", str(tmp_path))


def test_a_task_yaml_that_does_not_parse_names_its_file(tmp_path):
    write_task(tmp_path)
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    with pytest.raises(LmEvalError, match=r"broken.yaml does not parse"):
        lm_eval.prepare("t", LmEvalTaskSpec(task="t_mc", include_path=str(tmp_path)))


def test_a_metric_is_read_unfiltered_or_by_its_first_filter():
    results = {"gsm": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                       "exact_match,flexible-extract": 0.5, "alias": "gsm"},
               "arc": {"acc,none": 0.6, "acc_norm,none": 0.7}}
    assert read_metric(results, "arc", "acc") == 0.6
    assert read_metric(results, "gsm", "exact_match") == 0.25
    assert read_metric(results, "gsm", "exact_match,flexible-extract") == 0.5
    with pytest.raises(LmEvalError, match="reports no metric 'f1'; it reports exact_match"):
        read_metric(results, "gsm", "f1")


def test_an_lm_eval_entry_takes_nothing_of_a_file_task():
    assert job(lm_eval={"task": "arc_easy", "limit": 50}).forgetting.tasks[0].lm_eval.limit == 50
    from orchestrator.spec.rules import forgetting_tasks_consistent

    problems = forgetting_tasks_consistent(job(lm_eval={"task": "arc_easy"}, metric="loss"))
    assert problems and problems[0].path == "forgetting.tasks.0.metric" and "do not apply" in problems[0].message
    problems = forgetting_tasks_consistent(job())
    assert problems and problems[0].path == "forgetting.tasks.0.path"
