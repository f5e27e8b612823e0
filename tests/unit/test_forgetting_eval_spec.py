"""`ftctl eval`'s job: built from --tasks NAME=PATH / PATH, or from a job file's forgetting section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.forgetting.gates import Gate, gates_of
from orchestrator.forgetting.standalone import eval_spec
from orchestrator.spec import SpecError

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def task_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prompt": "1+1=", "response": "2"}) + "\n")
    return str(path)


def test_tasks_given_as_name_path_and_as_path(tmp_path):
    named = task_file(tmp_path / "arith.jsonl")
    plain = task_file(tmp_path / "source_sorting.jsonl")
    spec = eval_spec("builtin:tiny-base", [f"maths={named}", plain], None, "loss", 50, 0.1)
    tasks = spec.forgetting.tasks
    assert [(t.name, t.path) for t in tasks] == [("maths", named), ("sorting", plain)]  # "source_" dropped
    assert {(t.metric, t.max_examples, t.max_drop) for t in tasks} == {("loss", 50, None)}
    assert spec.model.path == "builtin:tiny-base"
    assert spec.data.train.path == named
    assert spec.forgetting.max_drop == 0.1
    assert gates_of(spec.forgetting) == [Gate("maths", "loss", 0.1), Gate("sorting", "loss", 0.1)]


def test_tasks_without_max_drop_have_no_gate(tmp_path):
    spec = eval_spec("builtin:tiny-base", [task_file(tmp_path / "a.jsonl")], None, "exact_match", None, None)
    assert spec.forgetting.tasks[0].name == "a" and spec.forgetting.tasks[0].max_examples is None
    assert gates_of(spec.forgetting) == []


def test_choice_metrics_read_multiple_choice_rows(tmp_path):
    spec = eval_spec("builtin:tiny-base", [task_file(tmp_path / "mc_sorting.jsonl")], None, "choice_norm", None, None)
    assert [(t.format, t.metric) for t in spec.forgetting.tasks] == [("multiple_choice", "choice_norm")]


def test_a_path_with_an_equals_sign_keeps_its_name_and_path(tmp_path):
    # Partitioned data folders are often named key=value.
    path = task_file(tmp_path / "split=test" / "arith.jsonl")
    named = eval_spec("builtin:tiny-base", [f"maths={path}"], None, "exact_match", None, None)
    assert [(t.name, t.path) for t in named.forgetting.tasks] == [("maths", path)]
    plain = eval_spec("builtin:tiny-base", [path], None, "exact_match", None, None)
    assert [(t.name, t.path) for t in plain.forgetting.tasks] == [("arith", path)]


def test_relative_paths_with_and_without_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task_file(tmp_path / "source_sorting.jsonl")
    task_file(tmp_path / "arith.jsonl")
    spec = eval_spec("builtin:tiny-base", ["source_sorting.jsonl", "maths=arith.jsonl", "=arith.jsonl"], None,
                     "exact_match", None, None)
    assert [(t.name, t.path) for t in spec.forgetting.tasks] == \
        [("sorting", "source_sorting.jsonl"), ("maths", "arith.jsonl"), ("arith", "arith.jsonl")]


def test_a_missing_task_file_is_reported(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        eval_spec("builtin:tiny-base", [f"a={tmp_path / 'missing.jsonl'}"], None, "exact_match", None, None)


def test_job_form_takes_the_jobs_tasks_with_model_and_max_drop_overrides(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    spec = eval_spec(str(model), [], QUICKSTART, "loss", 7, 0.05)
    assert spec.model.path == str(model)
    assert spec.forgetting.max_drop == 0.05
    tasks = spec.forgetting.tasks
    assert [t.name for t in tasks] == ["arithmetic", "reversal", "sorting", "kv_recall"]
    # --metric and --max-examples apply to --tasks only; the job's own settings stay.
    assert {(t.metric, t.max_examples) for t in tasks} == {("exact_match", 100)}
    assert [g.max_drop for g in gates_of(spec.forgetting)] == [0.05] * 4
    assert spec.name == "quickstart"


def test_job_form_without_overrides_keeps_the_jobs_model_and_has_no_gates():
    spec = eval_spec(None, [], QUICKSTART, "exact_match", None, None)
    assert spec.model.path == "builtin:tiny-base"
    assert spec.forgetting.max_drop is None
    assert gates_of(spec.forgetting) == []


def test_job_form_rejects_a_model_dir_that_is_not_a_model(tmp_path):
    with pytest.raises(SpecError, match="model.path"):
        eval_spec(str(tmp_path / "nowhere"), [], QUICKSTART, "exact_match", None, None)
