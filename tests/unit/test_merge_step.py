"""A job's merge step after training: a refused merge is a warning and the job keeps its
adapter, unless merge.required makes it fail the job. The refusal is the real one (a QA-LoRA
adapter), raised before any model is loaded."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator.pipeline import merge_step
from orchestrator.rundir import RunDir
from orchestrator.spec import resolve_spec

QALORA_ADAPTER = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "use_qalora": True}


def job(required: bool):
    return resolve_spec({"name": "qalora", "data": {"train": {"path": "train.jsonl"}},
                         "method": {"kind": "lora"}, "merge": {"enabled": True, "required": required}},
                        check_files=False)


@pytest.fixture
def trained_run(tmp_path) -> RunDir:
    """A run dir whose training left a LoRA adapter that this merge refuses."""
    run = RunDir(tmp_path / "run")
    run.adapter.mkdir(parents=True)
    (run.adapter / "adapter_config.json").write_text(json.dumps(QALORA_ADAPTER))
    return run


def step(spec, run: RunDir) -> tuple[dict, str | None, str]:
    out = io.StringIO()
    config = SimpleNamespace(model_dir=str(run.root / "no-base-needed"), eval_cache=None)
    merge, error = merge_step(spec, run, config, Console(file=out, width=300))
    return merge, error, out.getvalue()


def test_a_refused_merge_is_a_warning_and_the_job_keeps_its_adapter(trained_run):
    merge, error, said = step(job(required=False), trained_run)
    assert error is None  # the job does not fail
    assert "use_qalora" in merge["error"] and "does not implement" in merge["error"]
    assert "\n" not in merge["error"]
    assert "path" not in merge and not trained_run.merged.exists()
    assert (trained_run.adapter / "adapter_config.json").is_file()
    assert said.startswith("warning:") and "the job succeeds with its adapter" in said
    assert "merge.required" in said


def test_with_merge_required_a_refused_merge_fails_the_job(trained_run):
    merge, error, said = step(job(required=True), trained_run)
    assert error == merge["error"] and "use_qalora" in error
    assert "the job fails (merge.required)" in said and "warning" not in said


def test_merge_required_is_off_unless_asked_for():
    spec = resolve_spec({"name": "j", "data": {"train": {"path": "t.jsonl"}}, "merge": {"enabled": True}},
                        check_files=False)
    assert spec.merge.required is False
