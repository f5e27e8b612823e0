"""Forgetting gates, replay and L2-SP on the built-in tiny base model.

With lr 1e-3 the demo target task makes the base model forget `reversal` between steps
10 and 20 (exact match 1.0 -> about 0.05), so a gate of max_drop 0.3 passes at step 10
and trips at step 20.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_run import run

GATED = ["training.lr=1e-3", "training.max_steps=40", "checkpoint.every_steps=10", "forgetting.every_steps=10",
         "training.log_every_steps=5", "training.eval_every_steps=null", "forgetting.max_drop=0.3",
         *[f"forgetting.tasks.{i}.max_examples=40" for i in range(4)]]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_stop_gate_ends_the_job_early_with_exit_4_and_no_artifact(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "stop", *GATED, "forgetting.action=stop")
    assert code == 4, log
    summary = summary_of(run_dir)
    assert summary["status"] == "stopped_by_gate"
    gate = summary["forgetting_gate"]
    assert gate["action"] == "stop" and gate["step"] == 20 and summary["steps"] == 20
    tripped = {t["task"]: t for t in gate["tripped"]}
    assert "reversal" in tripped and tripped["reversal"]["drop"] > 0.3  # a measured drop, not a constant
    assert "forgetting gate stopped the job at step 20" in log and "reversal" in log
    assert not (run_dir / "adapter").exists()
    report = json.loads((run_dir / "forgetting.json").read_text())
    assert [e["step"] for e in report["tasks"]["reversal"]["evals"]] == [0, 10, 20]
    assert report["tasks"]["reversal"]["passed"] is False


def test_a_stop_gate_on_a_checkpoint_step_stops_there_even_when_commits_are_slow(tmp_path, local_ray):
    """Step 20 is both a periodic checkpoint and, after the gate trips, the final one. With rank
    0's commit slowed to 3 s (a real model hashes gigabytes) rank 1 used to hand its second
    marker to the first save; rank 0 then waited 1800 s, Ray restarted the workers and the job
    trained on past the gate. The delay reaches the workers through the job's runtime env."""
    import os
    import subprocess
    import sys

    import ray

    from orchestrator.checkpoint.writer import COMMIT_DELAY_ENV
    from tests.integration.test_run import QUICKSTART

    run_dir = tmp_path / "slow"
    job_config = {"runtime_env": {"env_vars": {COMMIT_DELAY_ENV: "3"}}, "metadata": {}}
    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(QUICKSTART), *GATED, "forgetting.action=stop",
         "checkpoint.max_failures=0", "--run-dir", str(run_dir), "--address", ray.get_runtime_context().gcs_address],
        cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    summary = summary_of(run_dir)
    assert summary["status"] == "stopped_by_gate"
    assert summary["forgetting_gate"]["step"] == 20 and summary["steps"] == 20
    assert summary["restarts"] == []
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000010", "step-00000020"]
    assert summary["train_seconds"] < 120  # nobody waited for a commit timeout


def test_rollback_keeps_the_latest_checkpoint_that_passed_every_gate(tmp_path, local_ray):
    from orchestrator.cli import main

    code, run_dir, log = run(tmp_path, "rollback", *GATED, "forgetting.action=rollback", "checkpoint.keep_last=1")
    assert code == 0, log
    summary = summary_of(run_dir)
    gate = summary["forgetting_gate"]
    assert summary["status"] == "succeeded" and gate["step"] == 20 and gate["kept_step"] == 10
    assert "rolled back" in log and "step 10" in log
    kept = run_dir / "checkpoints" / "step-00000010"
    assert gate["kept_checkpoint"] == str(kept) and kept.is_dir()  # retention kept it beside the newest
    # The artifact is the step-10 model: its weights, and its measured values.
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    saved = {k.replace(".default", ""): v for k, v in load_file(str(kept / "trainable.safetensors")).items()}
    assert adapter.keys() == saved.keys()
    for key in adapter:
        assert torch.equal(adapter[key], saved[key]), key
    report = json.loads((run_dir / "forgetting.json").read_text())
    step10 = {name: t["evals"][1]["value"] for name, t in report["tasks"].items()}
    assert all(t["final_step"] == 10 for t in report["tasks"].values())
    assert {name: t["final"] for name, t in report["tasks"].items()} == step10
    # `ftctl eval` on the kept adapter measures the same values outside the job.
    out = tmp_path / "eval.json"
    tasks = [f"{name}=builtin:demo/source_{name}.jsonl" for name in step10]
    assert main(["eval", "--model", "builtin:tiny-base", "--adapter", str(run_dir / "adapter"), "--tasks", *tasks,
                 "--max-examples", "40", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["adapted"] == pytest.approx(step10)


SHORT = ["training.max_steps=20", "training.warmup_steps=2", "training.log_every_steps=5", "checkpoint.every_steps=null", "data.eval=null",
         "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null"]


def test_replay_mixes_source_rows_into_training(tmp_path, local_ray):
    replay = ("data.replay={ratio: 0.25, sources: [{path: 'builtin:demo/replay_reversal.jsonl'}, "
              "{path: 'builtin:demo/replay_sorting.jsonl'}]}")
    code, run_dir, log = run(tmp_path, "replay", *SHORT, replay)
    assert code == 0, log
    assert "replay: 667 source-task rows mixed into 2000 training rows" in log  # 0.25 / 0.75 x 2000


def test_l2sp_keeps_a_full_fine_tune_closer_to_the_base_weights(tmp_path, local_ray):
    from orchestrator.models.tiny.build import ensure_tiny_base

    full = [*SHORT, "method.kind=full", "method.lora=null", "training.lr=1e-3"]
    base = load_file(str(ensure_tiny_base() / "model.safetensors"))

    def distance(run_dir: Path) -> float:
        trained = load_file(str(run_dir / "model" / "model.safetensors"))
        return sum(float(((trained[k] - base[k]) ** 2).sum()) for k in base if k in trained) ** 0.5

    code, plain, log = run(tmp_path, "full", *full)
    assert code == 0, log
    code, pulled, log = run(tmp_path, "l2sp", *full, "training.l2sp=10.0")
    assert code == 0, log
    penalties = [json.loads(x)["l2sp_penalty"] for x in (pulled / "metrics.jsonl").read_text().splitlines()]
    assert penalties[0] > 0
    assert distance(pulled) < 0.8 * distance(plain), (distance(pulled), distance(plain))
