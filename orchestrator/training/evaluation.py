"""Evaluation inside the workers: sharded across ranks, gathered, no gradients."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.data.formats import IGNORE_INDEX as IGNORE
from orchestrator.data.pipeline import collate
from orchestrator.forgetting.exact_match import greedy_exact_match
from orchestrator.training.strategies import gathered_params


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


def sum_across_ranks(values: list[float], device) -> list[float]:
    """Element-wise sum over all ranks (float64); the values themselves without a group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, L, L) additive mask: 0 where a token may attend, dtype-min elsewhere."""
    segment = torch.cumsum((position_ids == 0).long(), dim=1)
    length = position_ids.size(1)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=position_ids.device))
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _rank_world(shard: bool) -> tuple[int, int]:
    """This rank's place for sharded evaluation; (0, 1) when every rank evaluates everything."""
    if not shard or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _eval_batches(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool):
    """This rank's evaluation batches, on device, with the model in eval mode and no grad."""
    rank, world = _rank_world(shard)
    indices = list(range(rank, len(dataset), world))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(indices), batch_size):
                batch = collate([dataset[j] for j in indices[i:i + batch_size]], pad_id)
                yield {k: v.to(accelerator.device) for k, v in batch.items()}
    finally:
        model.train(was_training)


def evaluate_loss(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool = True) -> float:
    """Mean token loss over `dataset`; each rank takes every world-th example when sharded."""
    unwrapped = accelerator.unwrap_model(model)
    loss_sum, tokens = 0.0, 0
    for batch in _eval_batches(accelerator, unwrapped, dataset, pad_id, batch_size, shard):
        loss_sum += float(token_loss_sum(unwrapped, batch))
        tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
    if shard:
        loss_sum, tokens = sum_across_ranks([loss_sum, float(tokens)], accelerator.device)
    return loss_sum / max(tokens, 1.0)


def evaluate_target(accelerator, model, dataset, pad_id: int, batch_size: int, shard: bool = True) -> dict[str, float]:
    """Metrics on data.eval: eval_loss, plus eval_accuracy for a classification head."""
    if "label" not in dataset.column_names:
        return {"eval_loss": evaluate_loss(accelerator, model, dataset, pad_id, batch_size, shard)}
    unwrapped = accelerator.unwrap_model(model)
    loss_sum, correct, count = 0.0, 0, 0
    for batch in _eval_batches(accelerator, unwrapped, dataset, pad_id, batch_size, shard):
        logits = unwrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["label"]).sum())
        count += int(batch["label"].numel())
    totals = [loss_sum, float(correct), float(count)]
    if shard:
        totals = sum_across_ranks(totals, accelerator.device)
    n = max(totals[2], 1.0)
    return {"eval_loss": totals[0] / n, "eval_accuracy": totals[1] / n}


def evaluate_forgetting(accelerator, model, tasks: list[dict[str, Any]], tokenizer, pad_id: int,
                        shard: bool = True) -> dict[str, float]:
    """Each source task's metric on the current model, rows sharded across ranks when `shard`."""
    from orchestrator.data.pipeline import load_prepared

    rank, world = _rank_world(shard)
    unwrapped = accelerator.unwrap_model(model)
    out: dict[str, float] = {}
    for task in tasks:
        metric = task["metric"]
        if metric == "exact_match":
            rows = task["rows"][rank::world]
            with gathered_params(unwrapped):
                correct = greedy_exact_match(unwrapped, tokenizer, rows) * len(rows) if rows else 0.0
            total_correct, total = (sum_across_ranks([correct, float(len(rows))], accelerator.device)
                                    if shard else (correct, float(len(rows))))
            out[task["name"]] = total_correct / max(total, 1.0)
        else:
            loss = evaluate_loss(accelerator, model, load_prepared(task["cache_dir"]), pad_id, 32, shard)
            out[task["name"]] = loss if metric == "loss" else math.exp(min(loss, 50.0))
    return out
