"""Every runnable method and strategy on local Ray with 2 CPU workers (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.test_run import run

SHORT = ["training.warmup_steps=0", "training.log_every_steps=1", "checkpoint.every_steps=null", "data.eval=null",
         "training.eval_every_steps=null", "forgetting.tasks=[]", "forgetting.every_steps=null"]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_with_fsdp_and_deepspeed_zero2_zero3_takes_the_same_steps_as_ddp(tmp_path, local_ray):
    common = [*SHORT, "training.max_steps=8"]
    code, ddp, log = run(tmp_path, "ddp", *common)
    assert code == 0, log
    sharded = {"zero2": ["resources.strategy=deepspeed", "resources.zero_stage=2"],
               "zero3": ["resources.strategy=deepspeed", "resources.zero_stage=3"],
               "fsdp": ["resources.strategy=fsdp"]}
    for name, overrides in sharded.items():
        code, other, log = run(tmp_path, name, *common, *overrides)
        assert code == 0, log
        assert json.loads((other / "summary.json").read_text())["world_size"] == 2
        assert losses(other) == pytest.approx(losses(ddp), abs=1e-4), name
        a = load_file(str(other / "adapter" / "adapter_model.safetensors"))
        b = load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            assert (a[key] - b[key]).abs().max() < 1e-4, f"{name}: {key}"


def test_qlora_with_ddp_trains_adapters_over_a_4bit_base(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "qlora", *SHORT, "training.max_steps=30", "method.kind=qlora",
                             "method.quantization.compute_dtype=float32")
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 4-bit weights count at their real size: the tiny base has 558,208 parameters
    assert summary["params"]["total"] - summary["params"]["trainable"] == 558_208
    assert 0 < summary["params"]["trainable"] < summary["params"]["total"]
    values = losses(run_dir)
    assert sum(values[-5:]) / 5 < 0.6 * sum(values[:5]) / 5
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_freeze_with_ddp_trains_only_the_last_blocks(tmp_path, local_ray):
    from orchestrator.models.tiny.build import ensure_tiny_base

    code, run_dir, log = run(tmp_path, "freeze", *SHORT, "training.max_steps=10", "method.kind=freeze",
                             "method.lora=null", "method.freeze.trainable_layers=1", "training.lr=1e-3")
    assert code == 0, log
    base = load_file(str(ensure_tiny_base() / "model.safetensors"))
    tuned = load_file(str(run_dir / "model" / "model.safetensors"))
    first = [n for n in base if ".layers.0." in n]
    last = [n for n in base if ".layers.1." in n]
    assert first and last
    assert all(bool((base[n] == tuned[n]).all()) for n in first), "a frozen block changed"
    assert any(bool((base[n] != tuned[n]).any()) for n in last), "the trainable block did not change"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params"]["trainable"] < summary["params"]["total"]


HEAD = [*(o for o in SHORT if o not in ("data.eval=null", "forgetting.tasks=[]", "forgetting.every_steps=null")),
        "method.kind=head", "method.lora=null", "data.train.path=builtin:demo/classify_train.jsonl",
        "data.train.format=classification", "data.eval.path=builtin:demo/classify_eval.jsonl",
        "data.eval.format=classification", "forgetting.tasks=[]", "forgetting.every_steps=null"]


def test_head_trains_a_classifier_on_a_frozen_backbone(tmp_path, local_ray):
    code, run_dir, log = run(tmp_path, "head", *HEAD, "training.max_steps=60")
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params"]["trainable"] == 128 * 2 + 2  # hidden x labels + bias: only the head trains
    assert summary["final_eval"]["eval_accuracy"] > 0.65  # balanced classes: chance is 0.5
    head = load_file(str(run_dir / "model" / "head.safetensors"))
    assert set(head) == {"score.weight", "score.bias"}
    assert json.loads((run_dir / "model" / "head_config.json").read_text())["num_labels"] == 2


def test_head_refuses_labels_beyond_num_labels_before_starting_workers(tmp_path, local_ray):
    rows = tmp_path / "labels.jsonl"
    rows.write_text("".join(json.dumps({"text": f"{i}", "label": i % 3}) + "\n" for i in range(64)))
    code, run_dir, log = run(tmp_path, "labels", *HEAD, f"data.train.path={rows}", "data.eval=null",
                             "training.eval_every_steps=null", "training.max_steps=2")
    assert code != 0
    assert "label 2" in log and "num_labels=2" in log
