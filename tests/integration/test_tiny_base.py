"""The built-in base model really knows its source tasks and not the target task."""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.builtin import tasks
from orchestrator.builtin.recipe import heldout_rows
from orchestrator.models.generate import greedy_exact_match
from orchestrator.models.tiny.build import REPORT_FILE, ensure_tiny_base

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_base():
    # Uses $FTCTL_HOME (or ~/.cache/ftctl): built once, then shared by every test that needs it.
    return ensure_tiny_base(progress=print)


def test_build_report_shows_every_source_task_learned(tiny_base):
    report = json.loads((tiny_base / REPORT_FILE).read_text())
    assert set(report["exact_match"]) == set(tasks.SOURCE_TASKS)
    assert all(value >= 0.8 for value in report["exact_match"].values()), report["exact_match"]
    assert report["target_exact_match"] < 0.3
    assert report["steps"] > 0 and report["params"] > 0 and report["seconds"] > 0


def test_loaded_model_solves_fresh_held_out_rows(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = {task: heldout_rows(task, 100, seed=4242) for task in tasks.ALL_TASKS}
    scores = {task: greedy_exact_match(model, tokenizer, task_rows) for task, task_rows in rows.items()}
    for task in tasks.SOURCE_TASKS:
        assert scores[task] >= 0.8, scores
    assert scores[tasks.TARGET_TASK] < 0.3, scores

    # A tokenizer without a pad token (eos stands in) scores the same; training mode survives.
    tokenizer.pad_token = None
    model.train()
    assert greedy_exact_match(model, tokenizer, rows["reversal"], batch_size=16) == scores["reversal"]
    assert model.training


def test_second_ensure_reuses_the_build(tiny_base):
    report_before = (tiny_base / REPORT_FILE).stat().st_mtime_ns
    started = time.perf_counter()
    again = ensure_tiny_base(progress=lambda message: pytest.fail(f"rebuilt: {message}"))
    assert time.perf_counter() - started < 1.0
    assert again == tiny_base
    assert (tiny_base / REPORT_FILE).stat().st_mtime_ns == report_before
