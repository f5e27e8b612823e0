"""`ftctl run` on small real architectures (tests/archs.py) instead of the tiny base: a
Mixture-of-Experts LoRA job with packing on two workers whose merge (experts included) is
verified, and full fine-tuning of Qwen3 sharded with FSDP."""

from __future__ import annotations

import json

from tests.archs import make_model_dir
from tests.integration.test_run import run

SHORT = ["training.max_steps=6", "training.warmup_steps=0", "training.log_every_steps=1", "checkpoint.every_steps=null",
         "training.eval_every_steps=null", "data.eval=null", "forgetting.tasks=[]", "forgetting.every_steps=null",
         "data.packing=true", "training.per_device_batch_size=4"]


def test_a_moe_lora_job_with_packing_on_two_workers_merges_its_experts_verified(tmp_path, local_ray):
    model = make_model_dir("qwen3-moe", tmp_path / "qwen3-moe")
    code, run_dir, log = run(tmp_path, "moe", *SHORT, f"model.path={model}", "merge.enabled=true",
                             "merge.required=true")
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["world_size"] == 2
    check = summary["merge"]["verification"]
    assert check["passed"] and check["max_abs_logit_diff"] <= 1e-4
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert "gate_up_proj" in adapter["target_parameters"]
    manifest = json.loads((run_dir / "merged" / "merge_manifest.json").read_text())
    assert manifest["merge"]["tensors_changed"] > 0


def test_full_fine_tuning_of_qwen3_with_fsdp_on_two_workers(tmp_path, local_ray):
    model = make_model_dir("qwen3", tmp_path / "qwen3")
    code, run_dir, log = run(tmp_path, "qwen3", *SHORT, f"model.path={model}", "method.kind=full",
                             "resources.strategy=fsdp", "training.lr=1e-3")
    assert code == 0, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["world_size"] == 2
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0], losses
    assert (run_dir / "model" / "config.json").is_file()
