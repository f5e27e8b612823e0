"""precision bf16 keeps fp32 master weights on every strategy; bf16-pure trains bf16 weights."""

from __future__ import annotations

import pytest
import torch

from orchestrator.models.build import build_model, torch_dtype
from orchestrator.models.tiny.build import ensure_tiny_base
from orchestrator.spec.models import JobSpec


def job(kind: str = "full", precision: str = "bf16", strategy: str = "ddp", dtype: str = "auto") -> JobSpec:
    method = {"kind": kind} if kind in ("lora", "qlora") else {"kind": kind, "lora": None}
    return JobSpec.model_validate({
        "name": "precision", "model": {"dtype": dtype}, "method": method,
        "data": {"train": {"path": "builtin:demo-target"}},
        "training": {"precision": precision, "max_steps": 1},
        "resources": {"strategy": strategy, "gpus_per_worker": 1}})


@pytest.mark.parametrize("kind,precision,strategy,on_gpu,expected", [
    ("full", "bf16", "ddp", True, torch.float32),        # master weights under bf16 autocast
    ("full", "bf16", "fsdp", True, torch.float32),       # fp32 shards, gathered in bf16
    ("freeze", "bf16", "ddp", True, torch.float32),
    ("full", "bf16", "deepspeed", True, torch.bfloat16),  # ZeRO keeps its own fp32 copy
    ("lora", "bf16", "ddp", True, torch.bfloat16),       # a frozen base needs no master copy
    ("full", "bf16-pure", "ddp", True, torch.bfloat16),
    ("lora", "bf16-pure", "fsdp", False, torch.bfloat16),
    ("full", "bf16", "ddp", False, torch.float32),
    ("full", "fp16", "ddp", True, torch.float32),        # the fp16 scaler refuses fp16 gradients
    ("full", "fp32", "ddp", True, torch.float32),
])
def test_load_dtype_of_each_precision_and_strategy(kind, precision, strategy, on_gpu, expected):
    assert torch_dtype(job(kind, precision, strategy), on_gpu) == expected


def test_an_explicit_dtype_is_what_loads():
    assert torch_dtype(job("lora", "bf16", dtype="float32"), True) == torch.float32


def one_tiny_step(spec: JobSpec, lr: float) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model, _ = build_model(spec, str(ensure_tiny_base()), on_gpu=True)  # on_gpu only picks the dtype here
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=lr)
    ids = torch.arange(1, 33).reshape(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return model, before


def test_bf16_keeps_small_updates_that_bf16_pure_loses():
    """AdamW's first step moves every weight by about lr. At lr 1e-5 that is far below bf16's
    resolution for weights of size ~0.02-1 (a relative step of 2^-8), so bf16-pure loses most
    of the update while the fp32 master weights of bf16 keep it."""
    mixed, before = one_tiny_step(job("full", "bf16"), lr=1e-5)
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    changed = [float((p.detach() != before[n]).float().mean()) for n, p in mixed.named_parameters() if n in before]
    assert min(changed) > 0.5

    pure, before = one_tiny_step(job("full", "bf16-pure"), lr=1e-5)
    assert all(p.dtype == torch.bfloat16 for p in pure.parameters())
    changed = [float((p.detach() != before[n]).float().mean()) for n, p in pure.named_parameters() if n in before]
    assert sum(changed) / len(changed) < 0.5


def test_lora_adapters_are_fp32_over_a_bf16_base_and_bf16_under_bf16_pure():
    mixed, _ = build_model(job("lora", "bf16"), str(ensure_tiny_base()), on_gpu=True)
    adapters = [p for p in mixed.parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    assert all(p.dtype == torch.bfloat16 for p in mixed.parameters() if not p.requires_grad)
    pure, _ = build_model(job("lora", "bf16-pure"), str(ensure_tiny_base()), on_gpu=True)
    assert all(p.dtype == torch.bfloat16 for p in pure.parameters())


def test_adapter_input_casts_are_skipped_only_under_autocast_and_change_nothing():
    from orchestrator.models.kernels import adapters_under_autocast, input_casts_skipped

    spec = job("lora", "bf16")
    model, _ = build_model(spec, str(ensure_tiny_base()), on_gpu=True)  # bf16 base, fp32 adapters
    layers = adapters_under_autocast(model, spec)
    assert len(layers) > 0
    assert adapters_under_autocast(model, job("lora", "bf16", "fsdp")) == []
    assert adapters_under_autocast(model, job("lora", "fp32")) == []
    ids = torch.arange(1, 33).reshape(2, 16)

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    cast_loss, cast_grads = loss_and_grads()
    with input_casts_skipped(layers):
        skipped_loss, skipped_grads = loss_and_grads()
    assert all(layer.cast_input_dtype_enabled for layer in layers)  # restored for evaluation
    assert skipped_loss == pytest.approx(cast_loss, rel=1e-2)
    assert all(g.dtype == torch.float32 for g in skipped_grads)
    for a, b in zip(cast_grads, skipped_grads):
        assert torch.allclose(a, b, rtol=0.05, atol=1e-3)
