"""Forgetting control without source data, end to end on the built-in tiny base: the live KL
meter and its gate, KL to the base during training, and repair by interpolation (in the job
and by `ftctl repair` after it).

At lr 1e-3 the demo target task makes the base forget `reversal` by step 20 (see
test_forgetting_gates.py), so a 30-step run has drops for the repair to undo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors.torch import load_file

from tests.integration.test_run import run

SHORT = ["training.lr=1e-3", "training.max_steps=30", "checkpoint.every_steps=10", "forgetting.every_steps=10",
         "training.log_every_steps=5", "training.eval_every_steps=null",
         *[f"forgetting.tasks.{i}.max_examples=30" for i in range(4)]]


def lora_b(adapter: Path) -> dict:
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return {k: v for k, v in weights.items() if "lora_B" in k}


def assert_scaled(adapter: Path, trained: Path, alpha: float) -> None:
    scaled, original = lora_b(adapter), lora_b(trained)
    assert scaled.keys() == original.keys() and scaled
    for key, value in original.items():
        assert (scaled[key] - alpha * value).abs().max() < 1e-6, key


def test_lora_with_the_meter_kl_to_base_and_repair_then_ftctl_repair_again(tmp_path, local_ray):
    from orchestrator.cli import main

    code, run_dir, log = run(tmp_path, "controls", *SHORT, "forgetting.kl_every_steps=5", "training.kl_to_base=0.1",
                             "forgetting.repair={max_drop: 0.05, grid: 3, refine: 1}")
    assert code == 0, log
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kl = {m["step"]: m["forgetting/kl"] for m in metrics if "forgetting/kl" in m}
    assert sorted(kl) == [5, 10, 15, 20, 25, 30]
    assert all(math.isfinite(v) and v > 0 for v in kl.values())
    penalties = [m["kl_to_base"] for m in metrics if "loss" in m]
    assert len(penalties) == 6 and all(p > 0 for p in penalties)

    report = json.loads((run_dir / "forgetting.json").read_text())
    assert [e["step"] for e in report["kl"]["evals"]] == [5, 10, 15, 20, 25, 30]
    assert report["kl"]["final"] == kl[30]
    repair = report["repair"]
    alphas = [p["alpha"] for p in repair["curve"]]
    assert {0.0, 0.5, 1.0} <= set(alphas) and len(alphas) == 4  # the grid and one bisection
    trained = {p["alpha"]: p for p in repair["curve"]}[1.0]
    assert max(trained["drops"].values()) > 0.05, "the run must forget for the repair to have work"
    chosen = {p["alpha"]: p for p in repair["curve"]}[repair["alpha"]]
    assert 0 < repair["alpha"] < 1 and chosen["passed"]
    for name, entry in report["tasks"].items():
        assert entry["final"] == chosen["tasks"][name] and entry["drop"] <= 0.05 + 1e-9
        # The trained weights' values measured in training and by the repair at alpha 1 agree.
        assert abs(entry["unrepaired_final"] - trained["tasks"][name]) <= 0.05, name

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["repair"]["alpha"] == repair["alpha"] and "largest alpha" in summary["repair"]["reason"]
    assert summary["artifacts"]["adapter_unrepaired"] == str(run_dir / "adapter.unrepaired")
    assert_scaled(run_dir / "adapter", run_dir / "adapter.unrepaired", repair["alpha"])
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()  # the artifact still loads on its own
    assert "repaired: alpha" in log

    # After the fact, stricter: a smaller alpha, taken from the trained weights, not the repaired ones.
    assert main(["repair", str(run_dir), "--max-drop", "0"]) == 0
    again = json.loads((run_dir / "summary.json").read_text())["repair"]
    assert again["alpha"] <= repair["alpha"] and again["budget"] == {t: 0.0 for t in report["tasks"]}
    assert_scaled(run_dir / "adapter", run_dir / "adapter.unrepaired", again["alpha"])
    rewritten = json.loads((run_dir / "forgetting.json").read_text())
    assert rewritten["repair"]["alpha"] == again["alpha"]
    assert all(t["drop"] <= 1e-9 for t in rewritten["tasks"].values())
    assert main(["repair", str(tmp_path / "no-such-run")]) == 2


def test_a_kl_gate_stops_a_full_fine_tune_measured_against_a_frozen_base_copy(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "klgate", *SHORT, "method.kind=full", "method.lora=null",
                             "training.kl_to_base=0.1", "forgetting.kl_every_steps=5", "forgetting.kl_probe_rows=32",
                             "forgetting.max_kl=0.0001", "forgetting.action=stop")
    assert code == 4, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped_by_gate" and summary["steps"] == 5
    (trip,) = summary["forgetting_gate"]["tripped"]
    assert trip["metric"] == "kl" and trip["value"] > 0.0001 and trip["step"] == 5
    assert "KL to the base" in log and "max_kl 0.0001" in log
    assert not (run_dir / "model").exists()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 5 and metrics[-1]["kl_to_base"] > 0
