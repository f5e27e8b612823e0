"""Accelerate set-up for each distribution strategy, over the process group Ray formed.

On CPU, a plain `Accelerator()` ignores an initialised process group and reports world
size 1, so ddp is built with `cpu=True` (MULTI_CPU over gloo). DeepSpeed brings its own
engine and joins the existing group; Accelerate then still reports one process, so the
loop takes rank and world size from torch.distributed and checks the engine agrees.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec.models import JobSpec


def deepspeed_config(spec: JobSpec) -> dict[str, Any]:
    """The DeepSpeed config for a job: ZeRO stage, offload, micro-batch, clipping, precision."""
    r, t = spec.resources, spec.training
    stage = r.zero_stage or 2
    zero: dict[str, Any] = {"stage": stage}
    if r.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if r.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        # Saving a ZeRO-3 model needs its partitioned weights gathered on rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "gradient_clipping": t.max_grad_norm or 0.0,
        "zero_optimization": zero,
        # The optimizer is torch AdamW built by the loop, not a DeepSpeed one.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_accelerator(spec: JobSpec, on_gpu: bool):
    from accelerate import Accelerator

    t = spec.training
    # bf16-pure needs no autocast: its weights are bf16 themselves.
    mixed = {"fp32": "no", "bf16-pure": "no"}.get(t.precision, t.precision)
    if spec.resources.strategy == "deepspeed":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(spec))
        return Accelerator(deepspeed_plugin=plugin, mixed_precision=mixed)
    # Accumulation is done by the loop, with exact loss scaling, not by Accelerate.
    return Accelerator(cpu=not on_gpu, mixed_precision=mixed, gradient_accumulation_steps=1)


def uses_deepspeed(spec: JobSpec) -> bool:
    return spec.resources.strategy == "deepspeed"


def uses_fsdp(spec: JobSpec) -> bool:
    return spec.resources.strategy == "fsdp"


def shard_with_fsdp(model, spec: JobSpec, on_gpu: bool):
    """torch FSDP2: shard each transformer block, then the root (embeddings, norm, head).

    Applied by hand rather than through Accelerate, whose FSDP plugin is ignored on CPU
    (it would silently fall back to a DDP replica per worker)."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    from orchestrator.models.build import decoder_layers

    kwargs = {}
    if spec.training.precision == "bf16":  # fp32 shards (master weights), gathered in bf16 for compute
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif spec.training.precision == "bf16-pure":  # bf16 shards; gradients still reduced in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    if spec.resources.offload == "all" and on_gpu:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in decoder_layers(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(accelerator, model, spec: JobSpec) -> dict:
    """The whole state dict, gathered where it is sharded (ZeRO-3, FSDP). Every rank must
    call this; with FSDP only rank 0 receives the tensors."""
    if uses_fsdp(spec):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(model)
