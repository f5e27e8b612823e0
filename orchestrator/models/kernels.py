"""Fused kernels (Liger) and torch.compile for the model a job trains.

`training.kernels` chooses Liger Kernel's RMSNorm, RoPE, SwiGLU/GeGLU and its fused linear
cross-entropy (FLCE), which computes the loss from the final hidden states and the output
head's weight chunk by chunk, so the (tokens x vocabulary) logits are never held whole.
Liger is applied to the loaded model before PEFT wraps it; the fused loss runs through the
top-level model's forward (Liger's patched forward with `labels` and `skip_logits`), so the
hooks of every wrapper (PEFT, DDP, the FSDP2 root, the DeepSpeed engine) still run around it.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable

import torch

from orchestrator.models.loss import packed_or_padded_inputs, token_loss_sum
from orchestrator.spec.models import JobSpec

# Liger's forwards for these pass the config's final_logit_softcapping to the fused kernel.
SOFTCAP_AWARE = frozenset({"gemma2", "gemma3", "gemma3_text", "gemma4", "gemma4_text"})


class KernelError(Exception):
    """The kernels a job asks for cannot run; the message says what to do."""


def liger_apply_functions() -> dict[str, Callable] | None:
    """Liger's own map from model_type to the function that patches it; None when
    liger-kernel is not installed (or cannot be imported here)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return dict(MODEL_TYPE_TO_APPLY_LIGER_FN)


def choose_kernels(setting: str, on_gpu: bool, model_type: str,
                   liger_types: frozenset[str] | set[str] | None) -> tuple[str, str]:
    """("liger" or "none", why). `liger_types` is the set Liger supports, None when
    liger-kernel is not installed. `liger` that cannot run raises KernelError."""
    if setting == "none":
        return "none", "training.kernels is none"
    if not on_gpu:
        if setting == "liger":
            raise KernelError("training.kernels=liger needs CUDA, and this worker has none; "
                              "set training.kernels auto or none, or give the workers a GPU")
        return "none", "auto: no CUDA"
    if liger_types is None:
        if setting == "liger":
            raise KernelError("training.kernels=liger but liger-kernel is not installed on the workers; "
                              "pip install liger-kernel there, or set training.kernels auto or none")
        return "none", "auto: liger-kernel not installed"
    if model_type not in liger_types:
        if setting == "liger":
            raise KernelError(f"training.kernels=liger but Liger has no kernels for model type '{model_type}'; "
                              "set training.kernels auto or none")
        return "none", f"auto: Liger has no kernels for model type '{model_type}'"
    return "liger", f"{setting}: CUDA, model type '{model_type}'"


def fused_loss_refusal(apply_fn: Callable, config: Any, spec: JobSpec) -> str | None:
    """Why Liger's fused loss cannot serve this job (the other Liger kernels still can), or None."""
    param = inspect.signature(apply_fn).parameters.get("fused_linear_cross_entropy")
    if param is None or param.default is not True:
        return f"Liger has no fused loss for model type '{config.model_type}'"
    softcap = getattr(config.get_text_config(), "final_logit_softcapping", None)
    if softcap is not None and config.model_type not in SOFTCAP_AWARE:
        return f"Liger's forward for '{config.model_type}' ignores final_logit_softcapping={softcap}"
    if spec.training.objective == "dpo":
        return "DPO compares whole completions' log-probabilities, which the fused loss never makes"
    if spec.training.kl_to_base:
        return "training.kl_to_base compares the logits, which the fused loss never makes"
    if spec.resources.strategy == "deepspeed" and (spec.resources.zero_stage or 2) == 3:
        return "ZeRO-3 keeps the output head sharded outside its own forward"
    return None


def prepare_kernels(model, spec: JobSpec, on_gpu: bool):
    """Apply the kernels the job chose to a freshly loaded causal LM (before PEFT); returns
    the model and the line the run prints about its kernels, attention and compile."""
    config = model.config
    functions = liger_apply_functions() if on_gpu and spec.training.kernels != "none" else None
    used, reason = choose_kernels(spec.training.kernels, on_gpu, config.model_type,
                                  set(functions) if functions is not None else None)
    loss = ""
    if used == "liger":
        apply_fn = functions[config.model_type]
        refusal = fused_loss_refusal(apply_fn, config, spec)
        wanted = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
                  "fused_linear_cross_entropy": refusal is None}
        accepted = inspect.signature(apply_fn).parameters
        apply_fn(model=model, **{k: v for k, v in wanted.items() if k in accepted})
        loss = "; loss: fused linear cross-entropy" if refusal is None else f"; loss: unfused ({refusal})"
    attention = getattr(config, "_attn_implementation", None) or "default"
    compiled = "on" if spec.training.compile else "off"
    return model, f"kernels: {used} ({reason}){loss}; attention: {attention}; compile: {compiled}"


def apply_compile(model, backend: str = "inductor") -> None:
    """torch.compile each decoder block in place (Module.compile), so parameter names, state
    dicts, checkpoints and merges are those of the uncompiled model."""
    from orchestrator.models.build import decoder_layers

    for block in decoder_layers(model):
        block.compile(backend=backend)


def uses_fused_loss(model) -> bool:
    """Whether Liger's fused-loss forward is installed on the (unwrapped, maybe PEFT) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.forward, "__module__", "").startswith("liger_kernel")


def fused_token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """token_loss_sum through Liger's fused linear cross-entropy: the same next-token CE
    summed over label tokens (num_items_in_batch=1 makes Liger reduce by sum and divide by
    1), with the weight gradient accumulated in fp32, without materialising the logits."""
    inputs = packed_or_padded_inputs(model, batch)
    return model(**{**inputs, "labels": batch["labels"], "num_items_in_batch": 1, "skip_logits": True,
                    "accum_dtype": torch.float32, "use_cache": False}).loss


def token_loss_fn(model) -> Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]:
    """The summed token loss for this (unwrapped) model: fused where Liger's loss is on."""
    return fused_token_loss_sum if uses_fused_loss(model) else token_loss_sum


def adapters_under_autocast(model, spec: JobSpec) -> list:
    """The LoRA layers whose input casts autocast makes redundant: PEFT casts each adapted
    layer's input to its adapter's dtype (a copy of the activation, fp32 over a bf16 base) and
    autocast then runs the adapter's matmuls in 16 bits anyway. Only ddp steps run under
    Accelerate's autocast (fsdp gathers adapters in bf16, ZeRO holds them in bf16)."""
    if (spec.method.kind not in ("lora", "qlora") or spec.training.precision not in ("bf16", "fp16")
            or spec.resources.strategy != "ddp"):
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def input_casts_skipped(layers: list):
    """Skip the input casts of `layers` (from adapters_under_autocast) while training steps run;
    evaluation and generation outside autocast keep them."""
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True
