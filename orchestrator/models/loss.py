"""The next-token loss of a batch, packed rows included: one function for training and evaluation."""

from __future__ import annotations

import torch

from orchestrator.data.formats import IGNORE_INDEX as IGNORE


def packed_or_padded_inputs(batch: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Model inputs for a batch. Packed rows (position_ids restarting at each example) get a
    block-diagonal causal mask, so no example attends to the one before it in its row:
    transformers' sdpa and eager kernels ignore position_id restarts on their own."""
    if "position_ids" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
            "attention_mask": block_causal_mask(batch["position_ids"], dtype)}


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token loss over the batch's label tokens (training and evaluation alike)."""
    kwargs = packed_or_padded_inputs(batch, next(model.parameters()).dtype)
    logits = model(**kwargs).logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, L, L) additive mask: 0 where a token may attend, dtype-min elsewhere."""
    segment = torch.cumsum((position_ids == 0).long(), dim=1)
    length = position_ids.size(1)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=position_ids.device))
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
