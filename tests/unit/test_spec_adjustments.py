"""What loading changes in a job instead of refusing it, and says: a warmup cut to fit a
shortened run, a method block dropped when the method's kind is switched on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.spec import Note, SpecError, load_spec, resolve_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"  # kind lora with a lora block, warmup_steps 20


def loaded(job, overrides=()) -> tuple:
    notes: list[Note] = []
    load = load_spec if isinstance(job, Path) else resolve_spec
    spec = load(job, list(overrides), check_files=False, notes=notes)
    return spec, {n.path: n for n in notes}


def refused(job, overrides=()) -> dict:
    with pytest.raises(SpecError) as err:
        load = load_spec if isinstance(job, Path) else resolve_spec
        load(job, list(overrides), check_files=False)
    return {p.path: p for p in err.value.problems}


def job_with_method(**method) -> dict:
    return {"name": "adjust", "data": {"train": {"path": "train.jsonl"}}, "method": method}


# ---------------------------------------------------------------------------- warmup


def test_a_warmup_as_long_as_the_run_is_cut_to_a_tenth_of_it_and_said():
    spec, notes = loaded(QUICKSTART, ["training.max_steps=20"])
    assert spec.training.warmup_steps == 2
    note = notes["training.warmup_steps"]
    assert "warmup (20 steps)" in note.message and "training.max_steps (20)" in note.message
    assert "2 step(s)" in note.message and "below 20" in note.hint


@pytest.mark.parametrize("max_steps, warmup, kept", [(20, 19, 19), (300, 20, 20), (5, 50, 0), (1, 1, 0)])
def test_only_a_warmup_that_does_not_fit_is_changed(max_steps, warmup, kept):
    spec, notes = loaded(QUICKSTART, [f"training.max_steps={max_steps}", f"training.warmup_steps={warmup}"])
    assert spec.training.warmup_steps == kept
    assert ("training.warmup_steps" in notes) == (kept != warmup)


def test_a_run_by_epochs_keeps_its_warmup():
    spec, notes = loaded(QUICKSTART, ["training.max_steps=null", "training.epochs=1", "training.warmup_steps=500"])
    assert spec.training.warmup_steps == 500 and notes == {}


def test_the_readme_example_validates_and_warns_once(capsys):
    code = main(["validate", str(QUICKSTART), "training.max_steps=20", "resources.workers=1",
                 "forgetting.tasks.0.max_examples=50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "is valid" in " ".join(out.split())
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "training.warmup_steps" in warnings[0] and "cut to a tenth" in warnings[0]


def test_the_resolved_job_carries_the_cut_warmup(capsys):
    # launch k8s prints the resolved job (the ConfigMap's job.yaml) on stdout and the warning on stderr.
    assert main(["launch", "k8s", str(QUICKSTART), "training.max_steps=15"]) == 0
    out, err = capsys.readouterr()
    config_map = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap")
    job = yaml.safe_load(config_map["data"]["job.yaml"])
    assert job["training"]["max_steps"] == 15 and job["training"]["warmup_steps"] == 1
    assert "warning:" in err and "training.warmup_steps" in err
    # Read back, the resolved job is as it is: nothing more to adjust.
    assert loaded(job)[1] == {}


# ------------------------------------------------------------ method kind on the command line


def test_full_on_the_command_line_drops_the_files_lora_block_with_a_note():
    spec, notes = loaded(QUICKSTART, ["method.kind=full"])
    assert spec.method.kind == "full" and spec.method.lora is None
    assert set(notes) == {"method.lora"}
    assert "method.kind=full was set on the command line" in notes["method.lora"].message
    assert "dropped" in notes["method.lora"].message


def test_the_cli_says_what_it_dropped_and_runs_the_new_kind(capsys):
    assert main(["validate", str(QUICKSTART), "method.kind=full"]) == 0
    out, err = capsys.readouterr()
    assert "method full" in " ".join(out.split())  # the console wraps long lines
    assert any(line.startswith("warning:") and "method.lora" in line and "dropped" in line
               for line in err.splitlines()), err


@pytest.mark.parametrize("new_kind, dropped", [("freeze", {"method.lora"}), ("full", {"method.lora"})])
def test_other_kinds_drop_the_adapter_block_too(new_kind, dropped):
    spec, notes = loaded(QUICKSTART, [f"method.kind={new_kind}"])
    assert spec.method.kind == new_kind and set(notes) == dropped


def test_lora_to_qlora_keeps_the_adapter_settings_and_adds_the_4bit_defaults():
    spec, notes = loaded(QUICKSTART, ["method.kind=qlora"])
    assert spec.method.kind == "qlora" and spec.method.lora.r == 16 and spec.method.quantization is not None
    assert notes == {}


def test_qlora_to_lora_drops_the_quantization_block_and_keeps_the_adapter():
    qlora = job_with_method(kind="qlora", lora={"r": 4}, quantization={"quant_type": "fp4"})
    spec, notes = loaded(qlora, ["method.kind=lora"])
    assert spec.method.kind == "lora" and spec.method.lora.r == 4 and spec.method.quantization is None
    assert set(notes) == {"method.quantization"}


def test_a_freeze_file_switched_to_lora_drops_its_freeze_block():
    freeze = job_with_method(kind="freeze", freeze={"trainable_layers": 1})
    spec, notes = loaded(freeze, ["method.kind=lora"])
    assert spec.method.freeze is None and spec.method.lora is not None and set(notes) == {"method.freeze"}


def test_a_kind_and_a_block_that_disagree_in_the_same_file_are_still_refused():
    problem = refused(job_with_method(kind="full", lora={"r": 4}))["method.lora"]
    assert "do not apply to method.kind=full" in problem.message
    assert "method.lora=null" in problem.hint


def test_the_file_kind_given_again_on_the_command_line_drops_nothing():
    # The file itself disagrees with itself; repeating its kind changes nothing about that.
    problems = refused(job_with_method(kind="full", lora={"r": 4}), ["method.kind=full"])
    assert "method.lora=null" in problems["method.lora"].hint


def test_a_kind_and_a_block_that_disagree_on_the_command_line_are_still_refused():
    problem = refused(QUICKSTART, ["method.kind=full", "method.lora.r=4"])["method.lora"]
    assert "method.lora=null" in problem.hint


def test_a_block_the_files_own_kind_did_not_use_is_still_refused():
    stray = job_with_method(kind="lora", head={"num_labels": 3})
    problems = refused(stray, ["method.kind=full"])
    assert "method.head" in problems and "method.head=null" in problems["method.head"].hint


@pytest.mark.parametrize("block, hint", [("quantization", "method.quantization=null"),
                                         ("freeze", "method.freeze=null"), ("head", "method.head=null")])
def test_every_refused_block_says_how_to_remove_it_on_the_command_line(block, hint):
    assert hint in refused(job_with_method(kind="full", **{block: {}}))[f"method.{block}"].hint


def test_a_note_is_said_even_when_the_job_is_refused_for_something_else():
    notes: list[Note] = []
    with pytest.raises(SpecError) as err:
        load_spec(QUICKSTART, ["method.kind=full", "training.lr=-1"], check_files=False, notes=notes)
    assert [p.path for p in err.value.problems] == ["training.lr"]
    assert [n.path for n in notes] == ["method.lora"]
