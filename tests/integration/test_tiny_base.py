"""The built-in base model really knows its source tasks and not the target task; the build
the package ships scores what its report says; the recipe's build path works end to end."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import pytest

from orchestrator.builtin import tasks
from orchestrator.builtin.recipe import RECIPE, Recipe, heldout_rows
from orchestrator.models.generate import greedy_exact_match
from orchestrator.models.tiny import build
from orchestrator.models.tiny.build import REPORT_FILE, SHIPPED_DIR, ensure_tiny_base

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_base():
    # Uses $FTCTL_HOME (or ~/.cache/ftctl): the shipped build, installed once and shared by
    # every test that needs it.
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


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_shipped_weights_score_what_their_build_report_says():
    # The build's own held-out evaluation, on the shipped files; greedy decoding of float32
    # weights on CPU gives the same tokens run to run, so the scores match exactly.
    report = json.loads((SHIPPED_DIR / REPORT_FILE).read_text())
    model, tokenizer = load(SHIPPED_DIR)
    exact_match, target_exact_match = build._evaluate(model, tokenizer, RECIPE, say=lambda message: None)
    assert exact_match == report["exact_match"]
    assert target_exact_match == report["target_exact_match"]


# Seconds of pre-training: far too little to learn the tasks, enough to run every step.
SHORT_RECIPE = Recipe(steps=10, warmup_steps=2, batch_size=16, pool_per_task=200, eval_per_task=10)


def test_recipe_build_saves_a_model_that_scores_its_report(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "MIN_SOURCE_EXACT_MATCH", 0.0)  # the short recipe learns little
    out = tmp_path / "built"

    report = build.build_tiny_base(out, recipe=SHORT_RECIPE)

    assert json.loads((out / REPORT_FILE).read_text()) == report
    assert report["recipe"] == asdict(SHORT_RECIPE) and report["steps"] == SHORT_RECIPE.steps
    assert set(report["exact_match"]) == set(tasks.SOURCE_TASKS)
    model, tokenizer = load(out)
    assert sum(p.numel() for p in model.parameters()) == report["params"]
    assert build._evaluate(model, tokenizer, SHORT_RECIPE, say=lambda message: None) == (
        report["exact_match"], report["target_exact_match"])


def test_recipe_that_leaves_a_task_unlearned_is_refused_and_saves_nothing(tmp_path):
    out = tmp_path / "built"

    with pytest.raises(RuntimeError, match=r"recipe v\d+ is broken: held-out exact match .* is below 0.8"):
        build.build_tiny_base(out, recipe=SHORT_RECIPE)

    assert list(out.iterdir()) == []
