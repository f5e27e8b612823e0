"""DPO end to end on the built-in tiny base: LoRA under ddp on 2 workers learns to prefer the
right answers of held-out pairs, is measured for forgetting and merges; full fine-tuning with
its precomputed reference resumes exactly."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file

from orchestrator.pipeline import run_job
from orchestrator.spec import load_spec

DPO = Path(__file__).parents[2] / "configs" / "quickstart-dpo.yaml"
TASKS = [f"forgetting.tasks.{i}.max_examples=30" for i in range(4)]


def run(run_dir: Path, *overrides: str) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=200)
    code = run_job(load_spec(DPO, overrides), run_dir=run_dir, console=console)
    return code, console.file.getvalue()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_dpo_on_two_workers_learns_the_preferences_is_measured_and_merges(tmp_path, local_ray):
    run_dir = tmp_path / "dpo"
    code, log = run(run_dir, *TASKS)  # the quickstart as it is: 100 steps
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["world_size"] == 2
    assert summary["samples_seen"] == 100 * 2 * 16  # pairs: 16 per worker per step
    metrics = records(run_dir)
    first, last = metrics[0], metrics[-1]
    assert first["loss"] > last["loss"] and last["dpo/reward_accuracy"] > first["dpo/reward_accuracy"]
    assert last["dpo/reward_margin"] == pytest.approx(last["dpo/rewards_chosen"] - last["dpo/rewards_rejected"])
    assert last["dpo/logps_chosen"] > last["dpo/logps_rejected"]
    final = summary["final_eval"]
    assert final["eval_reward_accuracy"] > 0.9, final  # held-out pairs
    report = json.loads((run_dir / "forgetting.json").read_text())
    assert set(report["tasks"]) == {"arithmetic", "reversal", "sorting", "kv_recall"}
    assert report["target"]["metric"] == "loss" and report["target"]["base"] == pytest.approx(0.6931, abs=1e-3)
    assert report["target"]["final"] == pytest.approx(final["eval_loss"])
    merge = summary["merge"]
    assert merge["verification"]["passed"] and (run_dir / "merged" / "merge_manifest.json").is_file()
    assert "held-out reward accuracy" in log


def test_full_dpo_resumed_from_a_middle_checkpoint_ends_exactly_as_an_uninterrupted_one(tmp_path, local_ray):
    """full fine-tuning keeps no reference model: the base's log-probabilities of every pair are
    taken before training, and a resumed run must take them again from the base weights, not
    from the checkpoint it resumes."""
    from orchestrator.cli import main

    common = ["method.kind=full", "method.lora=null", "training.lr=1e-4", "training.max_steps=12",
              "training.warmup_steps=2", "training.log_every_steps=1", "checkpoint.every_steps=6",
              "checkpoint.keep_last=3", "training.eval_every_steps=null", "merge.enabled=false",
              "forgetting.tasks=[]", "forgetting.every_steps=null"]
    reference = tmp_path / "reference"
    code, log = run(reference, *common)
    assert code == 0, log
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012")
    assert main(["resume", str(resumed)]) == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-00000006")
    got, want = records(resumed), records(reference)
    assert [m["step"] for m in got] == list(range(1, 13))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], abs=1e-5)
    assert [m["dpo/reward_accuracy"] for m in got] == [m["dpo/reward_accuracy"] for m in want]
    assert want[-1]["dpo/reward_margin"] != 0  # the policy moved away from its reference
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (resumed, reference))
    assert a.keys() == b.keys() and a
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key
