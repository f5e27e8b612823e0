"""Liger kernels on CUDA: the same loss and gradients as the unfused path within bf16
tolerance, for lora and full, with a lower peak memory (the logits are never held whole)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install liger-kernel)")


@pytest.fixture
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                                         tie_word_embeddings=False))
    out = tmp_path_factory.mktemp("llama")
    model.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    return str(out)


@pytest.fixture
def restore_llama_module(monkeypatch):
    """Liger swaps module-level names of transformers' Llama for its own; put them back after."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))


def packed_batch(rows: int = 2, length: int = 1024) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, 32000, (rows, length), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, 0] = labels[:, length // 3] = -100
    position = torch.cat([torch.arange(length // 3), torch.arange(length - length // 3)])
    return {k: v.cuda() for k, v in {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
                                     "position_ids": position.repeat(rows, 1)}.items()}


def loss_grad_peak(model_dir: str, kind: str, kernels: str) -> tuple[float, float, int, str]:
    from orchestrator.models.build import build_model
    from orchestrator.models.kernels import token_loss_fn
    from orchestrator.spec import resolve_spec

    raw = {"name": "kernels", "data": {"train": {"path": "train.jsonl"}}, "model": {"path": model_dir},
           "method": {"kind": kind, **({"lora": {"dropout": 0.0}} if kind == "lora" else {})},
           "training": {"max_steps": 1, "precision": "bf16", "kernels": kernels},
           "resources": {"gpus_per_worker": 1}}
    spec = resolve_spec(raw, check_files=False)
    torch.manual_seed(0)
    model, _ = build_model(spec, model_dir, on_gpu=True)
    model.cuda().train()
    loss_fn = token_loss_fn(model)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(model, packed_batch())
    loss.backward()
    peak = torch.cuda.max_memory_allocated()
    norm = torch.norm(torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None]))
    del model
    torch.cuda.empty_cache()
    return float(loss), float(norm), peak, loss_fn.__name__


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_liger_matches_the_unfused_loss_with_less_memory(llama_dir, restore_llama_module, kind):
    loss, grad, peak, fn = loss_grad_peak(llama_dir, kind, "none")
    fused_loss, fused_grad, fused_peak, fused_fn = loss_grad_peak(llama_dir, kind, "liger")
    assert (fn, fused_fn) == ("token_loss_sum", "fused_token_loss_sum")
    assert fused_loss == pytest.approx(loss, rel=2e-2)
    assert fused_grad == pytest.approx(grad, rel=5e-2)
    assert fused_peak < peak, f"peak memory with liger {fused_peak / 2**20:.0f} MiB, without {peak / 2**20:.0f} MiB"
