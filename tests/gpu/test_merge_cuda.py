"""Merging on a CUDA device: verification and the qlora quantisation gap with bitsandbytes on GPU."""

from __future__ import annotations

from pathlib import Path

import torch


def random_adapter(base: str, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(str(out))
    return out


def heldout(rows: int = 8, length: int = 24) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, 260, (rows, length), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]


def test_bf16_merge_verified_on_cuda(tmp_path):
    from orchestrator.merging.export import MergeRequest, merge_and_verify
    from orchestrator.models.tiny.build import ensure_tiny_base

    base = str(ensure_tiny_base())
    manifest = merge_and_verify(MergeRequest(adapters=[random_adapter(base, tmp_path / "a")], out=tmp_path / "m",
                                             base=base, dtype="bfloat16", device="cuda"))
    check = manifest["verification"]
    assert check["device"] == "cuda" and check["passed"] and check["max_abs_logit_diff"] > 0


def test_qlora_gap_measured_with_bitsandbytes_on_cuda(tmp_path):
    from orchestrator.merging.export import MergeRequest, merge_and_verify
    from orchestrator.models.tiny.build import ensure_tiny_base

    base = str(ensure_tiny_base())
    manifest = merge_and_verify(MergeRequest(
        adapters=[random_adapter(base, tmp_path / "a")], out=tmp_path / "m", base=base, device="cuda",
        quantization={"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}, heldout=heldout()))
    gap = manifest["quantisation_gap"]
    assert gap["tokens"] > 0
    assert abs(gap["gap"] - (gap["merged_loss"] - gap["quantized_base_adapter_loss"])) < 1e-5
