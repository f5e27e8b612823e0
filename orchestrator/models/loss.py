"""The next-token loss of a batch, packed rows included: one function for training and evaluation."""

from __future__ import annotations

import functools
import sys

import torch

from orchestrator.data.formats import IGNORE_INDEX as IGNORE


def packed_or_padded_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model inputs for a batch. Packed rows pass their position ids (restarting at 0 where
    each example starts) and no attention mask: transformers then keeps attention inside each
    example itself, through the kernel the model was loaded with (flash-attention's varlen
    path, a FlexAttention block mask, or an SDPA mask it builds), and never through a dense
    mask of ours. That needs the KV cache off: with a cache it ignores the restarts. A model
    whose code does not derive masks from position ids (older remote code) gets the dense
    block-diagonal mask instead."""
    if "position_ids" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if not derives_packed_masks(model):
        inputs["attention_mask"] = block_causal_mask(batch["position_ids"], next(model.parameters()).dtype)
    return inputs


def derives_packed_masks(model) -> bool:
    """Whether the model's own code keeps packed examples apart given only position ids:
    transformers' mask helpers do, and so does flash-attention's varlen path."""
    from transformers import PreTrainedModel

    inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if inner is None:
        return False
    if getattr(inner.config, "_attn_implementation", None) == "flash_attention_2":
        return True
    return _uses_mask_helpers(type(inner))


@functools.cache
def _uses_mask_helpers(cls) -> bool:
    module = sys.modules.get(cls.__module__)
    return module is not None and hasattr(module, "create_causal_mask")


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, L, L) additive mask: 0 where a token may attend, dtype-min elsewhere."""
    segment = torch.cumsum((position_ids == 0).long(), dim=1)
    length = position_ids.size(1)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=position_ids.device))
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token loss over the batch's label tokens (training and evaluation alike)."""
    kwargs = packed_or_padded_inputs(model, batch)
    logits = model(**kwargs).logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
