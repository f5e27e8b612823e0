"""What forgetting evaluation costs a run, and where the base model's values are cached."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.forgetting.baseline import baseline_cache_file as cache_file_of_tasks
from orchestrator.forgetting.tasks import PreparedTask
from orchestrator.pipeline import forgetting_cost as cost_of_result
from orchestrator.spec import resolve_spec
from orchestrator.training.worker_io import WorkerResult


def forgetting_cost(result: dict) -> dict:
    return cost_of_result(WorkerResult(world_size=1, checkpoint=None, **result))


def baseline_cache_file(spec, model_dir, tasks, target):
    """The cache file for task entries written as JSON, as a job's config carries them."""
    return cache_file_of_tasks(spec, model_dir, [PreparedTask.from_json(t) for t in tasks],
                               PreparedTask.from_json(target) if target else None)

# ------------------------------------------------------------------ forgetting_cost


def test_cost_sums_every_evaluation_and_divides_by_training_time_without_the_inner_ones():
    result = {"steps": 300, "train_seconds": 100.0, "forgetting_evals": [
        {"step": 0, "seconds": 5.0},     # base model, before the loop
        {"step": 100, "seconds": 10.0},  # inside the loop: part of train_seconds
        {"step": 200, "seconds": 10.0},  # inside
        {"step": 300, "seconds": 5.0},   # at the end, after the loop
    ]}
    cost = forgetting_cost(result)
    assert cost["forgetting_eval_seconds"] == 30.0
    assert cost["forgetting_eval_share"] == pytest.approx(30.0 / 80.0)  # 100 s minus the 20 s inside


def test_evaluations_outside_the_loop_do_not_shrink_training_time():
    result = {"steps": 50, "train_seconds": 40.0,
              "forgetting_evals": [{"step": 0, "seconds": 4.0}, {"step": 50, "seconds": 6.0}]}
    assert forgetting_cost(result) == {"forgetting_eval_seconds": 10.0, "forgetting_eval_share": 0.25}


def test_a_gate_stop_evaluation_at_the_last_step_counts_as_outside_the_loop():
    # Stopped by a gate at step 150: that evaluation ran after the last train_seconds update.
    result = {"steps": 150, "train_seconds": 60.0,
              "forgetting_evals": [{"step": 0, "seconds": 2.0}, {"step": 100, "seconds": 10.0},
                                   {"step": 150, "seconds": 8.0}]}
    cost = forgetting_cost(result)
    assert cost["forgetting_eval_seconds"] == 20.0
    assert cost["forgetting_eval_share"] == 0.4  # 20 / (60 - 10)


def test_no_forgetting_evaluations_cost_nothing():
    assert forgetting_cost({"steps": 10, "train_seconds": 5.0, "forgetting_evals": []}) == \
        {"forgetting_eval_seconds": 0, "forgetting_eval_share": 0}
    assert forgetting_cost({"steps": 10, "train_seconds": 5.0})["forgetting_eval_share"] == 0


def test_cost_is_rounded_for_the_summary():
    result = {"steps": 10, "train_seconds": 3.0, "forgetting_evals": [{"step": 0, "seconds": 1.00049}]}
    cost = forgetting_cost(result)
    assert cost["forgetting_eval_seconds"] == 1.0
    assert cost["forgetting_eval_share"] == 0.3335


# -------------------------------------------------------------- baseline_cache_file


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FTCTL_HOME", str(home))
    return home


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(b"weights-v1")
    return model


def spec(**sections):
    raw = {"name": "t", "data": {"train": {"path": "x.jsonl"}}, **sections}
    return resolve_spec(raw, check_files=False)


TASKS = [{"name": "a", "metric": "exact_match", "rows": [{"prompt": "1+1=", "response": "2"}]},
         {"name": "b", "metric": "loss", "cache_dir": "/cache/data-cache/fingerprint-b"}]
TARGET = {"name": "target", "metric": "exact_match", "rows": [{"prompt": "x", "response": "y"}]}


def test_same_inputs_give_the_same_cache_file_under_ftctl_home(home, model_dir):
    first = baseline_cache_file(spec(), model_dir, TASKS, TARGET)
    assert first == baseline_cache_file(spec(), model_dir, [dict(t) for t in TASKS], dict(TARGET))
    assert first.parent == home / "baselines" and first.suffix == ".json"


def test_the_same_model_copied_elsewhere_shares_the_cache(home, model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere")
    assert baseline_cache_file(spec(), copy, TASKS, None) == baseline_cache_file(spec(), model_dir, TASKS, None)


def test_changed_model_weights_give_another_cache_file(home, model_dir):
    before = baseline_cache_file(spec(), model_dir, TASKS, TARGET)
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(b"weights-v2")  # same size
    os.utime(weights, ns=(mtime + 10**9, mtime + 10**9))
    assert baseline_cache_file(spec(), model_dir, TASKS, TARGET) != before


def test_changed_task_rows_give_another_cache_file(home, model_dir):
    before = baseline_cache_file(spec(), model_dir, TASKS, TARGET)
    other_rows = [{**TASKS[0], "rows": [{"prompt": "1+1=", "response": "3"}]}, TASKS[1]]
    other_data = [TASKS[0], {**TASKS[1], "cache_dir": "/cache/data-cache/fingerprint-c"}]
    other_metric = [TASKS[0], {**TASKS[1], "metric": "perplexity"}]
    other_target = {**TARGET, "rows": [{"prompt": "x", "response": "z"}]}
    after = {baseline_cache_file(spec(), model_dir, other_rows, TARGET),
             baseline_cache_file(spec(), model_dir, other_data, TARGET),
             baseline_cache_file(spec(), model_dir, other_metric, TARGET),
             baseline_cache_file(spec(), model_dir, TASKS, other_target),
             baseline_cache_file(spec(), model_dir, TASKS, None)}
    assert before not in after and len(after) == 5


def test_precision_changes_the_cache_file(home, model_dir):
    fp32 = baseline_cache_file(spec(training={"precision": "fp32"}), model_dir, TASKS, None)
    bf16 = baseline_cache_file(spec(training={"precision": "bf16"}), model_dir, TASKS, None)
    assert fp32 != bf16


def test_qlora_quantization_changes_the_cache_file(home, model_dir):
    def qlora(**quantization):
        return spec(method={"kind": "qlora", "quantization": quantization}, resources={"gpus_per_worker": 1})

    nf4 = baseline_cache_file(qlora(quant_type="nf4"), model_dir, TASKS, None)
    fp4 = baseline_cache_file(qlora(quant_type="fp4"), model_dir, TASKS, None)
    single = baseline_cache_file(qlora(quant_type="nf4", double_quant=False), model_dir, TASKS, None)
    lora = baseline_cache_file(spec(method={"kind": "lora"}), model_dir, TASKS, None)
    assert len({nf4, fp4, single, lora}) == 4


def test_settings_evaluation_does_not_depend_on_keep_the_cache(home, model_dir):
    # A learning-rate sweep over the same base and tasks reuses one baseline.
    a = baseline_cache_file(spec(training={"lr": 1e-4}, method={"kind": "lora"}), model_dir, TASKS, TARGET)
    b = baseline_cache_file(spec(training={"lr": 3e-3}, method={"kind": "full"}), model_dir, TASKS, TARGET)
    assert a == b


def test_max_seq_len_changes_the_cache_file(home, model_dir):
    short = baseline_cache_file(spec(data={"train": {"path": "x.jsonl"}, "max_seq_len": 64}), model_dir, TASKS, None)
    long = baseline_cache_file(spec(data={"train": {"path": "x.jsonl"}, "max_seq_len": 512}), model_dir, TASKS, None)
    assert short != long
